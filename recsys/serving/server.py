"""Running the service: ``recsys serve`` (uvicorn, one or more workers) and a background server
for tests and notebooks. Requests beyond ``max_connections`` get 503."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from recsys.errors import BackendError, ConfigError, require

from .config import ServingConfig

uvicorn = require("uvicorn", "serve")
from uvicorn.config import LOG_LEVELS  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402

__all__ = ["serve", "app_from_env", "limit_threads", "BackgroundServer"]

log = logging.getLogger("recsys")

_ENV = "RECSYS_SERVE"


def limit_threads(n: int = 1) -> None:
    """Run BLAS, OpenMP, FAISS and torch with ``n`` threads: the service's parallelism comes
    from concurrent requests; fanning out each small search too only adds contention."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    import faiss  # both required by recsys; imported after the variables are set
    from threadpoolctl import threadpool_limits  # scikit-learn's

    threadpool_limits(n)
    faiss.omp_set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol closing a connection that has not sent a whole request head
    within ``timeout_keep_alive`` seconds of opening or of its last response (uvicorn's own
    timer stops at the first byte, so half a head would hold the connection for ever)."""

    def _arm(self) -> None:
        self._idle_cycle = self.cycle
        self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_late)

    def _head_late(self) -> None:
        no_new_request = self.cycle is self._idle_cycle and (self.cycle is None or self.cycle.response_complete)
        if no_new_request and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        self._head_deadline.cancel()
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)


def _check_address(host: Any, port: Any) -> None:
    """A port in range, a host that resolves, and nothing else listening there."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, TypeError) as exc:
        raise ConfigError(f"host {host!r} is not an address of this machine ({exc}); e.g. 127.0.0.1") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
            ) from None


def app_from_env() -> Any:
    """App factory for uvicorn worker processes (``--workers N``): the run directory and
    options come from the ``RECSYS_SERVE`` environment variable set by :func:`serve`."""
    from .app import create_app
    from .state import ServiceState

    limit_threads()
    options = json.loads(os.environ[_ENV])
    run_dir = options.pop("run_dir")
    config = ServingConfig.of(**options)
    return create_app(ServiceState.load(run_dir, config.model, reload_root=config.reload_root, freeze_gc=True), config)


def serve(
    run_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve ``run_dir`` (a ``recsys run`` output) with uvicorn until interrupted (``recsys
    serve``); ``options`` are :class:`ServingConfig` fields (None: the default), ``port`` 0 any.

    Options are checked (a ConfigError naming the bad one) and the model loaded before the port
    is bound. With one worker SIGHUP reloads the directory in place; with ``workers > 1``
    uvicorn restarts the workers one by one, and ``POST /reload`` reloads only the one it hits.
    """
    from .app import create_app
    from .state import ServiceState

    config = ServingConfig.of(**options)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if str(log_level).lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    _check_address(host, port)
    limit_threads()
    if workers > 1:
        ServiceState.load(run_dir, config.model, reload_root=config.reload_root)  # fail now, not in every worker
        os.environ[_ENV] = json.dumps({"run_dir": os.path.abspath(run_dir), **asdict(config)})
        _run_workers(_uvicorn_config("recsys.serving.server:app_from_env", config, host, port, log_level,
                                     factory=True, workers=workers))  # fmt: skip
        return
    state = ServiceState.load(run_dir, config.model, reload_root=config.reload_root, freeze_gc=True)
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda signum, frame: state.reload_in_background())
    log.info(
        "serving run %s (%s FM for /invocations) on http://%s:%d",
        state.current.saved.info.get("run_id"), config.model, host, port,
    )  # fmt: skip
    uvicorn.Server(_uvicorn_config(create_app(state, config), config, host, port, log_level)).run()


def _uvicorn_config(app: Any, config: ServingConfig, host: str, port: int, log_level: str, **extra: Any) -> Any:
    level = log_level.lower()
    return uvicorn.Config(
        app, host=host, port=port, log_level=level, access_log=level in ("debug", "trace", "info"),
        http=HeaderDeadlineH11, timeout_keep_alive=config.keep_alive_timeout,
        limit_concurrency=config.max_connections, **extra,
    )  # fmt: skip


def _run_workers(config: Any) -> None:
    """``uvicorn.run`` for ``workers > 1``, with the listening socket rewrapped as IPPROTO_TCP:
    asyncio sets TCP_NODELAY only on such sockets, else every keep-alive response waits ~40 ms
    for a delayed ACK (uvicorn issue #3149)."""
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()


@dataclass
class BackgroundServer:
    """A uvicorn server for ``app`` in a daemon thread of this process (tests, notebooks), used
    as a context manager; ``port=0`` picks a free port (:attr:`url` is known once started)."""

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
        config = getattr(getattr(self.app, "state", None), "config", None) or ServingConfig()
        self._server = uvicorn.Server(_uvicorn_config(self.app, config, self.host, self.port, self.log_level))
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
        if self._server is not None:  # the thread is set with it
            self._server.should_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
