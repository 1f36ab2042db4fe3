"""Benchmark recommendations: ranking quality against implicit, k-NN speed against scikit-learn.

Usage::

    python benchmarks/bench_ranking.py                             # everything, ~1 h
    python benchmarks/bench_ranking.py --only quality --seeds 5
    python benchmarks/bench_ranking.py --only knn --sample 20000 --knn-repeat 3

Every measured stage runs in a fresh Python process (this script re-invoked with a hidden
``--stage`` argument); peak memory is the child's ``VmHWM``, reset just before the measured
call (so it is the whole process's peak *during* the call, including what was already
resident; the resident size before the call is reported next to it).

Parts
-----
quality  Leave-last-out on MovieLens ``ml-latest-small`` (no long-tail filter) and on the
         ``default`` preset (the default 18/95 filter): each customer's latest rating is held
         out and ranked among every video the customer did not rate in training
         (:func:`recsys.ranking.ranks_from_scores`, ties broken by item index), HR/NDCG@10/@100
         and MRR. Models, every one with ``--seeds`` seeds:

         * the lab path: the FM classifier with the lab's settings (``RunConfig().classifier``)
           on ``rating >= positive_threshold`` (5.0, as the pipeline), its vectors and an exact
           FAISS inner-product k-NN with seen items excluded (:class:`recsys.recommend.Recommender`,
           evaluated by the pipeline's own ``_ranking_metrics``);
         * our ranking objective (:func:`recsys.objectives.train_ranking_model`,
           ``RunConfig().ranking`` defaults: FM over [user | item | last 5 items], sampled
           softmax, early stopping on each customer's latest training rating), same path;
         * popularity (training counts; deterministic);
         * implicit's ``AlternatingLeastSquares()`` and ``BayesianPersonalizedRanking()`` with
           their defaults, fitted on the binary (customer x video) training matrix; score
           ``user_factors @ item_factors.T``; the same ranking protocol with seen items masked.
knn      All-customers top-100 with seen items excluded, from the ranking model's vectors
         (inner product, d = 65), on the ``full`` preset after the 18/95 filter (all
         customers) and without the filter (2,000,000 customers x 159,738 videos: a fixed
         random sample of ``--sample`` customers for every method, extrapolated, plus one
         65,536-customer chunk of ``Recommender.recommendations``). Methods:

         * ours: ``Recommender.recommend(users, 100)`` over a ``FaissIndex`` (``faiss.Flat``,
           ``INNER_PRODUCT``), i.e. ``KNNIndex.search(..., exclude=seen)``: customers grouped
           by how many videos they rated (rounded up to a power of two), each group searched
           ``100 + its largest seen count + 1`` deep with FAISS, seen videos dropped (the depth
           column shows ``100 + max seen``, the deepest any method needs without exclusion in
           the search);
         * scikit-learn ``NearestNeighbors(algorithm="brute")``: it has no inner-product
           metric, so (a) ``metric="euclidean"`` on the MIPS->NN reduction (items
           ``[v, sqrt(M^2 - |v|^2)]``, queries ``[u, 0]``: the same top-k as the inner
           product) and (b) ``metric="cosine"`` on the same vectors (a different ranking;
           timed for reference); both searched ``100 + max seen`` deep, then seen dropped;
         * numpy: ``U @ I.T`` per block of customers (float32 sgemm), seen set to -inf,
           ``argpartition`` + sort of the top 100;
         * FAISS alone, 100 deep, nothing excluded (the floor under ours).

         Also the machine's sgemm rate (a square float32 ``numpy.matmul``, same threads) and
         the scoring's share of it: FLOPs = 2 * queries * videos * d.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import GB, machine_info, peak_bytes, reset_peak, write_json
from bench_fm import fmt_ms, load_prepared, mean_std, print_table, run_child

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_ranking.json"
DEFAULT_DATA = "/work/shared/datasets/ml-latest-small/ratings.csv"
FLOOR_KNN_SPEEDUP = 5.0
K = 100
QUALITY_DATASETS = {
    "ml": ("movielens", {"min_customer_ratings": 1, "min_product_ratings": 1}),
    "default": ("default", {}),
}
EVERYONE_DATASETS = {"default": ("default", {}), "full": ("full", {})}
KNN_DATASETS = {
    "full": ("full", {}),
    "full-unfiltered": ("full", {"min_customer_ratings": 1, "min_product_ratings": 1}),
}
METRICS = ("hr@10", "ndcg@10", "hr@100", "ndcg@100", "mrr")


# --------------------------------------------------------------------------------------------
# quality
# --------------------------------------------------------------------------------------------


def _implicit_metrics(model_name: str, data, seen, seed: int) -> dict[str, Any]:
    """Fit implicit's model (defaults) on the binary training matrix; rank metrics + lists."""
    import numpy as np
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    from recsys.ranking import list_metrics, rank_metrics, ranks_from_scores
    from recsys.recommend import popularity

    user_items = seen.astype(np.float32).tocsr()
    model = (AlternatingLeastSquares if model_name == "als" else BayesianPersonalizedRanking)(
        random_state=seed
    )
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):  # what implicit asks for (its check_blas_config warning)
        model.fit(user_items, show_progress=False)
    fit_s = time.perf_counter() - t0
    uf, itf = np.asarray(model.user_factors), np.asarray(model.item_factors)
    test = data.test
    ranks = ranks_from_scores(
        lambda u: uf[u] @ itf.T,
        test["user"].to_numpy(),
        test["item"].to_numpy(),
        data.n_items,
        seen,
    )
    out = rank_metrics(ranks)
    ids, _ = model.recommend(
        np.arange(data.n_users), user_items, N=K, filter_already_liked_items=True  # implicit's API
    )
    out.update(
        list_metrics(
            np.asarray(ids, dtype=np.int64),
            data.n_items,
            popularity(data.train["item"], data.n_items),
        )
    )
    out["fit_s"] = fit_s
    return out


def stage_quality(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from backends import get_backend
    from backends.local.fm import train_fm
    from recsys.config import RunConfig, apply_seed
    from recsys.data.prepare import PrepareConfig
    from recsys.objectives import train_ranking_model
    from recsys.pipeline import _ranking_metrics
    from recsys.recommend import Recommender

    source, prep = QUALITY_DATASETS[p["dataset"]]
    data = load_prepared(source, prep, p["data"])
    backend = get_backend("torch")
    seen = data.seen_items()
    pop = np.bincount(data.train["item"].to_numpy(), minlength=data.n_items).astype(np.float64)
    Xtr = data.design_matrix("train")
    runs: dict[str, list[dict[str, Any]]] = {
        "lab_classifier_knn": [],
        "ranking_objective": [],
        "implicit_als": [],
        "implicit_bpr": [],
    }
    popularity = None
    for seed in range(p["seeds"]):
        cfg = apply_seed(RunConfig(prepare=PrepareConfig(**prep)), seed)
        # the lab path: classifier on rating >= positive_threshold, its vectors, exact k-NN
        t0 = time.perf_counter()
        clf = train_fm(Xtr, data.labels("train", "classification"), cfg.classifier)
        fit_s = time.perf_counter() - t0
        rec = Recommender(
            clf, data.mappings, seen, item_popularity=pop, backend=backend, knn_params=cfg.knn
        )
        lists, _ = rec.recommend(
            np.arange(data.n_users), cfg.knn.k, exclude_seen=True
        )
        m, _ = _ranking_metrics(rec, data, lists, cfg, "classifier")
        runs["lab_classifier_knn"].append({**m, "fit_s": fit_s, "seed": seed})
        if popularity is None:
            popularity = {
                k.removeprefix("popularity_"): v
                for k, v in m.items()
                if k.startswith("popularity_")
            }
        # our ranking objective
        t0 = time.perf_counter()
        ranker, uf = train_ranking_model(backend, data, cfg.ranking)
        fit_s = time.perf_counter() - t0
        rec = Recommender(
            ranker,
            data.mappings,
            seen,
            item_popularity=pop,
            backend=backend,
            knn_params=cfg.knn,
            user_features=uf,
        )
        lists, _ = rec.recommend(
            np.arange(data.n_users), cfg.knn.k, exclude_seen=True
        )
        m, _ = _ranking_metrics(rec, data, lists, cfg, "ranking")
        runs["ranking_objective"].append(
            {
                **m,
                "fit_s": fit_s,
                "seed": seed,
                "best_epoch": ranker.metadata.get("best_epoch"),
                "epochs_run": len(ranker.metadata.get("history", [])),
            }  # fmt: skip
        )
        for name in ("als", "bpr"):
            runs[f"implicit_{name}"].append(
                {**_implicit_metrics(name, data, seen, seed), "seed": seed}
            )
        print(f"    {p['dataset']} seed {seed}: " + ", ".join(f"{k} {v[-1]['hr@10']:.4f}" for k, v in runs.items()),
              file=sys.stderr, flush=True)  # fmt: skip
    runs["popularity"] = [popularity]
    return {
        "dataset": p["dataset"],
        "n_users": data.n_users,
        "n_items": data.n_items,
        "train_rows": len(data.train),
        "test_rows": len(data.test),
        "runs": runs,
        "ranking_config": RunConfig().ranking.to_dict(),
        "classifier_config": RunConfig().classifier.to_dict(),
        "peak": peak_bytes(),
    }


# --------------------------------------------------------------------------------------------
# everyone: every customer's latest rating, by history length, with fold-in
# --------------------------------------------------------------------------------------------


def stage_everyone(p: dict[str, Any]) -> dict[str, Any]:
    """Every customer with >= 2 ratings: the model's customers' test rows, and for the customers
    the long-tail filter drops, their latest rating held out and the rest folded in
    (``recsys.fold_in.evaluate_everyone``, as ``recsys run`` reports it). Ours: the ranking
    objective (``RunConfig().ranking``) with its fold-in; implicit ALS (defaults, one BLAS
    thread) trained on the same rows, with its own ``recalculate_user`` fold-in on the same
    histories; popularity. Same held-out rows for all three."""
    import numpy as np
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from backends import get_backend
    from recsys.config import RunConfig, apply_seed
    from recsys.data.prepare import PrepareConfig
    from recsys.fold_in import evaluate_everyone
    from recsys.objectives import train_ranking_model
    from recsys.recommend import Recommender

    source, prep = EVERYONE_DATASETS[p["dataset"]]
    data = load_prepared(source, prep, p["data"])
    seen = data.seen_items()
    pop = np.bincount(data.train["item"].to_numpy(), minlength=data.n_items).astype(np.float64)
    out: dict[str, Any] = {"dataset": p["dataset"], "n_users": data.n_users, "n_items": data.n_items,
                           "customers_outside_model": int(data.others()["customer_id"].nunique())}  # fmt: skip
    cfg = apply_seed(RunConfig(prepare=PrepareConfig(**prep)), p["seed"])
    t0 = time.perf_counter()
    with threadpool_limits(1):
        ranker, uf = train_ranking_model(get_backend("torch"), data, cfg.ranking)
    out["ours_fit_s"] = time.perf_counter() - t0
    rec = Recommender(ranker, data.mappings, seen, item_popularity=pop, user_features=uf)
    items_t = rec.item_vectors.T

    def ours_fold_in(ranks):
        vectors, _ = rec.fold_in(ranks)
        return lambda rows: vectors[rows] @ items_t

    t0 = time.perf_counter()
    out["ours"] = evaluate_everyone(data, lambda u: rec.user_vectors[u] @ items_t, ours_fold_in, pop, seen=seen)
    out["ours_eval_s"] = time.perf_counter() - t0
    als = AlternatingLeastSquares(random_state=p["seed"])
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        als.fit(seen.astype(np.float32).tocsr(), show_progress=False)
    out["als_fit_s"] = time.perf_counter() - t0
    uf_als, if_als = np.asarray(als.user_factors), np.asarray(als.item_factors)

    def als_fold_in(ranks):
        watched = (ranks > 0).astype(np.float32).tocsr()
        with threadpool_limits(1, "blas"):
            factors = als.recalculate_user(np.arange(watched.shape[0]), watched)
        return lambda rows: factors[rows] @ if_als.T

    out["implicit_als"] = evaluate_everyone(data, lambda u: uf_als[u] @ if_als.T, als_fold_in, pop, seen=seen)
    out["peak"] = peak_bytes()
    return out


def everyone_rows(e: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for bucket in ("all", *e["ours"]["by_history_length"]):
        part = {k: (e[k]["all"] if bucket == "all" else e[k]["by_history_length"][bucket]) for k in ("ours", "implicit_als")}
        n = part["ours"]["test_rows"]
        if not n:
            continue
        for m in ("hr@10", "ndcg@10", "hr@100"):
            rows.append((bucket, f"{n:,}", m, f"{part['ours'][m]:.4f}", f"{part['implicit_als'][m]:.4f}",
                         f"{part['ours']['popularity_' + m]:.4f}"))  # fmt: skip
    return rows


def everyone_goals(e: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for bucket in ("2-4", "5-17"):
        b = {k: e[k]["by_history_length"][bucket] for k in ("ours", "implicit_als")}
        ours, als, pop = b["ours"]["hr@10"], b["implicit_als"]["hr@10"], b["ours"]["popularity_hr@10"]
        out.append({"floor": f"{e['dataset']}: fold-in customers with {bucket} ratings, HR@10 above popularity and ALS",
                    "measured": f"{ours:.4f} vs popularity {pop:.4f}, ALS (recalculate_user) {als:.4f}",
                    "pass": ours > pop and ours > als})  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# k-NN speed
# --------------------------------------------------------------------------------------------


def stage_vectors(p: dict[str, Any]) -> dict[str, Any]:
    """Train the ranking model on a k-NN dataset and save what the k-NN children need."""
    import dataclasses

    import numpy as np
    import scipy.sparse as sp

    from backends import get_backend
    from recsys.config import RunConfig
    from recsys.objectives import train_ranking_model
    from recsys.vectors import fm_vectors

    work = Path(p["workdir"])
    source, prep = KNN_DATASETS[p["dataset"]]
    t0 = time.perf_counter()
    data = load_prepared(source, prep, p["data"])
    prep_s = time.perf_counter() - t0
    cfg = RunConfig().ranking
    note = "RunConfig().ranking defaults"
    if p["epochs"]:
        # the vectors' values do not change the cost of an exact search; one epoch, no early
        # stopping (its per-epoch NDCG over 530k held-out customers x 160k videos is the slow part)
        cfg.fm = dataclasses.replace(cfg.fm, epochs=p["epochs"], early_stopping_patience=None)
        note = f"RunConfig().ranking with epochs={p['epochs']}, no early stopping"
    t0 = time.perf_counter()
    fm, uf = train_ranking_model(get_backend("torch"), data, cfg)
    train_s = time.perf_counter() - t0
    fm.save(work / "model")
    data.mappings.save(work / "mappings")
    seen = data.seen_items()
    sp.save_npz(work / "seen.npz", seen)
    sp.save_npz(work / "user_features.npz", sp.csr_matrix(uf))
    U, items_v = fm_vectors(fm, user_features=uf)
    np.save(work / "U.npy", U)
    np.save(work / "I.npy", items_v)
    rng = np.random.default_rng(0)
    n = data.n_users
    sample = (
        np.sort(rng.choice(n, size=min(p["sample"], n), replace=False))
        if p["sample"]
        else np.arange(n)
    )
    np.save(work / "sample.npy", sample)
    counts = np.diff(seen.indptr)
    chunk = np.arange(min(65536, n))
    return {
        "dataset": p["dataset"],
        "n_users": n,
        "n_items": data.n_items,
        "train_rows": len(data.train),
        "dim": int(U.shape[1]),
        "prepare_s": prep_s,
        "train_s": train_s,
        "model": note,
        "sample": int(len(sample)),
        "seen_max": int(counts.max()),
        "seen_median": float(np.median(counts)),
        "seen_max_in_sample": int(counts[sample].max()),
        "seen_max_in_first_chunk": int(counts[chunk].max()),
        "peak": peak_bytes(),
    }


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _sgemm(n: int = 4096, repeat: int = 3) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return {"n": n, "seconds": times, "gflops": 2 * n**3 / min(times) / 1e9}


def stage_sgemm(p: dict[str, Any]) -> dict[str, Any]:
    """The machine's float32 matmul rate (square, and the scoring's skinny shape)."""
    import numpy as np

    out = {"square": _sgemm(p.get("n", 4096)), "loadavg": os.getloadavg()[0]}
    if p.get("skinny"):
        q, n, d = p["skinny"]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((q, d), dtype=np.float32)
        b = rng.standard_normal((n, d), dtype=np.float32)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b.T
            times.append(time.perf_counter() - t0)
        out["skinny"] = {
            "shape": [q, n, d],
            "seconds": times,
            "gflops": 2 * q * n * d / min(times) / 1e9,
        }
    return out


def _exclude_topk(ids, scores, seen, users, k):
    """Drop seen videos from deeper candidate lists, keep the first k (the library's helper)."""
    from backends.base import drop_excluded

    return drop_excluded(ids, scores.astype("float32"), seen[users], k, float("-inf"))


def stage_knn(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import scipy.sparse as sp

    work = Path(p["workdir"])
    method = p["method"]
    seen = sp.load_npz(work / "seen.npz").tocsr()
    seen.sort_indices()
    users = (
        np.arange(min(65536, seen.shape[0]))
        if p.get("first_chunk")
        else np.load(work / "sample.npy")
    )
    n_items = seen.shape[1]
    margin = int(np.diff(seen.indptr)[users].max(initial=0))
    depth = min(n_items, K + margin)
    info: dict[str, Any] = {
        "method": method,
        "queries": int(len(users)),
        "n_items": n_items,
        "depth": depth,
    }
    if method.startswith("ours"):
        from backends.local.knn import FaissIndex
        from recsys.data.prepare import Mappings
        from recsys.model import FittedFM
        from recsys.params import KNNParams
        from recsys.recommend import Recommender

        fm = FittedFM.load(work / "model")
        mappings = Mappings.load(work / "mappings")
        uf = sp.load_npz(work / "user_features.npz").tocsr()
        t0 = time.perf_counter()
        rec = Recommender(fm, mappings, seen, user_features=uf)
        rec.index = FaissIndex.build(rec.item_vectors, KNNParams())
        info["build_s"] = time.perf_counter() - t0
        info["dim"] = int(rec.item_vectors.shape[1])
        before = _rss()
        reset_peak()
        t0 = time.perf_counter()
        if method == "ours":
            ids, _ = rec.recommend(users, K, exclude_seen=True)
        else:  # ours_customers: the pipeline's DataFrame path (ids, titles, chunks of 65,536)
            frame = rec.recommendations(mappings.customer_ids.to_numpy()[users], k=K)
            ids = None
            info["rows"] = len(frame)
        seconds = time.perf_counter() - t0
    else:
        U = np.load(work / "U.npy")[users]
        I_ = np.load(work / "I.npy")
        info["dim"] = int(I_.shape[1])
        before = _rss()
        reset_peak()
        t0 = time.perf_counter()
        if method == "faiss_k100":
            import faiss

            index = faiss.IndexFlatIP(I_.shape[1])
            index.add(I_)
            _, ids = index.search(np.ascontiguousarray(U), K)
        elif method in ("sklearn_mips_euclidean", "sklearn_cosine"):
            from sklearn.neighbors import NearestNeighbors

            if method == "sklearn_mips_euclidean":
                norms = (I_.astype(np.float64) ** 2).sum(1)
                extra = np.sqrt(np.maximum(norms.max() - norms, 0.0)).astype(np.float32)
                items = np.hstack([I_, extra[:, None]])
                queries = np.hstack([U, np.zeros((len(U), 1), dtype=np.float32)])
                metric = "euclidean"
            else:
                items, queries, metric = I_, U, "cosine"
            nn = NearestNeighbors(n_neighbors=depth, algorithm="brute", metric=metric).fit(items)
            dist, cand = nn.kneighbors(queries)
            ids, _ = _exclude_topk(cand, -dist, seen, users, K)
        elif method == "numpy_matmul":
            block = max(1, (256 << 20) // (4 * n_items))  # ~256 MiB of float32 scores per block
            ids = np.empty((len(users), K), dtype=np.int64)
            for s in range(0, len(users), block):
                u = users[s : s + block]
                scores = U[s : s + block] @ I_.T
                sub = seen[u]
                scores[np.repeat(np.arange(len(u)), np.diff(sub.indptr)), sub.indices] = -np.inf
                part = np.argpartition(-scores, K - 1, axis=1)[:, :K]
                order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
                ids[s : s + block] = np.take_along_axis(part, order, axis=1)
        else:
            raise SystemExit(f"unknown method {method}")
        seconds = time.perf_counter() - t0
        info["dim_searched"] = int(I_.shape[1]) + (1 if method == "sklearn_mips_euclidean" else 0)
    info.update(seconds=seconds, peak=peak_bytes(), rss_before=before, loadavg=os.getloadavg()[0])
    if ids is not None:
        np.save(
            work / f"ids-{method}-{p['dataset']}-{p.get('tag', '')}.npy",
            np.asarray(ids, dtype=np.int64),
        )
    return info


STAGES = {
    "quality": stage_quality,
    "everyone": stage_everyone,
    "vectors": stage_vectors,
    "sgemm": stage_sgemm,
    "knn": stage_knn,
}
KNN_METHODS = (
    "ours",
    "sklearn_mips_euclidean",
    "sklearn_cosine",
    "numpy_matmul",
    "faiss_k100",
)


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------

LABELS = {
    "ranking_objective": "our ranking objective (softmax FM, RunConfig().ranking)",
    "lab_classifier_knn": "lab path: FM classifier (5 stars) + exact k-NN",
    "implicit_als": "implicit ALS (defaults)",
    "implicit_bpr": "implicit BPR (defaults)",
    "popularity": "popularity",
}


def quality_rows(q: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for key in (
        "ranking_objective",
        "lab_classifier_knn",
        "implicit_als",
        "implicit_bpr",
        "popularity",
    ):
        runs = q["runs"][key]
        cells = [
            fmt_ms([r[m] for r in runs]) if len(runs) > 1 else f"{runs[0][m]:.4f}" for m in METRICS
        ]
        cov = statistics.fmean(r["coverage"] for r in runs)
        fit = f"{statistics.median(r['fit_s'] for r in runs):.1f}" if "fit_s" in runs[0] else ""
        rows.append((LABELS[key], *cells, f"{cov:.1%}", fit, str(len(runs))))
    return rows


def quality_goals(q: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    ours = q["runs"]["ranking_objective"]
    for peer in ("implicit_als", "implicit_bpr"):
        for m in ("hr@10", "ndcg@10"):
            a, b = mean_std([r[m] for r in ours]), mean_std([r[m] for r in q["runs"][peer]])
            wins = sum(x[m] > y[m] for x, y in zip(ours, q["runs"][peer], strict=True))
            out.append({"floor": f"{q['dataset']}: ranking objective {m} > {peer}",
                        "measured": f"{a[0]:.4f} ± {a[1]:.4f} vs {b[0]:.4f} ± {b[1]:.4f} (higher in {wins}/{len(ours)} seeds)",
                        "pass": a[0] > b[0]})  # fmt: skip
    return out


def knn_summary(res: dict[str, Any]) -> tuple[list[tuple[str, ...]], list[dict[str, Any]]]:
    import numpy as np

    rows, floors = [], []
    sg = [s["square"]["gflops"] for s in res["sgemm"]]
    peak_gflops = max(sg)
    for ds, block in res["knn"].items():
        vec = block["vectors"]
        work = Path(res["workdir"])
        ours_ids = None
        if (work / f"ids-ours-{ds}-.npy").exists():
            ours_ids = np.load(work / f"ids-ours-{ds}-.npy")
        med = {}
        for method, runs in block["runs"].items():
            secs = [r["seconds"] for r in runs]
            med[method] = statistics.median(secs)
        for method, runs in block["runs"].items():
            r0 = runs[0]
            secs = [r["seconds"] for r in runs]
            q = r0["queries"]
            flops = 2.0 * q * r0["n_items"] * r0.get("dim_searched", r0["dim"])
            gflops = flops / min(secs) / 1e9
            agree = ""
            if (
                ours_ids is not None
                and method not in ("ours", "ours_customers")
                and r0.get("first_chunk") is None
            ):
                path = work / f"ids-{method}-{ds}-.npy"
                if path.exists():
                    other = np.load(path)
                    both = np.concatenate([ours_ids, other], axis=1)
                    both.sort(axis=1)
                    common = (both[:, 1:] == both[:, :-1]).sum(1)
                    agree = f"{common.mean() / K:.1%}"
            extrap = ""
            if q < vec["n_users"]:
                extrap = f"{statistics.median(secs) * vec['n_users'] / q:,.0f} s (x{vec['n_users'] / q:,.1f})"
            rows.append(
                (
                    ds,
                    f"{q:,} x {r0['n_items']:,}",
                    method + (" (first 65,536 customers)" if r0.get("first_chunk") else ""),
                    str(r0["depth"]) if method not in ("faiss_k100", "numpy_matmul") else str(K),
                    " / ".join(f"{s:.2f}" for s in (min(secs), statistics.median(secs))),
                    f"{q / statistics.median(secs):,.0f}",
                    extrap,
                    f"{max(r['peak'] for r in runs) / GB:.2f} ({r0['rss_before'] / GB:.2f})",
                    f"{gflops:.1f} ({gflops / peak_gflops:.0%})",
                    f"{med[m0] / med['ours']:.1f}x"
                    if (m0 := method) != "ours" and "ours" in med and not r0.get("first_chunk")
                    else "",
                    agree,
                )
            )
        for peer in ("sklearn_mips_euclidean", "sklearn_cosine"):
            if peer in med and "ours" in med:
                ratio = med[peer] / med["ours"]
                floors.append({"floor": f"{ds}: ours >= {FLOOR_KNN_SPEEDUP:g}x scikit-learn brute ({peer})",
                               "measured": f"{ratio:.1f}x ({med['ours']:.2f} s vs {med[peer]:.2f} s, median)",
                               "pass": ratio >= FLOOR_KNN_SPEEDUP})  # fmt: skip
    return rows, floors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help="MovieLens ratings.csv (ml-latest-small)"
    )
    parser.add_argument(
        "--only", choices=("quality", "everyone", "knn"), action="append", help="run only these parts"
    )
    parser.add_argument("--everyone-datasets", default="default,full")
    parser.add_argument(
        "--seeds", type=int, default=5, help="seeds per model for the quality tables"
    )
    parser.add_argument("--quality-datasets", default="ml,default")
    parser.add_argument("--knn-datasets", default="full,full-unfiltered")
    parser.add_argument("--methods", default=",".join(KNN_METHODS), help="k-NN methods")
    parser.add_argument(
        "--sample", type=int, default=20000, help="customers timed on full-unfiltered"
    )
    parser.add_argument(
        "--knn-repeat", type=int, default=3, help="interleaved runs of each k-NN method"
    )
    parser.add_argument(
        "--no-chunk", action="store_true", help="skip the 65,536-customer recommendations chunk"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="model/vector files (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--stage-params", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.seeds, args.sample, args.knn_repeat) < 1:
        parser.error("--seeds, --sample and --knn-repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        result = STAGES[args.stage](args.stage_params)
        args.stage_out.write_text(json.dumps(result))
        return 0
    script = Path(__file__).resolve()
    parts = set(args.only or ("quality", "everyone", "knn"))
    from importlib.metadata import version

    import faiss
    import implicit
    import sklearn
    import torch

    res: dict[str, Any] = {
        "machine": {
            **machine_info(),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "implicit": implicit.__version__,
            "scikit-learn": sklearn.__version__,
            "threadpoolctl": version("threadpoolctl"),
            "omp_threads_faiss": faiss.omp_get_max_threads(),
        },  # fmt: skip
        "command": "python benchmarks/bench_ranking.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.startswith("stage")
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": list(os.getloadavg()),
    }
    floors: list[dict[str, Any]] = []
    m = res["machine"]
    if "quality" in parts:
        res["quality"] = {}
        for ds in args.quality_datasets.split(","):
            res["quality"][ds] = run_child(
                script, "quality", {"data": args.data, "dataset": ds, "seeds": args.seeds}
            )
    if "everyone" in parts:
        res["everyone"] = {ds: run_child(script, "everyone", {"data": args.data, "dataset": ds, "seed": 0})
                           for ds in args.everyone_datasets.split(",")}  # fmt: skip
    if "knn" in parts:
        tmp = None
        work = args.workdir or Path(tmp := tempfile.mkdtemp(prefix="recsys-bench-ranking-"))
        work.mkdir(parents=True, exist_ok=True)
        res["workdir"] = str(work)
        res["knn"], res["sgemm"] = {}, []
        try:
            for ds in args.knn_datasets.split(","):
                wd = work / ds
                wd.mkdir(exist_ok=True)
                unfiltered = ds.endswith("unfiltered")
                vec = run_child(script, "vectors", {"data": args.data, "dataset": ds, "workdir": str(wd),
                                                    "epochs": 1 if unfiltered else None,
                                                    "sample": args.sample if unfiltered else None})  # fmt: skip
                res["sgemm"].append(
                    run_child(script, "sgemm", {"skinny": [2048, vec["n_items"], vec["dim"]]})
                )
                runs: dict[str, list[dict[str, Any]]] = {}
                for _rep in range(args.knn_repeat):
                    for method in args.methods.split(","):
                        r = run_child(
                            script, "knn", {"workdir": str(wd), "dataset": ds, "method": method}
                        )
                        runs.setdefault(method, []).append(r)
                if unfiltered and not args.no_chunk:
                    runs["ours_customers"] = [
                        run_child(
                            script,
                            "knn",
                            {
                                "workdir": str(wd),
                                "dataset": ds,
                                "method": "ours_customers",
                                "first_chunk": True,
                                "tag": "chunk",
                            },
                        )
                    ]
                    runs["ours_customers"][0]["first_chunk"] = True
                res["sgemm"].append(run_child(script, "sgemm", {}))
                # agreement is computed from the saved ids; move them next to the results
                for f in wd.glob("ids-*.npy"):
                    shutil.move(str(f), str(work / f.name))
                res["knn"][ds] = {"vectors": vec, "runs": runs}
            rows, kfloors = knn_summary(res)
            res["knn_table"] = rows
            floors += kfloors
        finally:
            if tmp is not None and not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res["loadavg_end"] = list(os.getloadavg())

    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; faiss {m['faiss']}, implicit "
          f"{m['implicit']}, scikit-learn {m['scikit-learn']}, torch {m['torch']}; load average at start "
          f"{res['loadavg_start'][0]:.1f}, end {res['loadavg_end'][0]:.1f}\n")  # fmt: skip
    for ds, q in res.get("quality", {}).items():
        print(f"{ds}: {q['train_rows']:,} train / {q['test_rows']:,} test ratings, {q['n_users']:,} customers x "
              f"{q['n_items']:,} items; mean ± std over {args.seeds} seeds\n")  # fmt: skip
        rows = quality_rows(q)
        q["table"] = rows
        print_table(("model", *METRICS, "coverage@100", "fit s", "seeds"), rows)
        floors += quality_goals(q)
    for ds, e in res.get("everyone", {}).items():
        print(f"\n{ds}: every customer's latest rating ({e['ours']['all']['test_rows']:,} rows; "
              f"{e['customers_outside_model']:,} customers outside the model; held-out video outside the "
              f"catalogue: {e['ours']['held_out_outside_catalogue']:,}); fit: ours {e['ours_fit_s']:.1f} s, "
              f"ALS {e['als_fit_s']:.1f} s (1 thread each)\n")  # fmt: skip
        e["table"] = everyone_rows(e)
        print_table(("history length", "rows", "metric", "ours (fold-in)", "ALS (recalculate_user)", "popularity"), e["table"])
        floors += everyone_goals(e)
    if "knn" in res:
        sg = res["sgemm"]
        print(
            "sgemm (square 4096, float32): "
            + ", ".join(f"{s['square']['gflops']:.1f}" for s in sg)
            + " GFLOP/s"
        )
        for s in sg:
            if "skinny" in s:
                print(
                    f"sgemm of the scoring shape {s['skinny']['shape']}: {s['skinny']['gflops']:.1f} GFLOP/s"
                )
        for ds, block in res["knn"].items():
            v = block["vectors"]
            print(f"{ds}: {v['n_users']:,} customers x {v['n_items']:,} videos, d = {v['dim']}; seen per customer "
                  f"median {v['seen_median']:g}, max {v['seen_max']} ({v['seen_max_in_sample']} in the timed set); "
                  f"model: {v['model']} ({v['train_s']:.0f} s)")  # fmt: skip
        print()
        print_table(("data", "queries x videos", "method", "depth", "seconds min / median", "queries/s",
                     "all customers (extrapolated)", "peak RSS GB (before)", "GFLOP/s (of sgemm peak)",
                     "time / ours", "top-100 agreement with ours"), res["knn_table"])  # fmt: skip
    res["floors"] = floors
    for fl in floors:
        print(f"{'PASS' if fl['pass'] else 'FAIL'}  {fl['floor']}: {fl['measured']}")
    write_json(args.json, res)
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
