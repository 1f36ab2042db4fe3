"""Backends behind one contract (:mod:`backends.base`), chosen by name with :func:`get_backend`.

* ``"torch"`` -- local: a pure-PyTorch factorization machine and FAISS k-NN (:mod:`backends.local`).
* ``"sagemaker"`` -- Amazon SageMaker's built-in FM and k-NN (:mod:`backends.sagemaker`), needs
  ``pip install 'recsys[sagemaker]'``.
"""

from __future__ import annotations

from typing import Any

from recsys.errors import ConfigError

__all__ = ["get_backend", "available_backends"]

_ALIASES = {"torch": "torch", "local": "torch", "sagemaker": "sagemaker"}


def available_backends() -> tuple[str, ...]:
    return ("torch", "sagemaker")


def get_backend(name: str = "torch", **options: Any):
    """Return a backend instance by name (``"torch"`` or ``"sagemaker"``).

    ``options`` go to the backend's constructor (for SageMaker: session, bucket, role, ...).
    Heavy optional dependencies are imported only here, for the backend asked for.
    """
    key = _ALIASES.get(str(name).lower()) if isinstance(name, str) else None
    if key is None:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(available_backends())}")
    if key == "torch":
        from backends.local import TorchBackend

        return TorchBackend(**options)
    from backends.sagemaker import SageMakerBackend

    return SageMakerBackend(**options)
