"""The service's options: what it serves, its limits, where ``/reload`` may look. A bad option
is a :class:`~recsys.errors.ConfigError`, which ``recsys serve`` prints as a one-line error."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError

from .protocol import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INSTANCES

__all__ = ["ServingConfig", "SERVED_MODELS", "DEFAULT_MODEL"]

SERVED_MODELS = ("regressor", "classifier", "ranking")
DEFAULT_MODEL = "classifier"


def check_model(model: Any) -> str:
    if model not in SERVED_MODELS:
        raise ConfigError(f"model must be one of {', '.join(SERVED_MODELS)}, got {model!r}")
    return model


@dataclass(frozen=True)
class ServingConfig:
    """Limits and choices of the service: ``model``, the FM of ``/invocations``;
    ``max_body_bytes`` (default 6 MB, SageMaker's limit), else 413; ``max_instances`` per
    ``/invocations`` request; ``max_k`` of ``/recommendations`` and ``/similar``;
    ``body_timeout``, seconds to send a whole body once the headers are in, else 408 and the
    connection is closed; ``max_connections`` (uvicorn's ``limit_concurrency``), beyond which
    requests get 503; ``keep_alive_timeout`` (uvicorn's ``timeout_keep_alive``), seconds a
    connection may stay idle or spend sending a request head; ``reload_root``, the folder below
    which ``POST /reload`` may load a run a client names (never shown in an answer)."""

    model: str = DEFAULT_MODEL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_k: int = 1000
    body_timeout: float = 10.0
    max_connections: int = 1000
    keep_alive_timeout: float = 5.0
    reload_root: str | None = None

    def validate(self) -> ServingConfig:
        check_model(self.model)
        for name in ("max_body_bytes", "max_instances", "max_k", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("body_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.reload_root is not None and not Path(self.reload_root).is_dir():
            raise ConfigError(f"reload_root {self.reload_root!r} is not a directory; give an existing folder")
        return self

    @classmethod
    def of(cls, **options: Any) -> ServingConfig:
        """A validated config from keyword options (None means the default), e.g. the CLI's."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown serving option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        given = {k: v for k, v in options.items() if v is not None}
        if "reload_root" in given:
            given["reload_root"] = os.path.abspath(given["reload_root"])
        return cls(**given).validate()

    def limits(self) -> dict[str, Any]:
        """The options shown by ``/healthz`` (no paths)."""
        return {k: v for k, v in asdict(self).items() if k != "reload_root"}
