"""Serving a finished ``recsys run`` over HTTP, and clients for it: ``protocol`` (SageMaker's FM
inference JSON), ``config``, ``state`` (the loaded run, reloads), ``app`` (FastAPI), ``server``
(``recsys serve``), ``client``. Names are imported on first use, so FastAPI and uvicorn
(``pip install 'recsys[serve]'``) are needed only to build or run the service.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "serve": "server", "create_app": "app", "ServingConfig": "config", "BackgroundServer": "server",
    "RecsysPredictor": "client", "SageMakerPredictor": "client", "PredictorError": "client",
}  # fmt: skip
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
