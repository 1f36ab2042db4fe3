"""The recommendation service's HTTP face: a FastAPI app over a :class:`ServiceState`.

``GET /ping`` (SageMaker's health check), ``GET /healthz`` (the served model's identity --
never an absolute path -- and the limits), ``POST /invocations`` (SageMaker's FM inference
protocol, :mod:`recsys.serving.protocol`, answered by the ``--model`` FM),
``GET /recommendations/{customer_id}?k=10&exclude_seen=true`` (``{"customer_id", "source", "k",
"exclude_seen", "recommendations": [{"rank", "product_id", "product_title", "score"}]}``, ids as
the run holds them; ``source`` is ``model``, ``fold_in`` for customers kept out of training, or
``popularity`` for unknown ones, with ``"score": null`` and the rating count as
``"popularity"``), ``POST /recommendations`` with ``{"recent": [product ids, oldest first],
"k": 10}`` (an anonymous session, folded in; unknown ids in ``ignored``),
``GET /similar/{product_id}?k=10`` (cosine of the item vectors), ``POST /reload`` (the served
run again, like SIGHUP, or ``{"model_dir": NAME}`` below ``reload_root``; ``{"model": ...}``
switches the ``/invocations`` FM; a failed reload keeps the old model).

Refusals are 4xx with ``{"error": CODE, "detail": ...}``: 400 (malformed JSON or body), 403
(a reload path not allowed), 404, 405, 406 (``Accept``), 408 (body not in within
``body_timeout``), 413 (over ``max_body_bytes`` or ``max_instances``), 415 (``Content-Type``),
422 (bad parameters or ids, an overflowing score, a failed reload). Answers never hold NaN or
Infinity; a 500 names no exception or path (the log has them). Heavy work runs in the
threadpool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from http import HTTPStatus
from typing import Any, Literal

from recsys.errors import require

from .config import SERVED_MODELS, ServingConfig
from .protocol import JSON, RequestError, base_media_type, request_media_type, response_media_type
from .state import ServiceState

# FastAPI resolves the endpoints' annotations in this module's namespace: import it here (this
# module is only imported to serve), with an error naming the extra when it is missing.
require("fastapi", "serve")
from fastapi import Depends, FastAPI, Query, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

__all__ = ["create_app"]

log = logging.getLogger("recsys")


def _error(status: int, code: str, detail: Any, *, close: bool = False) -> JSONResponse:
    """The one error body (Starlette's ``JSONResponse`` refuses NaN/Infinity)."""
    return JSONResponse({"error": code, "detail": detail}, status, {"Connection": "close"} if close else None)


class _BodyLimits:
    """ASGI middleware: a body over ``max_bytes`` or not in whole within ``timeout`` seconds
    gets 413 / 408 and the connection is closed, so half-sent bodies cannot hold connections
    open; the app gets the body from memory. GET and HEAD (no route reads their body) pass."""

    def __init__(self, app: Any, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:  # h11 has checked it is an integer
            return await self._too_large(f"the body has {int(length)} bytes", scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except asyncio.TimeoutError:
            detail = f"the body did not arrive within {self.timeout:g} s; send the whole body at once"
            return await _error(408, "body_timeout", detail, close=True)(scope, receive, send)
        if body is None:  # the client went away
            return None
        if len(body) > self.max_bytes:
            return await self._too_large(f"the body exceeds {self.max_bytes} bytes", scope, receive, send)
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict:
            return pending.pop() if pending else await receive()

        return await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, what: str, scope: dict, receive: Any, send: Any) -> None:
        detail = f"{what}; at most {self.max_bytes} bytes per request"
        await _error(413, "body_too_large", detail, close=True)(scope, receive, send)


class ReloadRequest(BaseModel):
    """The body of ``POST /reload`` (every field optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model_dir: str | None = None
    model: Literal[SERVED_MODELS] | None = None  # type: ignore[valid-type]


class RecentRequest(BaseModel):
    """The body of ``POST /recommendations``: the videos an anonymous session watched, oldest
    first (ids as the run holds them), how many to recommend, and whether to skip those."""

    model_config = ConfigDict(extra="forbid", strict=True)

    recent: list[StrictInt | StrictStr] = Field(max_length=1000)
    k: int = Field(10, ge=1)
    exclude_seen: bool = True


def _json_body(request: Request) -> None:
    """A body, when there is one, must be JSON (415)."""
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    media = base_media_type(request.headers.get("content-type"))
    if has_body and media != JSON:
        raise RequestError(415, "unsupported_media_type", f"{request.url.path} takes {JSON}, got {media or 'none'!r}")


def create_app(state: ServiceState | str | os.PathLike, config: ServingConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``state`` (or a run directory, loaded now with
    ``config.model`` and ``config.reload_root``), with the state at ``app.state.recsys``."""
    from recsys import __version__

    config = (config or ServingConfig()).validate()
    if not isinstance(state, ServiceState):
        state = ServiceState.load(state, config.model, reload_root=config.reload_root)
    app = FastAPI(
        title="recsys", version=__version__, default_response_class=JSONResponse,
        description="Recommendations and SageMaker-compatible FM inference for a recsys run.",
    )  # fmt: skip
    app.state.recsys = state
    app.state.config = config
    app.add_middleware(_BodyLimits, max_bytes=config.max_body_bytes, timeout=config.body_timeout)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        return _error(exc.status_code, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in detail):
            return _error(400, "invalid_json", detail)
        if any(e["loc"][:1] == ["body"] for e in detail):
            return _error(400, "invalid_payload", detail)
        return _error(422, "invalid_parameter", detail)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        response = _error(exc.status_code, code, exc.detail)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "the server failed to answer; its log has the details")

    @app.get("/ping")
    def ping() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/healthz")
    def healthz() -> Response:
        return JSONResponse({
            "status": "ok", **state.current.identity(), "reloads": state.reloads,
            "last_reload_error": state.last_reload_error, "limits": config.limits(),
        })  # fmt: skip

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        served = state.current
        content_type = request.headers.get("content-type")
        request_media_type(content_type)  # 415
        accept = response_media_type(request.headers.get("accept"))  # 406
        body = await request.body()
        out = await run_in_threadpool(served.invocations, body, content_type, accept, config.max_instances)
        return Response(out, media_type=accept)

    k_query = Query(10, ge=1, le=config.max_k, description=f"how many (1..{config.max_k})")

    @app.get("/recommendations/{customer_id}")
    def recommendations(customer_id: str, k: int = k_query, exclude_seen: bool = True) -> Response:
        return JSONResponse(state.current.recommendations(customer_id, k, exclude_seen))

    @app.post("/recommendations", dependencies=[Depends(_json_body)])
    def recommendations_for_recent(payload: RecentRequest) -> Response:
        if payload.k > config.max_k:
            raise RequestError(422, "invalid_parameter", f"k must be in 1..{config.max_k}, got {payload.k}")
        return JSONResponse(state.current.recommendations_for_recent(payload.recent, payload.k, payload.exclude_seen))

    @app.get("/similar/{product_id}")
    def similar(product_id: str, k: int = k_query) -> Response:
        return JSONResponse(state.current.similar(product_id, k))

    @app.post("/reload", dependencies=[Depends(_json_body)])
    async def reload(payload: ReloadRequest | None = None) -> Response:
        payload = payload or ReloadRequest()
        t0 = time.perf_counter()
        previous, current = await run_in_threadpool(state.reload, payload.model_dir, payload.model)
        return JSONResponse(
            {"status": "reloaded", "seconds": round(time.perf_counter() - t0, 3), "previous": previous, "current": current}
        )

    return app
