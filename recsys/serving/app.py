"""The recommendation service: a FastAPI app over the outputs of ``recsys run``.

Endpoints
---------
``GET /ping``
    SageMaker's health check: 200 ``{"status": "ok"}`` while a model is loaded.
``GET /healthz``
    The served model's identity: run id, created time, backend, model, sizes, load time.
``POST /invocations``
    SageMaker's built-in FM inference protocol (:mod:`recsys.serving.protocol`), answered
    by the served FM (``--model``; default the run's ``classifier``).
``GET /recommendations/{customer_id}?k=10&exclude_seen=true``
    The top-k videos of a customer (the run's recommending model and k-NN index); unknown
    customers get the most popular videos with ``"fallback": true``.
``GET /similar/{product_id}?k=10``
    The k videos most similar to one (cosine of the item vectors).
``POST /reload``
    Load a run directory (the current one, or ``{"model_dir": ..., "model": ...}``) fully,
    then swap it in; requests in flight finish on the model they started with. SIGHUP does
    the same for the current directory. A failed reload keeps the old model and answers 422.

Every refused request gets a 4xx and a JSON body ``{"error": CODE, "detail": ...}``: 400
(malformed JSON, bad instances), 404 (unknown route or product), 405, 406 (``Accept``), 413
(body over ``max_body_bytes`` -- checked against ``Content-Length`` before the body is read and
while a chunked body streams in -- or more than ``max_instances`` rows), 415
(``Content-Type``), 422 (bad query parameters, failed reload).

Heavy work (decoding, FM scoring, k-NN search) runs in the threadpool, never on the event
loop. :func:`limit_threads` keeps BLAS/OpenMP/FAISS/torch to one thread per request so that
concurrent requests do not oversubscribe the cores.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import BackendError, DataError, require
from recsys.model import FittedFM

from .protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INSTANCES,
    JSON,
    RequestError,
    decode_request,
    encode_predictions,
    request_media_type,
    response_media_type,
)

# FastAPI resolves the endpoints' annotations in this module's namespace: import it here (this
# module is only imported to serve), with an error naming the extra when it is missing.
require("fastapi", "serve")
from fastapi import FastAPI, Query, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402

__all__ = [
    "ServingConfig",
    "ServedRun",
    "ServiceState",
    "create_app",
    "app_from_env",
    "limit_threads",
    "predict_rows",
    "serve",
    "BackgroundServer",
    "SERVED_MODELS",
    "DEFAULT_MODEL",
]

log = logging.getLogger("recsys")

SERVED_MODELS = ("regressor", "classifier", "ranking")
DEFAULT_MODEL = "classifier"
_RELOAD_BODY_LIMIT = 64 * 1024
_ENV_PREFIX = "RECSYS_SERVE_"


@dataclass(frozen=True)
class ServingConfig:
    """Limits and choices of the service.

    Parameters
    ----------
    model : {"regressor", "classifier", "ranking"}
        The FM ``/invocations`` serves.
    max_body_bytes : int
        Largest request body (default 6 MB, SageMaker's limit).
    max_instances : int
        Most rows in one ``/invocations`` request.
    max_k : int
        Largest ``k`` of ``/recommendations`` and ``/similar``.
    """

    model: str = DEFAULT_MODEL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_k: int = 1000

    def validate(self) -> ServingConfig:
        if self.model not in SERVED_MODELS:
            raise DataError(f"model must be one of {', '.join(SERVED_MODELS)}, got {self.model!r}")
        for name in ("max_body_bytes", "max_instances", "max_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be a positive integer, got {value!r}")
        return self


# ================================================================================================
# the loaded model: one immutable snapshot, swapped whole on reload
# ================================================================================================
def predict_rows(fm: FittedFM, X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray | None]:
    """``(scores, predicted_labels)`` of ``fm`` for the rows of ``X`` (labels only for a
    classifier): :meth:`FittedFM.predict_score` / :meth:`FittedFM.predict`.

    The FM is first restricted to the columns ``X`` uses -- exactly the same arithmetic, but a
    request touching a handful of features no longer converts the whole factor matrix to
    float64 (megabytes per request for a large catalogue).
    """
    cols = np.unique(X.indices)
    sub = FittedFM(w0=fm.w0, w=fm.w[cols], V=fm.V[cols], predictor_type=fm.predictor_type)
    Xs = sp.csr_matrix(
        (X.data, np.searchsorted(cols, X.indices), X.indptr), shape=(X.shape[0], len(cols))
    )
    scores = sub.predict_score(Xs)
    labels = (scores >= 0.5).astype(np.float64) if fm.is_classifier else None
    return scores, labels


def _native(values: Any) -> list[Any]:
    """Python scalars (JSON-ready) from an index/array of ids."""
    return [v.item() if isinstance(v, np.generic) else v for v in np.asarray(values, dtype=object)]


class ServedRun:
    """Everything one run directory needs to answer requests, loaded and warmed up.

    Read-only after construction, so request threads share it without locks.

    Parameters
    ----------
    run_dir : path
        Output directory of ``recsys run``.
    model : {"regressor", "classifier", "ranking"}
        The FM for ``/invocations``.
    """

    def __init__(self, run_dir: str | os.PathLike, model: str = DEFAULT_MODEL):
        from recsys.saved_run import SavedRun

        t0 = time.perf_counter()
        if model not in SERVED_MODELS:
            raise DataError(f"model must be one of {', '.join(SERVED_MODELS)}, got {model!r}")
        self.run_dir = Path(os.path.abspath(run_dir))  # not resolve(): SIGHUP re-reads a symlink
        self.saved = SavedRun(self.run_dir)
        self.model_name = model
        self.fm = self.saved.model(model)
        self.recommender = self.saved.recommender()
        mappings = self.recommender.mappings
        self.customer_ids = _native(mappings.customer_ids)
        self.product_ids = _native(mappings.product_ids)
        self.product_titles = [t if isinstance(t, str) else None for t in mappings.product_titles]
        self._customer_lookup = {str(c): i for i, c in enumerate(self.customer_ids)}
        self._product_lookup = {str(p): i for i, p in enumerate(self.product_ids)}
        # warm up (the k-NN index, the similarity index): no request pays for a lazy first use
        if mappings.n_users:
            self.recommender.recommend(0, 1)
        if mappings.n_items:
            self.recommender.similar_items(0, 1)
        predict_rows(self.fm, sp.csr_matrix((1, self.fm.feature_dim)))
        self.loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.load_seconds = round(time.perf_counter() - t0, 3)

    # ---- identity ------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        info = self.saved.info
        return {
            "run_id": info.get("run_id"),
            "created": info.get("created"),
            "backend": info.get("backend"),
            "objective": info.get("objective"),
            "run_dir": str(self.run_dir),
            "model": self.model_name,
            "predictor_type": self.fm.predictor_type,
            "feature_dim": self.fm.feature_dim,
            "num_factors": self.fm.num_factors,
            "recommender_model": info.get("recommender_model"),
            "n_customers": len(self.customer_ids),
            "n_products": len(self.product_ids),
            "recsys_version": info.get("recsys_version"),
            "loaded_at": self.loaded_at,
            "load_seconds": self.load_seconds,
        }

    # ---- lookups -------------------------------------------------------------------------
    def user_index(self, customer_id: str) -> int:
        """The user index of a customer id as text (-1 if unknown); the same matching as
        :meth:`Mappings.user_index` (``"0123"`` finds customer 123), fast for exact ids."""
        u = self._customer_lookup.get(customer_id)
        if u is None:
            u = int(self.recommender.mappings.user_index([customer_id])[0])
        return u

    def item_index(self, product_id: str) -> int:
        i = self._product_lookup.get(product_id)
        if i is None:
            i = int(self.recommender.mappings.item_index([product_id])[0])
        return i

    def _items(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        pids, titles = self.product_ids, self.product_titles
        return [
            {"rank": r, "product_id": pids[i], "product_title": titles[i], "score": None if s != s else s}
            for r, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True), 1)
        ]

    # ---- answers -------------------------------------------------------------------------
    def recommendations(self, customer_id: str, k: int, exclude_seen: bool) -> dict[str, Any]:
        """``/recommendations``: what :meth:`Recommender.recommendations` gives for one id,
        without the DataFrame."""
        u = self.user_index(customer_id)
        rec = self.recommender
        if u >= 0:
            try:
                ids, scores = rec.recommend(u, k, exclude_seen=exclude_seen)
            except BackendError as exc:  # an index built for fewer neighbours than k needs
                raise RequestError(422, "k_too_large", str(exc)) from None
            cid: Any = self.customer_ids[u]
        else:  # the most popular videos; a rating count is not a score
            ids, _ = rec.popular(k)
            scores = np.full(len(ids), np.nan)
            cid = customer_id
        return {
            "customer_id": cid,
            "fallback": u < 0,
            "k": k,
            "exclude_seen": exclude_seen,
            "recommendations": self._items(ids, scores),
        }

    def similar(self, product_id: str, k: int) -> dict[str, Any]:
        """``/similar``: :meth:`Recommender.similar` for one id."""
        i = self.item_index(product_id)
        if i < 0:
            raise RequestError(404, "unknown_product", f"unknown product_id {product_id!r}")
        ids, scores = self.recommender.similar_items(i, k)
        return {
            "product_id": self.product_ids[i],
            "product_title": self.product_titles[i],
            "k": k,
            "similar": self._items(ids, scores),
        }

    def invocations(self, body: bytes, content_type: str | None, accept: str, max_instances: int) -> bytes:
        """``/invocations``: decode, score with the served FM, encode."""
        X = decode_request(body, content_type, self.fm.feature_dim, max_instances=max_instances)
        scores, labels = predict_rows(self.fm, X)
        return encode_predictions(scores, labels, accept)


def _freeze_gc() -> None:
    """Move every object alive now (the loaded model, the libraries: ~170k objects for the
    default run) out of the cyclic garbage collector's reach, where a full collection costs
    ~80 ms with the GIL held -- a latency spike for every request in flight. Earlier frozen
    objects are unfrozen and collected first, so a replaced model does not linger."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServiceState:
    """The served snapshot and how to replace it.

    Requests read :attr:`current` once and use that snapshot to the end, so a reload never
    mixes two models in one answer; :meth:`reload` loads the new one completely before the
    swap (one attribute assignment), and reloads run one at a time. With ``freeze_gc`` (what
    ``recsys serve`` does) the garbage collector's heap is frozen after each load (see
    :func:`_freeze_gc`).
    """

    def __init__(self, current: ServedRun, *, freeze_gc: bool = False):
        self.current = current
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.freeze_gc = freeze_gc
        self._lock = threading.Lock()
        if freeze_gc:
            _freeze_gc()

    @classmethod
    def load(cls, run_dir: str | os.PathLike, model: str = DEFAULT_MODEL, *, freeze_gc: bool = False) -> ServiceState:
        return cls(ServedRun(run_dir, model), freeze_gc=freeze_gc)

    def reload(
        self, model_dir: str | os.PathLike | None = None, model: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load ``model_dir`` (default: the current directory, re-read) and swap it in.

        Returns
        -------
        (previous, current)
            The identities (:meth:`ServedRun.identity`) of the replaced and the new model.

        Raises
        ------
        RequestError
            422 when the directory cannot be loaded; the old model stays.
        """
        with self._lock:
            old = self.current
            target = model_dir if model_dir is not None else old.run_dir
            try:
                new = ServedRun(target, model or old.model_name)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                log.error("reload of %s failed; still serving %s (%s)", target, old.run_dir, exc)
                raise RequestError(
                    422, "reload_failed",
                    f"could not load {str(target)!r} ({type(exc).__name__}: {exc}); still serving "
                    f"run {old.identity()['run_id']} from {old.run_dir}",
                ) from None  # fmt: skip
            self.current = new
            self.reloads += 1
            self.last_reload_error = None
            previous, current = old.identity(), new.identity()
            del old  # requests still on it keep it alive; nothing else does
            if self.freeze_gc:
                _freeze_gc()
        log.info("reloaded: run %s (%s) from %s in %.2f s", current["run_id"], current["model"], current["run_dir"], current["load_seconds"])
        return previous, current

    def reload_in_background(self) -> threading.Thread:
        """Reload the current directory in a thread (what SIGHUP does); errors are logged."""

        def work() -> None:
            try:
                self.reload()
            except RequestError:
                pass  # already logged; the old model keeps serving

        thread = threading.Thread(target=work, name="recsys-reload", daemon=True)
        thread.start()
        return thread


# ================================================================================================
# the app
# ================================================================================================
def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False).encode("utf-8")


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes:
    from ``Content-Length`` before reading anything, else while a chunked body streams in."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, "invalid_content_length", f"Content-Length {length!r} is not an integer") from None
        if declared > limit:
            raise RequestError(
                413, "body_too_large", f"the body has {declared} bytes; at most {limit} bytes per request"
            )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", f"the body exceeds {limit} bytes; at most {limit} bytes per request")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "client_disconnected", "the client went away before sending the whole body") from None
    return b"".join(chunks)


def create_app(state: ServiceState | str | os.PathLike, config: ServingConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``state`` (or a run directory, loaded now).

    Parameters
    ----------
    state : ServiceState or path
    config : ServingConfig, optional
        Limits and the served model (``config.model`` applies when a path is given).

    Returns
    -------
    fastapi.FastAPI
        With the state at ``app.state.recsys``.
    """
    from recsys import __version__

    config = (config or ServingConfig()).validate()
    if not isinstance(state, ServiceState):
        state = ServiceState.load(state, config.model)
    app = FastAPI(
        title="recsys", version=__version__,
        description="Recommendations and SageMaker-compatible FM inference for a recsys run.",
    )  # fmt: skip
    app.state.recsys = state
    app.state.config = config

    def json_response(obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(_dumps(obj), status_code=status_code, media_type=JSON, headers=headers)

    # ---- errors: always {"error": ..., "detail": ...} ------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        # after an early 413 the rest of the body is never read: close the connection
        headers = {"Connection": "close"} if exc.status_code == 413 else None
        return json_response(exc.to_json(), exc.status_code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return json_response({"error": "invalid_parameter", "detail": detail}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        from http import HTTPStatus

        try:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            code = "http_error"
        return json_response({"error": code, "detail": exc.detail}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return json_response({"error": "internal_error", "detail": f"{type(exc).__name__}: {exc}"}, 500)

    # ---- health --------------------------------------------------------------------------
    @app.get("/ping")
    def ping() -> Response:
        return json_response({"status": "ok"})

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response(
            {
                "status": "ok",
                **state.current.identity(),
                "reloads": state.reloads,
                "last_reload_error": state.last_reload_error,
                "limits": asdict(config),
            }
        )

    # ---- FM inference --------------------------------------------------------------------
    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        served = state.current
        content_type = request.headers.get("content-type")
        request_media_type(content_type)  # 415 before reading anything
        accept = response_media_type(request.headers.get("accept"))  # 406
        body = await _read_body(request, config.max_body_bytes)  # 413
        out = await run_in_threadpool(served.invocations, body, content_type, accept, config.max_instances)
        return Response(out, media_type=accept)

    # ---- recommendations -----------------------------------------------------------------
    k_query = Query(10, ge=1, le=config.max_k, description=f"how many (1..{config.max_k})")

    @app.get("/recommendations/{customer_id}")
    def recommendations(customer_id: str, k: int = k_query, exclude_seen: bool = True) -> Response:
        return json_response(state.current.recommendations(customer_id, k, exclude_seen))

    @app.get("/similar/{product_id}")
    def similar(product_id: str, k: int = k_query) -> Response:
        return json_response(state.current.similar(product_id, k))

    # ---- reload --------------------------------------------------------------------------
    @app.post("/reload")
    async def reload(request: Request) -> Response:
        body = await _read_body(request, _RELOAD_BODY_LIMIT)
        model_dir, model = None, None
        if body.strip():
            if request_media_type(request.headers.get("content-type")) != JSON:
                raise RequestError(415, "unsupported_media_type", f"/reload takes {JSON}")
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
            if not isinstance(payload, dict) or set(payload) - {"model_dir", "model"}:
                raise RequestError(400, "invalid_payload", 'expected {"model_dir": "...", "model": "..."} (both optional)')
            model_dir, model = payload.get("model_dir"), payload.get("model")
            if model_dir is not None and (not isinstance(model_dir, str) or not model_dir):
                raise RequestError(400, "invalid_payload", "model_dir must be a non-empty string")
            if model is not None and model not in SERVED_MODELS:
                raise RequestError(400, "invalid_payload", f"model must be one of {', '.join(SERVED_MODELS)}")
        t0 = time.perf_counter()
        previous, current = await run_in_threadpool(state.reload, model_dir, model)
        return json_response(
            {"status": "reloaded", "seconds": round(time.perf_counter() - t0, 3), "previous": previous, "current": current}
        )

    return app


# ================================================================================================
# running it
# ================================================================================================
def limit_threads(n: int = 1) -> None:
    """Run BLAS, OpenMP, FAISS and torch with ``n`` threads in this process.

    The service gets its parallelism from concurrent requests; a library that also fans out
    every small search over all cores only adds contention (2 cores here).
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - scikit-learn brings it
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _config_from_env() -> tuple[str, ServingConfig]:
    env = os.environ
    run_dir = env.get(_ENV_PREFIX + "MODEL_DIR")
    if not run_dir:
        raise DataError(f"{_ENV_PREFIX}MODEL_DIR is not set")
    config = ServingConfig(
        model=env.get(_ENV_PREFIX + "MODEL", DEFAULT_MODEL),
        max_body_bytes=int(env.get(_ENV_PREFIX + "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        max_instances=int(env.get(_ENV_PREFIX + "MAX_INSTANCES", DEFAULT_MAX_INSTANCES)),
        max_k=int(env.get(_ENV_PREFIX + "MAX_K", 1000)),
    )
    return run_dir, config


def app_from_env() -> Any:
    """App factory for uvicorn worker processes (``--workers N``): the run directory and limits
    come from ``RECSYS_SERVE_*`` environment variables set by :func:`serve`."""
    limit_threads()
    run_dir, config = _config_from_env()
    return create_app(ServiceState.load(run_dir, config.model, freeze_gc=True), config)


def serve(
    run_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    model: str | None = None,
    workers: int = 1,
    log_level: str = "info",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    max_k: int = 1000,
) -> None:
    """Serve ``run_dir`` with uvicorn until interrupted (``recsys serve``).

    The model is loaded before the port is bound, so a bad directory fails at once. With one
    worker, SIGHUP reloads the directory in place (load, then swap). With ``workers > 1``
    uvicorn's supervisor handles SIGHUP by restarting the workers one by one, and
    ``POST /reload`` reloads only the worker that answers it.

    Parameters
    ----------
    run_dir : path
        Output directory of ``recsys run``.
    host : str
        Interface to bind; the default 127.0.0.1 accepts connections from this machine only.
    port : int
    model : {"regressor", "classifier", "ranking"}, optional
        The FM ``/invocations`` serves (default ``classifier``).
    workers : int
        uvicorn worker processes.
    log_level : str
        uvicorn's log level (``"info"`` logs every request).
    max_body_bytes, max_instances, max_k : int
        See :class:`ServingConfig`.
    """
    uvicorn = require("uvicorn", "serve")
    require("fastapi", "serve")
    config = ServingConfig(model=model or DEFAULT_MODEL, max_body_bytes=max_body_bytes,
                           max_instances=max_instances, max_k=max_k).validate()  # fmt: skip
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    limit_threads()
    access_log = log_level.lower() in ("debug", "trace", "info")
    if workers > 1:
        from recsys.saved_run import SavedRun

        SavedRun(run_dir).model(config.model)  # fail now, not in every worker
        os.environ.update({
            _ENV_PREFIX + "MODEL_DIR": os.path.abspath(run_dir),
            _ENV_PREFIX + "MODEL": config.model,
            _ENV_PREFIX + "MAX_BODY_BYTES": str(config.max_body_bytes),
            _ENV_PREFIX + "MAX_INSTANCES": str(config.max_instances),
            _ENV_PREFIX + "MAX_K": str(config.max_k),
        })  # fmt: skip
        _run_workers(uvicorn.Config("recsys.serving.app:app_from_env", factory=True, host=host, port=port,
                                    workers=workers, log_level=log_level, access_log=access_log))  # fmt: skip
        return
    state = ServiceState.load(run_dir, config.model, freeze_gc=True)
    app = create_app(state, config)
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda signum, frame: state.reload_in_background())
    log.info(
        "serving run %s (%s FM for /invocations) on http://%s:%d",
        state.current.saved.info.get("run_id"), config.model, host, port,
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def _run_workers(config: Any) -> None:
    """``uvicorn.run`` for ``workers > 1``, with TCP_NODELAY on every connection.

    uvicorn binds the shared listening socket with ``proto`` 0; accepted sockets inherit it,
    and asyncio only sets TCP_NODELAY on sockets whose ``proto`` is IPPROTO_TCP -- so every
    keep-alive response waits ~40 ms for the client's delayed ACK (uvicorn issue #3149). The
    socket is rewrapped with IPPROTO_TCP before the workers get it.
    """
    import socket

    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()


@dataclass
class BackgroundServer:
    """A uvicorn server for ``app`` in a daemon thread of this process (tests, notebooks).

    ``port=0`` picks a free port; :attr:`url` is known once :meth:`start` returns. Use it as a
    context manager.
    """

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "warning"
    _server: Any = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        uvicorn = require("uvicorn", "serve")
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level=self.log_level, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="recsys-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise BackendError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
