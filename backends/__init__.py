"""Backends behind one contract (:mod:`backends.base`), chosen by name with :func:`get_backend`:
``"torch"`` (local: PyTorch FM and FAISS k-NN, :mod:`backends.local`) or ``"sagemaker"``
(SageMaker's built-in FM and k-NN, needs ``pip install 'recsys[sagemaker]'``). This module is
the only place that knows backends by name; everything else reads their declared capabilities.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, ModelFormatError

__all__ = ["get_backend", "backend_class", "available_backends", "load_knn"]

_ALIASES = {"torch": "torch", "local": "torch", "sagemaker": "sagemaker"}


def available_backends() -> tuple[str, ...]:
    return ("torch", "sagemaker")


def backend_class(name: str) -> type:
    """The :class:`backends.base.Backend` subclass called ``name`` (imported only now: heavy
    optional dependencies)."""
    key = _ALIASES.get(name.lower()) if isinstance(name, str) else None
    if key is None:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(available_backends())}")
    if key == "torch":
        from backends.local import TorchBackend

        return TorchBackend
    from backends.sagemaker import SageMakerBackend

    return SageMakerBackend


def get_backend(name: str = "torch", **options: Any):
    """Return a backend instance by name; ``options`` go to its constructor (for SageMaker:
    the ``[sagemaker]`` keys: bucket, role, ...)."""
    return backend_class(name)(**options)


def load_knn(path: str | os.PathLike):
    """Load a saved k-NN index by the format stamp in its ``config.json``."""
    from backends.local.knn import KNN_FORMAT, FaissIndex

    path = Path(path)
    try:
        stamp = json.loads((path / "config.json").read_text(encoding="utf-8")).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ModelFormatError(f"{path} is not a saved recsys k-NN index ({type(exc).__name__})") from exc
    if stamp != KNN_FORMAT:
        raise ModelFormatError(f"{path}: unknown k-NN index format {stamp!r}; this recsys reads {KNN_FORMAT}")
    return FaissIndex.load(path)
