"""The exception hierarchy.

Every error recsys raises on purpose derives from :class:`RecsysError`, so callers (and the
CLI) can tell a user mistake from a bug. Messages say what was expected, what was found and,
where there is one, the fix.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = ["RecsysError", "DataError", "ConfigError", "NotFittedError", "ModelFitError", "BackendError",
           "ModelFormatError", "OutputError", "MissingDependencyError"]  # fmt: skip


class RecsysError(Exception):
    """Base class of every error raised by recsys on purpose."""


class DataError(RecsysError, ValueError):
    """The input data is unusable: missing file or columns, nothing valid left, bad ids."""


class ConfigError(RecsysError, ValueError):
    """A configuration key or value is invalid."""


class NotFittedError(RecsysError, _SklearnNotFittedError):
    """A model was used before ``fit`` was called (also a scikit-learn ``NotFittedError``)."""


class ModelFitError(RecsysError, RuntimeError):
    """Training failed, e.g. the loss or the parameters became NaN or infinite."""


class BackendError(RecsysError, RuntimeError):
    """A backend (e.g. a SageMaker job or endpoint) failed."""


class ModelFormatError(RecsysError, ValueError):
    """A saved model or artifact has the wrong format or version."""


class OutputError(RecsysError):
    """An output cannot be written where asked: the place holds something recsys did not write
    (which it never replaces), or the write itself failed (disk full, file-size limit, no
    permission). Nothing at the target was changed."""


class MissingDependencyError(RecsysError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'recsys[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is required for this feature but could not be imported ({exc}). "
            f"Install it with: pip install 'recsys[{extra}]'"
        ) from exc
