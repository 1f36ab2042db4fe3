"""Serving a finished ``recsys run`` over HTTP, and clients for it.

* :mod:`recsys.serving.protocol` -- the FM inference JSON (SageMaker's built-in FM protocol),
  encoded and decoded once for the service, its clients and the SageMaker endpoint client;
* :mod:`recsys.serving.config` -- :class:`ServingConfig`, the service's options and limits;
* :mod:`recsys.serving.state` -- the loaded run (the only caller of the ``Recommender``) and
  its reload;
* :mod:`recsys.serving.app` -- the FastAPI app: ``/ping``, ``/healthz``, ``/invocations``,
  ``/recommendations/{customer_id}``, ``/similar/{product_id}``, ``/reload``;
* :mod:`recsys.serving.server` -- :func:`serve` (``recsys serve``) and
  :class:`BackgroundServer`;
* :mod:`recsys.serving.client` -- :class:`RecsysPredictor` (this service) and
  :class:`SageMakerPredictor` (a real SageMaker endpoint), with the SageMaker SDK's
  ``predict`` shape.

FastAPI and uvicorn (the ``serve`` extra) are imported only when the service is built or run;
``pip install 'recsys[serve]'`` installs them.
"""

from __future__ import annotations

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
    "serve": "server",
    "create_app": "app",
    "ServingConfig": "config",
    "BackgroundServer": "server",
    "RecsysPredictor": "client",
    "SageMakerPredictor": "client",
    "PredictorError": "client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
