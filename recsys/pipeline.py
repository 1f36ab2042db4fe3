"""The main job: the lab's whole workflow as one reproducible run.

load -> explore -> prepare -> FM regressor -> FM 5-star classifier -> (ranking FM) -> vectors ->
k-NN top-K for every customer -> ranking evaluation -> sample customers -> outputs

This module only wires the stages together; each stage lives in its own module. Every output
is written into a temporary directory next to ``out`` that replaces ``out`` as a whole at the
end, so an interrupted run (Ctrl-C, an error) leaves the previous outputs untouched and no
half-written files. Same config and seed -> same metrics.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import hashlib
import logging
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import resource
except ImportError:  # Windows: no peak memory figures
    resource = None  # type: ignore[assignment]

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backends.base import TrainOptions

from . import __version__
from ._io import atomic_dir, check_replaceable, temp_path, to_json
from .config import RunConfig, apply_overrides, config_from_dict, dump_toml, load_config
from .data import explore as explore_mod
from .data.loaders import LoadReport, load_amazon_reviews, load_ratings
from .data.prepare import PreparedData, prepare
from .data.schema import DATE, ITEM, RATING, USER
from .errors import BackendError, ConfigError, DataError
from .evaluation import classification_report, prediction_summary, regression_report
from .fold_in import Histories
from .model import FittedFM
from .recommend import Recommender, popularity, write_recommendations
from .saved_run import RUN_FORMAT, RUN_FORMAT_VERSION, SavedRun
from .summary import metric_lines, metric_warnings

__all__ = ["run", "eda", "evaluate_saved", "RunResult", "EdaResult", "load_input", "builtin_dataset", "RUN_FORMAT",
           "RUN_FORMAT_VERSION"]

log = logging.getLogger("recsys")


# ---- results ----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """Everything a run produced. ``metrics`` is what ``metrics.json`` holds."""

    config: RunConfig
    out_dir: Path | None
    metrics: dict[str, Any]
    load_report: LoadReport | None = None
    exploration: Any = None
    prepared: PreparedData | None = None
    models: dict[str, FittedFM] = field(default_factory=dict)
    recommender: Recommender | None = None
    #: the model's customers' (ids, scores) top-K, as written
    model_lists: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    samples: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    plan: str | None = None
    #: the loaded ratings frame (for the exploration plots)
    frame: pd.DataFrame | None = field(default=None, repr=False)
    #: test predictions and truths per rating model, for the plots
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    #: two customers' scores over the catalogue per model (the lab's scatter)
    score_pairs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def recommendations(self) -> pd.DataFrame | None:
        """Every customer's recommendations (what ``recommendations.parquet`` holds): read from
        the output when the run wrote it, else computed. Large runs: read the file in row
        groups instead, or ask :attr:`recommender` for the customers you need."""
        if self.out_dir is not None and (self.out_dir / "recommendations.parquet").is_file():
            return pd.read_parquet(self.out_dir / "recommendations.parquet")
        if self.recommender is None:
            return None
        return self.recommender.recommendations(k=self.config.knn.k, exclude_seen=self.config.recommend.exclude_seen)

    def summary_lines(self) -> list[str]:
        m, lines = self.metrics, []
        if d := m.get("data", {}):
            lines.append(
                f"data: {d['rows_read']:,} reviews read ({d['rows_skipped']:,} malformed lines skipped), "
                f"{d['exact_duplicates_removed']:,} exact duplicate rows and {d['rereviews_removed']:,} re-reviews "
                f"removed -> {d['customers']:,} customers x "
                f"{d['products']:,} videos, {d['train_rows']:,} train / {d['test_rows']:,} test ratings"
            )
        lines += metric_lines(m)
        if t := m.get("timing", {}):
            peak = max((m.get("peak_rss_gb") or {}).values(), default=None)
            lines.append(f"total time {t.get('total', 0):.1f} s" + (f", peak RSS {peak:.2f} GB" if peak else ""))
        lines += [f"warning: {w}" for w in m.get("warnings", [])]
        return lines


# ---- stage 1: load ----------------------------------------------------------------------------
def _cache_dir() -> Path:
    if base := os.environ.get("RECSYS_CACHE_DIR"):
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recsys"


def builtin_dataset(preset: str = "default", seed: int = 0) -> Path:
    """Path of the built-in dataset file (generated on first use and cached; same seed, same
    bytes). Set ``RECSYS_CACHE_DIR`` to choose where it is kept."""
    from .data.synthetic import GENERATOR_VERSION, PRESETS, generate_reviews, write_reviews_tsv

    # the preset's parameters are part of the key: a preset that changes never reads a stale file
    params = hashlib.sha256(repr(PRESETS.get(preset, preset)).encode()).hexdigest()[:8]
    path = _cache_dir() / "datasets" / f"amazon_reviews_{preset}_seed{seed}_v{GENERATOR_VERSION}-{params}.tsv"
    if not path.is_file():
        log.info("generating the built-in %r dataset (seed %d) into %s", preset, seed, path)
        write_reviews_tsv(generate_reviews(preset, seed), path, seed=seed)
    return path


def load_input(data_cfg: Any, seed: int = 0) -> tuple[pd.DataFrame, LoadReport, str]:
    """Load the configured ratings (or the built-in dataset). Returns frame, report, a label."""
    if data_cfg.path:
        path = Path(data_cfg.path)
        if not path.exists():
            raise DataError(f"no such file: {path}")
        options, fmt = data_cfg.mapping(), data_cfg.format
        if fmt in ("amazon", "movielens") and options:
            raise ConfigError(f"column-mapping options apply to csv/parquet data, not {fmt}")
        return *load_ratings(path, fmt, **options), str(path)
    frame, report = load_amazon_reviews(builtin_dataset(data_cfg.preset, seed))
    return frame, report, f"built-in {data_cfg.preset!r} dataset (seed {seed})"


# ---- helpers ----------------------------------------------------------------------------------
class _Timer:
    """Times the stages and logs ``stage: NAME ... 3.4 s`` as each ends. With ``heartbeat`` (set
    when the output is not a terminal, where no progress bar moves) a stage that runs longer also
    logs ``stage: NAME ... 20 s so far``, at most every ``heartbeat`` seconds and only while
    nothing else was logged for that long."""

    def __init__(self, heartbeat: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_gb: dict[str, float] = {}  # the process's high-water mark as each stage ends
        self.heartbeat = heartbeat

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        beating = self.heartbeat and log.isEnabledFor(logging.INFO)
        with _heartbeat(stage, t0, self.heartbeat) if beating else contextlib.nullcontext():
            yield
        seconds = time.perf_counter() - t0
        self.seconds[stage] = round(seconds, 3)
        if resource is None:
            log.info("stage: %s ... %.1f s", stage, seconds)
            return
        # the process's peak resident memory so far, in GB (10^9 bytes)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (bytes on macOS)
        unit = 1 if sys.platform == "darwin" else 1024
        peak = self.peak_rss_gb[stage] = round(rss * unit / 1e9, 3)
        log.info("stage: %s ... %.1f s (peak RSS so far %.2f GB)", stage, seconds, peak)


class _LastRecord(logging.Handler):
    at = 0.0  # when anything was last logged

    def emit(self, record: logging.LogRecord) -> None:
        self.at = time.monotonic()


@contextlib.contextmanager
def _heartbeat(stage: str, t0: float, every: float) -> Iterator[None]:
    last = _LastRecord()
    last.at = time.monotonic()
    log.addHandler(last)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(1.0, every)):
            if time.monotonic() - last.at >= every:
                log.info("stage: %s ... %.0f s so far", stage, time.perf_counter() - t0)

    thread = threading.Thread(target=beat, name=f"recsys-heartbeat-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        log.removeHandler(last)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _popular_lists(rec: Recommender, users: np.ndarray, k: int, exclude_seen: bool) -> np.ndarray:
    """The popularity baseline's top-k per user (seen items skipped), as a 2-D index array."""
    from backends.base import drop_excluded

    order = rec.popular_order
    out = np.empty((len(users), min(k, len(order))), dtype=np.int32)
    for start in range(0, len(users), 65536):
        u = users[start : start + 65536]
        seen = rec.seen[u] if exclude_seen and rec.seen is not None else None
        depth = min(len(order), k + (int(np.diff(seen.indptr).max(initial=0)) if seen is not None else 0))
        cand = np.tile(order[:depth], (len(u), 1))
        out[start : start + len(u)] = drop_excluded(cand, np.zeros(cand.shape, np.float32), seen, k, 0.0)[0][:, : out.shape[1]]
    return out


def _ranking_metrics(
    rec: Recommender, prepared: PreparedData, lists: np.ndarray, cfg: RunConfig, objective: str,
    list_users: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Ranking metrics of ``rec`` on the test rows (list metrics over ``lists``, the lists of
    ``list_users``, default every customer of the model), and the test rows' ranks: each row
    is ranked once."""
    from .ranking import evaluate_ranking, ranks_from_scores

    users_v, items_v, test = rec.user_vectors, rec.item_vectors, prepared.test
    list_users = np.arange(prepared.n_users) if list_users is None else list_users
    pop_lists = _popular_lists(rec, list_users, lists.shape[1], cfg.recommend.exclude_seen)
    seen = rec.seen if cfg.recommend.exclude_seen else None
    kwargs = dict(
        score_fn=lambda u: users_v[u] @ items_v.T, lists=lists, test_users=test[USER].to_numpy(), test_items=test[ITEM].to_numpy(),
        n_items=prepared.n_items, seen=seen, item_popularity=rec.item_popularity, popular_lists=pop_lists,
    )  # fmt: skip
    kwargs["ranks"] = ranks_from_scores(kwargs["score_fn"], kwargs["test_users"], kwargs["test_items"], prepared.n_items, seen)
    out: dict[str, Any] = {"objective": objective, "k": int(lists.shape[1]), **evaluate_ranking(**kwargs)}
    if cfg.evaluation.liked_threshold is not None:
        try:
            liked = evaluate_ranking(**kwargs, test_ratings=test[RATING].to_numpy(), liked_threshold=cfg.evaluation.liked_threshold)
            out["liked"] = {"threshold": cfg.evaluation.liked_threshold, **liked}
        except DataError:
            out["liked"] = {"threshold": cfg.evaluation.liked_threshold, "test_rows": 0}
    return out, kwargs["ranks"]


def _samples(
    prepared: PreparedData, lists: tuple[np.ndarray, np.ndarray], n: int, seed: int,
    liked_threshold: float | None,
) -> list[dict[str, Any]]:
    """Sample customers: what they rated highly (latest first) next to the top 10 of their
    written ``(ids, scores)`` lists."""
    train, test = prepared.train, prepared.test
    tested = np.unique(test[USER].to_numpy())
    users = np.sort(np.random.default_rng(seed).choice(tested, size=min(n, len(tested)), replace=False))
    titles, pids = prepared.mappings.product_titles, prepared.mappings.product_ids.to_numpy()
    threshold = liked_threshold if liked_threshold is not None else 4.0

    def rated(rows: pd.DataFrame) -> list[dict[str, Any]]:
        return [{"product_id": pids[i], "product_title": titles[i], "rating": float(s)}
                for i, s in zip(rows[ITEM], rows[RATING], strict=True)]  # fmt: skip

    out = []
    for u in users:
        hist = train[train[USER] == u].sort_values(DATE, ascending=False, na_position="last")
        held = test[test[USER] == u]
        places = np.flatnonzero(lists[0][u] >= 0)  # the list's slots that hold a video
        hits = np.isin(lists[0][u][places], held[ITEM].to_numpy())
        top = places[:10]
        items = lists[0][u][top]
        names = [t if isinstance(t, str) else None for t in titles[items]]
        rows = zip(top, pids[items].tolist(), names, lists[1][u][top], hits, strict=False)
        recommended = [{"rank": int(p) + 1, "product_id": pid, "product_title": t,
                        "score": float(sc), "held_out": bool(h)} for p, pid, t, sc, h in rows]
        out.append({
            "customer_id": prepared.mappings.customer_ids[u], "n_train_ratings": int(len(hist)),
            "liked": rated(hist[hist[RATING] >= threshold].head(10)), "held_out": rated(held),
            "recommended": recommended,
            "held_out_rank_in_list": int(places[hits][0]) + 1 if hits.any() else None,
        })  # fmt: skip
    return out


def _data_metrics(report: LoadReport, prepared: PreparedData) -> dict[str, Any]:
    p = prepared.report
    return {
        "rows_read": int(report.rows_read), "rows_skipped": int(report.rows_skipped),
        "skip_reasons": dict(report.skip_reasons), "skipped_lines": [[int(n), r] for n, r in report.skipped_lines],
        "exact_duplicates_removed": int(p.exact_duplicates_removed), "rereviews_removed": int(p.rereviews_removed),
        "customers": int(p.customers), "products": int(p.products), "ratings_after_filter": int(p.rows_after_filter),
        "train_rows": int(p.train_rows), "test_rows": int(p.test_rows), "split": p.split,
        "min_customer_ratings": int(p.min_customer_ratings), "min_product_ratings": int(p.min_product_ratings),
        "rating_distribution_before": p.rating_distribution_before,
        "rating_distribution_after": p.rating_distribution_after,
        "test_items_unseen_in_train": int(p.test_items_unseen_in_train),
        # every drop and repair, as counts
        "bad_dates": int(report.bad_dates), "invalid_utf8_lines": int(report.invalid_utf8_lines),
        "rows_removed_by_filter": int(p.rows_after_dedupe - p.rows_after_filter),
        "test_rows_dropped": int(p.explicit_test_rows_dropped),
        "train_rows_removed_overlapping_test": int(p.explicit_test_overlap_removed),
    }  # fmt: skip


def _resolve(config: RunConfig | dict | str | os.PathLike | None, overrides: dict[str, Any]) -> RunConfig:
    if isinstance(config, RunConfig):
        cfg = copy.deepcopy(config)  # overrides reach nested sections: the caller's stays as it was
    elif config is None or isinstance(config, dict):
        cfg = config_from_dict(config or {})
    else:
        cfg = load_config(config)
    return apply_overrides(cfg, **overrides)


# ---- the run ----------------------------------------------------------------------------------
def run(
    config: RunConfig | dict | str | os.PathLike | None = None,
    *,
    show_progress: bool = True,
    dry_run: bool = False,
    write: bool = True,
    until: str | None = None,
    **overrides: Any,
) -> RunResult:
    """Run the whole workflow; return its :class:`RunResult` and (unless ``write=False``) write
    its outputs into ``config.out``.

    ``config``: a TOML/YAML path, a nested dict as in a config file, a :class:`RunConfig`, or
    None (all defaults: the built-in dataset). ``show_progress``: progress bars on the long
    stages. ``dry_run`` (SageMaker backend only): print every job, model, endpoint and transform
    the run would create, without calling AWS (the data is still loaded and prepared locally).
    ``until="train"`` stops after training and saving the FMs (``recsys train``). ``overrides``:
    flat, as the CLI flags: ``out``, ``seed``, ``backend``, ``objective``, ``data_path``,
    ``data_format``, ``test_path``, ``min_customer_ratings``, ``k``, ...
    """
    if until not in (None, "train"):
        raise ConfigError(f"until must be None or 'train', got {until!r}")
    cfg = _resolve(config, overrides)
    if until == "train" and "out" not in overrides and cfg.out == RunConfig.out:
        cfg.out = TRAIN_OUT  # a models-only output never lands where a full run's output lives
    kind = "recsys.train" if until == "train" else "recsys.run"
    out_dir = Path(cfg.out)
    if write:
        check_replaceable(out_dir, kind, _REPLACES[kind])  # refused before any work
    timer = _Timer(heartbeat=HEARTBEAT_SECONDS if show_progress and not _is_terminal() else None)
    t_total = time.perf_counter()
    from backends import backend_class

    backend = backend_class(cfg.backend).from_config(cfg, dry_run=dry_run)
    with _spooled() as spool:
        with backend:
            result = _run_stages(cfg, backend, timer, show_progress, dry_run, until == "train",
                                 spool if write and not dry_run else None)  # fmt: skip
            if dry_run:
                backend.close()  # the cleanup a real run ends with belongs to the plan
                result.plan = backend.format_plan()
                if write:  # the exact requests, in order, for whoever approves them
                    from ._io import atomic_write_json

                    result.files["plan"] = atomic_write_json(out_dir / "plan.json", backend.plan_requests())
                return result
            if report := backend.report():
                result.metrics[backend.name] = report
        result.metrics["warnings"] = metric_warnings(result.metrics, n_items=result.prepared.n_items)
        result.metrics["timing"] = {**timer.seconds, "total": round(time.perf_counter() - t_total, 3)}
        result.metrics["peak_rss_gb"] = dict(timer.peak_rss_gb)
        if write:
            result.files = _write_outputs(result, out_dir, spool, kind, timer.seconds, t_total)
            result.out_dir = out_dir
    return result


def _rating_designs(prepared: PreparedData, features: Any) -> tuple[Any, Callable, sp.csr_matrix]:
    """The rating models' designs: the user and item one-hots, plus the ``[features]`` groups
    when configured (:mod:`recsys.feature_groups`). Returns the groups (or None), the training
    design for an FM's params -- grouped for the Bayesian FM (a prior per group, relation blocks
    kept compact), as one CSR matrix (made on first use) for the SGD FM and SageMaker -- and
    the test rows as CSR."""
    if not features.any:
        train = prepared.design_matrix("train")
        return None, lambda params: train, prepared.design_matrix("test")
    from .feature_groups import FeatureGroups

    groups = FeatureGroups(features, prepared.train, prepared.n_users, prepared.n_items)
    grouped = groups.design(prepared.train, training=True)
    as_csr = functools.cache(grouped.to_csr)
    test = groups.design(prepared.test, training=False).to_csr()
    return groups, lambda params: grouped if params.solver == "mcmc" else as_csr(), test


def _model_info(params: Any, groups: Any) -> dict[str, Any]:
    """Which solver and feature groups trained a rating model (for metrics.json and the report)."""
    if params.solver == "mcmc":
        steps = {"burn_in": params.mcmc_burn_in, "samples": params.mcmc_samples}
    else:
        steps = {"epochs": params.epochs, "optimizer": params.optimizer}
    names = list(groups.group_names) if groups is not None else ["user", "item"]
    return {"solver": params.solver, "num_factors": params.num_factors, "feature_groups": names,
            **steps}


@contextlib.contextmanager
def _spooled() -> Iterator[dict[str, Path]]:
    """Files written during the run (the recommendation lists, streamed while a remote backend
    is still open) by name -> temporary path next to ``out``: moved into the outputs at the
    end, removed if still there."""
    files: dict[str, Path] = {}
    try:
        yield files
    finally:
        for path in files.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


#: Where ``recsys train`` writes when no ``out`` is given (never where a full run's output is).
TRAIN_OUT = "recsys-train"
#: Seconds between "still running" lines of a long stage when the output is not a terminal.
HEARTBEAT_SECONDS = 10.0
#: Which earlier outputs a writer may replace: a full run replaces a run or a train output; a
#: train output replaces only a train output (it would lose a run's report and recommendations).
_REPLACES = {"recsys.run": ("recsys.run", "recsys.train"), "recsys.train": ("recsys.train",)}


def _run_stages(
    cfg: RunConfig, backend: Any, timer: _Timer, show_progress: bool, dry_run: bool,
    train_only: bool, spool: dict[str, Path] | None,
) -> RunResult:
    metrics: dict[str, Any] = {}
    with timer("load"):
        frame, report, label = load_input(cfg.data, cfg.seed)
        test_frame = load_ratings(cfg.data.test_path, cfg.data.format, **cfg.data.mapping())[0] if cfg.data.test_path else None
    with timer("explore"):
        exploration = explore_mod.explore(frame, report)
    with timer("prepare"):
        prepared = prepare(frame, cfg.prepare, test_frame=test_frame)
    metrics["data"] = {**_data_metrics(report, prepared), "source": label}
    result = RunResult(config=cfg, out_dir=None, metrics=metrics, load_report=report, exploration=exploration,
                       prepared=prepared, frame=frame)  # fmt: skip
    meta: dict[str, Any] = {"n_users": prepared.n_users, "n_items": prepared.n_items}
    rating_range = (float(np.nanmin(frame[RATING])), float(np.nanmax(frame[RATING])))
    groups, train_design, test_design = _rating_designs(prepared, cfg.features)
    if groups is not None:
        meta["feature_groups"] = groups.to_dict()

    def fit(params: Any, stage: str, y: np.ndarray, y_eval: np.ndarray) -> FittedFM:
        return backend.fit_fm(train_design(params), y, params, eval_set=(test_design, y_eval),
                              options=TrainOptions(show_progress=show_progress, metadata={**meta, "stage": stage}))  # fmt: skip

    with timer("fm regressor"):
        ytr, yte = prepared.labels("train"), prepared.labels("test")
        reg = fit(cfg.regressor, "regressor", ytr, yte)
        pred = reg.predict(test_design)
        metrics["regressor"] = {
            **regression_report(yte, pred, ytr, items_test=prepared.test[ITEM], items_train=prepared.train[ITEM]),
            "predictions": prediction_summary(pred, valid_range=rating_range),
            "model": _model_info(cfg.regressor, groups),
        }  # fmt: skip
    with timer("fm classifier"):
        ctr, cte = prepared.labels("train", "classification"), prepared.labels("test", "classification")
        clf = fit(cfg.classifier, "classifier", ctr, cte)
        proba = clf.predict_score(test_design)
        metrics["classifier"] = {
            **classification_report(cte, proba, ctr), "positive_threshold": cfg.prepare.positive_threshold,
            "predictions": prediction_summary(proba, valid_range=(0.0, 1.0)),
            "model": _model_info(cfg.classifier, groups),
        }  # fmt: skip
    result.models = {"regressor": reg, "classifier": clf}
    result.predictions = {"regressor": (pred, yte), "classifier": (proba, cte)}
    # the customers' side of a rating model's row
    rating_user_features = groups.user_part() if groups is not None else None
    user_features = rating_user_features
    if cfg.objective == "ranking":
        with timer("fm ranking"):
            from .objectives import train_ranking_model

            ranker, user_features = train_ranking_model(backend, prepared, cfg.ranking, show_progress=show_progress)
            result.models["ranking"] = ranker
    metrics["run"] = {"backend": cfg.backend, "objective": cfg.objective, "seed": cfg.seed, "recsys_version": __version__}
    if train_only:
        return result
    chosen = result.models["ranking" if cfg.objective == "ranking" else "classifier"]
    seen = prepared.seen_items()
    pop = popularity(prepared.train[ITEM], prepared.n_items)
    with timer("knn"):
        histories = Histories.from_frame(prepared.others(), prepared.mappings) if cfg.recommend.customers == "all" else None
        rec = Recommender(chosen, prepared.mappings, seen, item_popularity=pop, backend=backend,
                          knn_params=cfg.knn, user_features=user_features, histories=histories)  # fmt: skip
        rec.index  # noqa: B018 - built here, so the stage timings tell building from searching
    result.recommender = rec
    with timer("recommend"):
        result.model_lists = rec.top_lists(np.arange(prepared.n_users), cfg.knn.k, exclude_seen=cfg.recommend.exclude_seen)
        lists = result.model_lists[0]
    metrics["recommendations"] = _list_counts(rec, cfg.knn.k)
    if dry_run:
        return result
    if spool is not None:
        with timer("recommend everyone"):  # streamed to disk, block by block
            out = Path(cfg.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            for fmt in ("parquet", "csv") if cfg.recommend.csv else ("parquet",):
                # named as recsys names its temporaries, so a killed run's are removed later
                path = temp_path(out, "tmp", f".recommendations-{fmt}")
                spool[f"recommendations.{fmt}"] = path
                write_recommendations(rec.iter_recommendations(k=cfg.knn.k, exclude_seen=cfg.recommend.exclude_seen,
                                                               arrow=True, model_lists=result.model_lists),
                                      path, fmt=fmt)  # fmt: skip
    with timer("evaluate ranking"):
        metrics["ranking"], test_ranks = _ranking_metrics(rec, prepared, lists, cfg, cfg.objective)
        if histories is not None:
            metrics["ranking_everyone"] = _everyone_metrics(rec, prepared, cfg.recommend.exclude_seen, test_ranks)
        if cfg.objective == "ranking":
            # the lab's path (classifier factors + k-NN), evaluated the same way for comparison
            # (searched locally on a remote backend: a comparison is not worth paid jobs)
            lab = Recommender(clf, prepared.mappings, seen, item_popularity=pop, knn_params=cfg.knn,
                              backend="torch" if backend.remote else backend, user_features=rating_user_features)  # fmt: skip
            # (its lists only for the customers with a held-out rating: all of them after the
            # long-tail filter, a quarter of them without it)
            tested = np.unique(prepared.test[USER].to_numpy())
            lab_lists, _ = lab.top_lists(tested, cfg.knn.k, exclude_seen=cfg.recommend.exclude_seen)
            metrics["ranking_classifier_knn"] = _ranking_metrics(lab, prepared, lab_lists, cfg, "classifier", tested)[0]
        # the lab's two-customer views, on the regressor (its scores look alike for everyone)
        # and on the model whose recommendations are written
        views = {}
        pair = _lab_customers(prepared, [200, 201])
        if len(pair) == 2:
            for name, model, uf in (("regressor", reg, rating_user_features), (cfg.objective, chosen, user_features)):
                r2 = rec if model is chosen else Recommender(model, prepared.mappings, seen, user_features=uf)
                corr, a, b = r2.score_correlation(*pair)
                views[name] = {"customers": list(pair), "pearson_r": corr}
                result.score_pairs[name] = (a, b)
            ids = _lab_customers(prepared, [200, 201, 900])
            users = prepared.mappings.user_index(ids)
            listed = [set(lists[u][lists[u] >= 0].tolist()) for u in users]
            shared = [[len(a & b) for b in listed] for a in listed]
            views["top_k_overlap"] = {"customers": ids, "shared_videos": shared}
        metrics["customer_views"] = views
    with timer("samples"):
        result.samples = _samples(prepared, result.model_lists, cfg.recommend.sample_customers,
                                  cfg.seed, cfg.evaluation.liked_threshold)  # fmt: skip
    return result


def _list_counts(rec: Recommender, k: int) -> dict[str, int]:
    """How many customers get a list, by source (see :data:`recsys.recommend.SOURCES`)."""
    n_fold = n_pop = 0
    if rec.histories is not None:
        n_pop = int((np.diff(rec.histories.ranks.indptr) == 0).sum())
        n_fold = len(rec.histories) - n_pop
    return {"k": k, "customers": rec.n_users + n_fold + n_pop, "model": rec.n_users, "fold_in": n_fold, "popularity": n_pop}


def _everyone_metrics(rec: Recommender, prepared: PreparedData, exclude_seen: bool, test_ranks: np.ndarray) -> dict[str, Any]:
    """:func:`recsys.fold_in.evaluate_everyone` for the recommending model."""
    from .fold_in import evaluate_everyone

    items_t = rec.item_vectors.T

    def fold_in(ranks: sp.csr_matrix) -> Any:
        vectors, _ = rec.fold_in(ranks)
        return lambda rows: vectors[rows] @ items_t

    return evaluate_everyone(prepared, lambda u: rec.user_vectors[u] @ items_t, fold_in, rec.item_popularity,
                             seen=rec.seen, exclude_seen=exclude_seen, test_ranks=test_ranks)  # fmt: skip


def _lab_customers(prepared: PreparedData, lab: list[int]) -> list[Any]:
    """The customers the lab looked at (indices ``lab``, e.g. 200 and 201) when they all exist,
    else the first ``len(lab)`` (fewer when there are fewer customers)."""
    n = prepared.n_users
    picks = lab if n > max(lab) else range(min(len(lab), n))
    return [prepared.mappings.customer_ids[i] for i in picks]


# ---- outputs ----------------------------------------------------------------------------------
def _plots(result: RunResult, plot_dir: Path) -> dict[str, Path]:
    """Every PNG of the report."""
    from . import plots

    cfg, m = result.config, result.metrics
    paths = plots.plot_exploration(result.exploration, result.frame, plot_dir, item_label="video")
    pred, y = result.predictions["regressor"]
    paths["regressor_predictions"] = plots.plot_prediction_histogram(
        pred, plot_dir / "regressor_predictions.png", title="FM regressor: test predictions",
        xlabel="predicted rating", truth=y)  # fmt: skip
    proba, _ = result.predictions["classifier"]
    paths["classifier_probabilities"] = plots.plot_prediction_histogram(
        proba, plot_dir / "classifier_probabilities.png", title="FM classifier: P(5 stars) on the test set",
        xlabel="predicted probability of 5 stars")  # fmt: skip
    paths["confusion_matrix"] = plots.plot_confusion_matrix(m["classifier"]["confusion_matrix"], plot_dir / "confusion_matrix.png")
    for name, (a, b) in result.score_pairs.items():
        ca, cb = m["customer_views"][name]["customers"]
        paths[f"scatter_{name}"] = plots.plot_score_scatter(
            a, b, plot_dir / f"score_scatter_{name}.png", label_a=f"customer {ca}", label_b=f"customer {cb}",
            title=f"Two customers' scores, all videos ({name} FM)")  # fmt: skip
    if "ranking" in m:
        rows = [(f"FM ({cfg.objective})", m["ranking"])]
        if "ranking_classifier_knn" in m:
            rows.append(("FM classifier + k-NN (lab)", m["ranking_classifier_knn"]))
        rows.append(("popularity", {k.removeprefix("popularity_"): v for k, v in m["ranking"].items() if k.startswith("popularity_")}))
        paths["ranking"] = plots.plot_ranking_metrics(rows, plot_dir / "ranking_metrics.png")
    return paths


def _write_outputs(
    result: RunResult, out_dir: Path, spool: dict[str, Path], kind: str, seconds: dict[str, float],
    t_total: float,
) -> dict[str, Any]:
    """Write every output into a temporary folder that then replaces ``out_dir`` (only if it
    holds an earlier output ``kind`` may replace; see :mod:`recsys._io`); the recommendation
    lists spooled during the run are moved in. ``metrics.json`` is written last, with the stage
    ``seconds``, this stage's and the total since ``t_total`` (``time.perf_counter()``)."""
    from .report import write_report

    t_write = time.perf_counter()
    cfg, prepared, rec = result.config, result.prepared, result.recommender
    files: dict[str, Any] = {}
    with atomic_dir(out_dir, kind=kind, replaces=_REPLACES[kind]) as tmp:
        (tmp / "config.toml").write_text(dump_toml(cfg), encoding="utf-8")
        files["config"] = "config.toml"
        for name, path in spool.items():
            os.replace(path, tmp / name)
            files["recommendations_csv" if name.endswith(".csv") else "recommendations"] = name
        for name, model in result.models.items():
            model.save(tmp / "models" / name)
            files[f"model_{name}"] = f"models/{name}"
        if rec is not None:
            try:
                rec.index.save(tmp / "knn")
                files["knn_index"] = "knn"
            except BackendError:
                log.info("the %s k-NN index lives remotely; the recommendations are saved locally", cfg.backend)
        prepared.save_split(tmp / "data")
        if rec is not None and rec.histories is not None:
            rec.histories.save(tmp / "data")
        files["data"] = "data"
        (tmp / "exploration.json").write_text(to_json(result.exploration.to_dict()) + "\n", encoding="utf-8")
        if rec is not None:
            plot_dir = tmp / "plots"
            files["plots"] = {k: f"plots/{Path(v).name}" for k, v in _plots(result, plot_dir).items()}
            (tmp / "samples.json").write_text(to_json(result.samples) + "\n", encoding="utf-8")
            write_report(result, tmp / "report.html", plot_dir=plot_dir)
            files["report"] = "report.html"
        files["metrics"] = "metrics.json"  # written last, below
        run_info = {
            "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "run_id": uuid.uuid4().hex[:12],
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "backend": cfg.backend, "objective": cfg.objective,
            "recommender_model": "ranking" if cfg.objective == "ranking" else "classifier", "seed": cfg.seed,
            "n_customers": prepared.n_users, "n_products": prepared.n_items, "k": cfg.knn.k,
            "recsys_version": __version__, "python": platform.python_version(), "files": files,
        }  # fmt: skip
        (tmp / "run.json").write_text(to_json(run_info) + "\n", encoding="utf-8")
        now = time.perf_counter()
        result.metrics["timing"] = {**seconds, "write outputs": round(now - t_write, 3),
                                    "total": round(now - t_total, 3)}  # fmt: skip
        (tmp / "metrics.json").write_text(to_json(result.metrics) + "\n", encoding="utf-8")
    log.info("stage: write outputs ... %.1f s", time.perf_counter() - t_write)
    return files


# ---- the parts on their own: eda, evaluate ----------------------------------------------------
@dataclass
class EdaResult:
    load_report: LoadReport
    exploration: Any
    out_dir: Path
    files: dict[str, Any]


def eda(config: RunConfig | dict | str | os.PathLike | None = None, **overrides: Any) -> EdaResult:
    """Load and explore the configured data; write ``exploration.json`` and the plots into
    ``out`` (default ``recsys-eda``)."""
    from . import plots

    overrides.setdefault("out", "recsys-eda")
    cfg = _resolve(config, overrides)
    out_dir = Path(cfg.out)
    check_replaceable(out_dir, "recsys.eda")
    frame, report, label = load_input(cfg.data, cfg.seed)
    exploration = explore_mod.explore(frame, report)
    with atomic_dir(out_dir, kind="recsys.eda") as tmp:
        paths = plots.plot_exploration(exploration, frame, tmp / "plots", item_label="video")
        doc = {"source": label, "load": report.to_dict(), "exploration": exploration.to_dict()}
        (tmp / "exploration.json").write_text(to_json(doc) + "\n", encoding="utf-8")
    files = {"exploration": "exploration.json", "plots": {k: f"plots/{Path(v).name}" for k, v in paths.items()}}
    return EdaResult(report, exploration, out_dir, files)


def evaluate_saved(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Re-evaluate a saved run's models on its saved test split: rating metrics for the
    regressor and classifier, ranking metrics for the recommending model, and ``warnings``
    (:func:`metric_warnings`). A damaged run raises :class:`~recsys.errors.ModelFormatError`
    naming the file."""
    saved = SavedRun(run_dir)
    cfg, train, test = saved.config, saved.train, saved.test
    # the saved split, without the load and prepare reports a run keeps only in metrics.json
    prepared = PreparedData(ratings=train, train=train, test=test, mappings=saved.mappings,
                            report=None, config=cfg.prepare)  # type: ignore[arg-type]
    plain = prepared.design_matrix("test")

    def design(model: FittedFM) -> Any:  # the test rows as the model was trained to read them
        groups = saved.feature_groups_for(model)
        return plain if groups is None else groups.design(test, training=False).to_csr()

    out: dict[str, Any] = {}
    if "regressor" in saved.model_names:
        reg = saved.model("regressor")
        out["regressor"] = regression_report(test[RATING].to_numpy(), reg.predict(design(reg)), train[RATING].to_numpy(),
                                             items_test=test[ITEM], items_train=train[ITEM])  # fmt: skip
    if "classifier" in saved.model_names:
        clf = saved.model("classifier")
        y, y_train = (prepared.labels(part, "classification") for part in ("test", "train"))
        out["classifier"] = classification_report(y, clf.predict_score(design(clf)), y_train)
    rec = saved.recommender()
    lists, _ = rec.top_lists(np.arange(rec.n_users), cfg.knn.k,
                             exclude_seen=cfg.recommend.exclude_seen)
    out["ranking"] = _ranking_metrics(rec, prepared, lists, cfg, saved.info["objective"])[0]
    out["warnings"] = metric_warnings(out, n_items=prepared.n_items)
    return out
