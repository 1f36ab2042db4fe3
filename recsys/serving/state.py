"""The loaded run the service answers from (:class:`ServedRun`: checked, warmed up, then
read-only, so request threads share it without locks) and its swap on reload
(:class:`ServiceState`)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.errors import BackendError, RecsysError
from recsys.model import FittedFM

from .config import DEFAULT_MODEL, check_model
from .protocol import RequestError, decode_request, encode_predictions

__all__ = ["ServedRun", "ServiceState", "predict_rows"]

log = logging.getLogger("recsys")

_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
#: An absolute path left in a message (a "/" not preceded by a name character).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"]")


def predict_rows(fm: FittedFM, X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray | None]:
    """``(scores, predicted_labels)`` of ``fm`` for the rows of ``X`` (labels only for a
    classifier); a 422 ``non_finite_score`` RequestError when a row's FM output overflows."""
    with np.errstate(over="ignore", invalid="ignore"):  # refused below
        raw = fm.decision_function(X)
    bad = np.flatnonzero(~np.isfinite(raw))
    if len(bad):
        largest = float(np.abs(X.data).max()) if X.nnz else 0.0
        raise RequestError(
            422, "non_finite_score",
            f"instances {bad[:10].tolist()} score to {raw[bad[0]]} (the FM's arithmetic overflows; the "
            f"largest |feature value| is {largest:.3g}); send smaller feature values",
        )  # fmt: skip
    scores = fm.predict_score(X) if fm.samples is not None else fm.score_of(raw)  # samples: their average
    return scores, (scores >= 0.5).astype(np.float64) if fm.is_classifier else None


class _Ids:
    """A mapping's ids as the run holds them (JSON-ready Python scalars), matched from URL text."""

    def __init__(self, index: pd.Index, what: str):
        self.integer = pd.api.types.is_integer_dtype(index.dtype)
        self.values = [v.item() if isinstance(v, np.generic) else v for v in index.tolist()]
        self.what = what
        self._position = {(v if self.integer else str(v)): i for i, v in enumerate(self.values)}

    def position(self, value: Any) -> int:
        """The index of an id given as JSON gives it (-1 when unknown or of another type)."""
        wanted = (int,) if self.integer else (str,)
        return self._position.get(value, -1) if isinstance(value, wanted) and not isinstance(value, bool) else -1

    def find(self, text: str) -> tuple[Any, int]:
        """``(id in the run's type, index or -1)``; a 422 when the ids are integers and
        ``text`` is not a 64-bit one."""
        if not self.integer:
            position = self._position.get(text, -1)
            return (self.values[position] if position >= 0 else text), position
        value = int(text) if _INTEGER.fullmatch(text) else None
        if value is None or not -(2**63) <= value < 2**63:
            raise RequestError(
                422, f"invalid_{self.what}", f"this run's {self.what}s are 64-bit integers; got {text[:60]!r}"
            )
        return value, self._position.get(value, -1)


class ServedRun:
    """One run directory loaded to answer requests: ``model`` is the FM of ``/invocations``,
    ``name`` how answers call the directory (never an absolute path; default its folder name).
    A RecsysError when it is not a readable run or a model is not finite."""

    def __init__(self, run_dir: str | os.PathLike, model: str = DEFAULT_MODEL, *, name: str | None = None):
        from recsys.saved_run import SavedRun

        t0 = time.perf_counter()
        self.model_name = check_model(model)
        self.run_dir = Path(os.path.abspath(run_dir))  # not resolve(): SIGHUP re-reads a symlink
        self.name = name or self.run_dir.name
        self.saved = SavedRun(self.run_dir)
        self.fm = self.saved.model(model)
        self.recommender = rec = self.saved.recommender()
        self.customers = _Ids(rec.mappings.customer_ids, "customer_id")
        self.products = _Ids(rec.mappings.product_ids, "product_id")
        histories = rec.histories  # customers outside the model, folded in
        self.others = _Ids(histories.customer_ids if histories is not None else rec.mappings.customer_ids[:0], "customer_id")
        self.product_titles = [t if isinstance(t, str) else None for t in rec.mappings.product_titles]
        # warm up (the k-NN index, the similarity index): no request pays for a lazy first use
        if rec.mappings.n_users:
            rec.recommend(0, 1, exclude_seen=True)
        if rec.mappings.n_items:
            self._folded(sp.csr_matrix(([1.0], ([0], [0])), shape=(1, rec.mappings.n_items)), 1, True)
            rec.similar_items(0, 1)
        predict_rows(self.fm, sp.csr_matrix((1, self.fm.feature_dim)))
        self.loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.load_seconds = round(time.perf_counter() - t0, 3)

    def _folded(self, ranks: sp.csr_matrix, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = self.recommender.recommend_history(ranks, k, exclude_seen=exclude_seen)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def identity(self) -> dict[str, Any]:
        info = self.saved.info
        return {
            **{key: info.get(key) for key in ("run_id", "created", "backend", "objective", "recommender_model", "recsys_version")},
            "run_name": self.name, "model": self.model_name, "predictor_type": self.fm.predictor_type,
            "feature_dim": self.fm.feature_dim, "num_factors": self.fm.num_factors,
            "n_customers": len(self.customers.values), "n_products": len(self.products.values),
            "loaded_at": self.loaded_at, "load_seconds": self.load_seconds,
        }  # fmt: skip

    def _items(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        pids, titles = self.products.values, self.product_titles
        return [
            {"rank": r, "product_id": pids[i], "product_title": titles[i], "score": s}
            for r, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True), 1)
        ]

    def recommendations(self, customer_id: str, k: int, exclude_seen: bool) -> dict[str, Any]:
        """``/recommendations``: a customer's top ``k`` (model, fold-in or popularity)."""
        cid, u = self.customers.find(customer_id)
        if u >= 0:
            return self._answer(cid, k, exclude_seen, user=u)
        _, row = self.others.find(customer_id)
        ranks = self.recommender.histories.ranks[[row]] if row >= 0 else None  # type: ignore[union-attr]
        return self._answer(cid, k, exclude_seen, ranks=ranks)

    def recommendations_for_recent(self, recent: list[Any], k: int, exclude_seen: bool) -> dict[str, Any]:
        """``POST /recommendations``: an anonymous session's top ``k`` folded in from ``recent``
        (oldest first); ids not in the catalogue are listed in ``ignored``."""
        from recsys.fold_in import histories_matrix

        positions = [self.products.position(pid) for pid in recent]
        items = [i for i in positions if i >= 0]
        ranks = histories_matrix([items], len(self.products.values)) if items else None
        answer = self._answer(None, k, exclude_seen, ranks=ranks)
        del answer["customer_id"]
        answer["ignored"] = [pid for pid, i in zip(recent, positions, strict=True) if i < 0]
        return answer

    def _answer(self, cid: Any, k: int, exclude_seen: bool, *, user: int = -1, ranks: sp.csr_matrix | None = None) -> dict[str, Any]:
        """The top ``k`` of the model's ``user``, else folded in from ``ranks``, else the most
        popular (``score`` null, ``popularity`` the rating count: a count is not a score)."""
        try:
            if user >= 0:
                source, (ids, scores) = "model", self.recommender.recommend(user, k, exclude_seen=exclude_seen)
            elif ranks is not None and ranks.nnz:
                source, (ids, scores) = "fold_in", self._folded(ranks, k, exclude_seen)
            else:
                source, (ids, scores) = "popularity", self.recommender.popular(k)
        except BackendError as exc:  # an index built for fewer neighbours than k needs
            raise RequestError(422, "k_too_large", str(exc)) from None
        items = self._items(ids, scores)
        if source == "popularity":
            for item in items:
                item["score"], item["popularity"] = None, item["score"]
        return {"customer_id": cid, "source": source, "k": k, "exclude_seen": exclude_seen, "recommendations": items}

    def similar(self, product_id: str, k: int) -> dict[str, Any]:
        """``/similar``: the ``k`` videos most similar to one (cosine of the item vectors)."""
        pid, i = self.products.find(product_id)
        if i < 0:
            raise RequestError(404, "unknown_product", f"unknown product_id {product_id[:60]!r}")
        items = self._items(*self.recommender.similar_items(i, k))
        return {"product_id": pid, "product_title": self.product_titles[i], "k": k, "similar": items}

    def invocations(self, body: bytes, content_type: str | None, accept: str, max_instances: int) -> bytes:
        """``/invocations``: decode, score with the served FM, encode."""
        X = decode_request(body, content_type, self.fm.feature_dim, max_instances=max_instances)
        return encode_predictions(*predict_rows(self.fm, X), accept)


def _freeze_gc() -> None:
    """Freeze every live object (~170k for the default run) out of the cyclic GC, whose full
    collection of them costs ~80 ms with the GIL held; unfreeze and collect first, so a replaced
    model does not linger."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def public_reason(exc: BaseException, run_dir: Path, name: str) -> str:
    """Why a load failed, fit for an answer: our own message with the run folder shown as
    ``name``; the exception's type alone when it is not ours or still holds an absolute path."""
    if isinstance(exc, RecsysError):
        text = str(exc)
        for form in sorted({str(run_dir), str(run_dir.resolve())}, key=len, reverse=True):
            text = text.replace(form, name)
        if not _ABSOLUTE_PATH.search(text):
            return text
    return f"{type(exc).__name__} (details in the server log)"


class ServiceState:
    """The served snapshot (:attr:`current`), read once per request so an answer never mixes
    two models; :meth:`reload` loads the new one whole, then swaps (one at a time). A client may
    name a run to load only below ``reload_root``. ``freeze_gc`` (``recsys serve``): freeze the
    GC heap after each load (:func:`_freeze_gc`)."""

    def __init__(self, current: ServedRun, *, reload_root: str | os.PathLike | None = None, freeze_gc: bool = False):
        self.current = current
        self.reload_root = Path(reload_root).resolve() if reload_root is not None else None
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.freeze_gc = freeze_gc
        self._lock = threading.Lock()
        if freeze_gc:
            _freeze_gc()

    @classmethod
    def load(
        cls, run_dir: str | os.PathLike, model: str = DEFAULT_MODEL, *,
        reload_root: str | os.PathLike | None = None, freeze_gc: bool = False,
    ) -> ServiceState:  # fmt: skip
        root = Path(reload_root).resolve() if reload_root is not None else None
        path = Path(run_dir).resolve()
        name = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else None
        return cls(ServedRun(run_dir, model, name=name), reload_root=root, freeze_gc=freeze_gc)

    def _target(self, model_dir: str) -> tuple[Path, str]:
        """``(path, name)`` of a directory a client named, which must lie below the reload root."""
        if self.reload_root is None:
            raise RequestError(
                403, "reload_path_not_allowed",
                "this server reloads only the run it serves (send no model_dir); start it with "
                "--reload-root DIR to let clients load runs below DIR by name",
            )  # fmt: skip
        path = (self.reload_root / model_dir).resolve()
        if not path.is_relative_to(self.reload_root):
            raise RequestError(
                403, "reload_path_not_allowed",
                f"model_dir {model_dir[:200]!r} is outside the reload root; name a run folder below it",
            )  # fmt: skip
        return path, path.relative_to(self.reload_root).as_posix()

    def reload(self, model_dir: str | None = None, model: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load ``model_dir`` (below the reload root; default: the served directory again), swap
        it in and return the identities of the replaced and the new model. A 403 RequestError
        for a ``model_dir`` not allowed, 422 when loading fails (the old model stays)."""
        with self._lock:
            old = self.current
            path, name = (old.run_dir, old.name) if model_dir is None else self._target(model_dir)
            try:
                new = ServedRun(path, model or old.model_name, name=name)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
                self.last_reload_error = public_reason(exc, path, name)
                log.error("reload of %s failed; still serving %s (%s: %s)", path, old.run_dir, type(exc).__name__, exc)
                raise RequestError(
                    422, "reload_failed",
                    f"could not load {name!r}: {self.last_reload_error}; still serving run {old.identity()['run_id']}",
                ) from None  # fmt: skip
            self.current = new
            self.reloads += 1
            self.last_reload_error = None
            previous, current = old.identity(), new.identity()
            del old  # requests still on it keep it alive; nothing else does
            if self.freeze_gc:
                _freeze_gc()
        log.info("reloaded: run %s (%s) from %s in %.2f s", current["run_id"], current["model"], path, current["load_seconds"])
        return previous, current

    def reload_in_background(self) -> threading.Thread:
        """Reload the current directory in a thread (what SIGHUP does); errors are logged."""

        def work() -> None:
            with contextlib.suppress(RequestError):  # already logged; the old model keeps serving
                self.reload()

        thread = threading.Thread(target=work, name="recsys-reload", daemon=True)
        thread.start()
        return thread
