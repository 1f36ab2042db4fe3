"""Serving a finished ``recsys run`` over HTTP, and clients for it.

* :mod:`recsys.serving.protocol` -- the FM inference JSON (SageMaker's built-in FM protocol),
  encoded and decoded once for the service, its clients and the SageMaker endpoint client;
* :mod:`recsys.serving.app` -- the FastAPI service (``recsys serve``): ``/ping``,
  ``/healthz``, ``/invocations``, ``/recommendations/{customer_id}``,
  ``/similar/{product_id}``, ``/reload``;
* :mod:`recsys.serving.client` -- :class:`RecsysPredictor` (this service) and
  :class:`SageMakerPredictor` (a real SageMaker endpoint), with the SageMaker SDK's
  ``predict`` shape.

FastAPI and uvicorn (the ``serve`` extra) are imported only when the service is built or run;
``pip install 'recsys[serve]'`` installs them.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "serve",
    "create_app",
    "ServingConfig",
    "BackgroundServer",
    "RecsysPredictor",
    "SageMakerPredictor",
    "PredictorError",
]

_LAZY = {
    "create_app": "app",
    "ServingConfig": "app",
    "BackgroundServer": "app",
    "RecsysPredictor": "client",
    "SageMakerPredictor": "client",
    "PredictorError": "client",
}


def serve(
    run_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    model: str | None = None,
    workers: int = 1,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve a run directory until interrupted (``recsys serve``); see :func:`recsys.serving.app.serve`."""
    from .app import serve as _serve

    _serve(run_dir, host=host, port=port, model=model, workers=workers, log_level=log_level, **options)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
