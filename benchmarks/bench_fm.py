"""Benchmark the FM regressor: accuracy against Surprise's SVD, speed against pytorch-fm.

Usage::

    python benchmarks/bench_fm.py                                  # everything, ~45 min
    python benchmarks/bench_fm.py --only accuracy --seeds 5        # RMSE table only
    python benchmarks/bench_fm.py --only throughput --datasets ml,default
    python benchmarks/bench_fm.py --tuned-config '{"linear_lr": 0.003, ...}'   # skip tuning
    python benchmarks/bench_fm.py --only ranking --ranking-datasets ml,default,full

Every measured stage runs in a fresh Python process (this script re-invoked with a hidden
``--stage`` argument); peak memory is the child's ``VmHWM`` (see ``bench_data.py``, whose
helpers are reused).

Parts
-----
accuracy    MovieLens ``ml-latest-small`` (``--data``), leave-last-out split of
            :func:`recsys.data.prepare.prepare` with no long-tail filter (each user's latest
            rating is the test row). Test RMSE of our FM regressor with the lab's settings
            (``RunConfig().regressor``) and with a configuration tuned *on validation folds
            carved from the training data* (fold 1: each user's latest training rating; folds
            2-3 move that origin back one rating each; the test rows are never used to choose
            anything: see :func:`validation_folds`), against ``surprise.SVD()`` with its defaults
            trained on the same training rows and predicting the same test rows (rating scale
            0.5-5). ``--seeds`` seeds for every model; the naive (training mean) and per-movie
            mean baselines.
throughput  Training ratings/s of our FM (:func:`backends.local.fm.train_fm`) against
            pytorch-fm (PyPI ``torchfm``): ``FeaturesLinear`` + ``FeaturesEmbedding`` +
            ``FactorizationMachine(reduce_sum=True)`` summed into a linear output (its
            ``FactorizationMachineModel`` without the sigmoid), MSE loss, ``torch.optim.Adam``;
            same k (64), batch size (1000), epochs and training rows. pytorch-fm is fed as its
            examples do (``DataLoader`` over a ``Dataset``, ``shuffle=True``) and from
            pre-tensorised index batches (no ``DataLoader``); with one torch thread and with
            torch's default thread count. Ours runs with its fused C training step (the
            default when built) and, as ``ours_pytorch_step``, with ``RECSYS_NATIVE=off``
            (the same update in PyTorch operations). Variants are interleaved and repeated in
            one process.
full        25 epochs, k = 64 (the lab's regressor) on the ``full`` preset after the default
            18/95 long-tail filter, in its own process: training time and peak RSS.
ranking     The ranking FM as ``recsys run`` trains it (:func:`recsys.objectives.
            train_ranking_model` with ``RunConfig().ranking``: [user | video | last 5 videos],
            sampled softmax over 512 shared negatives, k = 64, batch 1024, up to 30 epochs with
            early stopping on each customer's latest training rating), one torch thread, one
            fresh process per run, variants interleaved per seed:

            * ``before``: the code at ``--before-rev`` (the PyTorch loop this change replaced),
              exported with ``git archive`` and imported through ``PYTHONPATH``;
            * ``after``: this tree, native kernel;
            * ``after_pytorch``: this tree with ``RECSYS_NATIVE=off``.

            Rows/s = training rows x epochs run / training seconds (the epoch loop, evaluation
            included). Held-out HR@10 as ``recsys run`` computes it (each customer's latest
            rating ranked among the videos they did not rate, ties by index:
            :func:`recsys.ranking.ranks_from_scores` on the model's k-NN vectors). Peers on the
            same training rows (binary customer x video matrix), one thread each: implicit's
            ``AlternatingLeastSquares()`` and ``BayesianPersonalizedRanking()``, defaults
            otherwise. ``full-unfiltered`` (no long-tail filter: 2 M customers) runs ``after``
            only, with its peak RSS; its HR@10 is on a fixed random sample of
            ``--ranking-sample`` test rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import GB, Peaks, machine_info, peak_bytes, run_watched, write_json

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_fm.json"
DEFAULT_DATA = "/work/shared/datasets/ml-latest-small/ratings.csv"
FLOOR_SPEEDUP = 10.0
FLOOR_RANKING_SPEEDUP = 3.0
RANKING_HR_TOLERANCE = 0.02  # relative
RATING_SCALE = (0.5, 5.0)

#: Candidates for the tuned regressor: changes to the lab's settings (RunConfig().regressor).
#: The first is the lab's own; the epoch count of each is chosen on the validation curve.
TUNE_GRID: list[dict[str, Any]] = (
    [{}]
    + [
        {
            "linear_lr": lin,
            "factors_lr": fac,
            "factors_wd": wd,
            "mini_batch_size": 512,
            "rescale_grad": None,
        }
        for lin in (0.003, 0.01)
        for fac in (0.0003, 0.001)
        for wd in (1e-4, 3e-4, 1e-3)
    ]
    + [
        # the same with the lab's rescale_grad (1/1000) kept
        {"linear_lr": 0.003, "factors_lr": 0.0003, "factors_wd": 1e-4, "mini_batch_size": 512},
    ]
)

THROUGHPUT_DATASETS = {
    # name: (source, PrepareConfig overrides)
    "ml": ("movielens", {"min_customer_ratings": 1, "min_product_ratings": 1}),
    "default": ("default", {}),
    "default-unfiltered": ("default", {"min_customer_ratings": 1, "min_product_ratings": 1}),
    "full-unfiltered": ("full", {"min_customer_ratings": 1, "min_product_ratings": 1}),
}
RANKING_DATASETS = {"ml": THROUGHPUT_DATASETS["ml"], "default": ("default", {}), "full": ("full", {}),
                    "full-unfiltered": THROUGHPUT_DATASETS["full-unfiltered"]}  # fmt: skip
RANKING_VARIANTS = ("before", "after", "after_pytorch")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_prepared(source: str, prepare_overrides: dict[str, Any], data_path: str):
    """PreparedData for ``source`` ("movielens" = ``data_path``, else a built-in preset)."""
    from recsys.data.loaders import load_amazon_reviews, load_movielens
    from recsys.data.prepare import PrepareConfig, prepare
    from recsys.pipeline import builtin_dataset

    if source == "movielens":
        frame, _ = load_movielens(data_path)
    else:
        frame, _ = load_amazon_reviews(builtin_dataset(source, 0))
    return prepare(frame, PrepareConfig(**prepare_overrides))


def movielens(args_data: str):
    return load_prepared(
        "movielens", {"min_customer_ratings": 1, "min_product_ratings": 1}, args_data
    )


def rmse(pred, y) -> float:
    import numpy as np

    return float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - y) ** 2)))


def lab_regressor(**changes: Any):
    from recsys.config import RunConfig

    return dataclasses.replace(RunConfig().regressor, **changes)


def svd_fit_predict(train_users, train_items, train_ratings, test_users, test_items, seed: int):
    """``surprise.SVD()`` (defaults) on the training triples; predictions for the test pairs
    (Surprise clips them to the rating scale)."""
    import numpy as np
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    df = pd.DataFrame(
        {"u": train_users, "i": train_items, "r": np.asarray(train_ratings, dtype=np.float64)}
    )
    trainset = Dataset.load_from_df(df, Reader(rating_scale=RATING_SCALE)).build_full_trainset()
    algo = SVD(random_state=seed)
    t0 = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - t0
    pred = np.array(
        [algo.predict(int(u), int(i)).est for u, i in zip(test_users, test_items, strict=True)]
    )
    return pred, fit_s


# --------------------------------------------------------------------------------------------
# Stages (child processes)
# --------------------------------------------------------------------------------------------


def validation_folds(train, n_folds: int):
    """Rolling-origin validation inside the training rows: fold f holds out each user's latest
    rating of the training data with its f-1 latest ratings already removed (fold 1 = each
    user's latest training rating) and fits on the ratings before it. No test row is used."""
    from recsys.data.prepare import split_leave_last_out

    folds, cur = [], train
    for _ in range(n_folds):
        cur, val, _ = split_leave_last_out(cur)
        folds.append((cur, val))
    return folds


def stage_tune(p: dict[str, Any]) -> dict[str, Any]:
    """Grid over TUNE_GRID on validation folds of the training rows; per-epoch validation RMSE
    from ``train_fm(..., eval_set=validation)``, averaged over the folds (fold f uses seed f)."""
    import numpy as np

    from backends.local.fm import train_fm
    from recsys.data.prepare import one_hot

    data = movielens(p["data"])
    nu, ni = data.n_users, data.n_items
    folds = []
    for fit, val in validation_folds(data.train, p["tune_folds"]):
        folds.append(
            (
                one_hot(fit["user"].to_numpy(), fit["item"].to_numpy(), nu, ni),
                fit["star_rating"].to_numpy(np.float32).copy(),
                one_hot(val["user"].to_numpy(), val["item"].to_numpy(), nu, ni),
                val["star_rating"].to_numpy(np.float32).copy(),
                fit,
                val,
            )
        )
    candidates = []
    for ci, change in enumerate(TUNE_GRID):
        curves = []
        t0 = time.perf_counter()
        for seed, (Xf, yf, Xv, yv, _, _) in enumerate(folds):
            params = lab_regressor(**change, epochs=p["tune_epochs"], seed=seed)
            fm = train_fm(Xf, yf, params, eval_set=(Xv, yv))
            curves.append([math.sqrt(h["eval_mse"]) for h in fm.metadata["history"]])
        mean_curve = np.mean(curves, axis=0)
        best = int(mean_curve.argmin())
        candidates.append(
            {
                "index": ci,
                "changes": change,
                "mean_val_rmse_by_epoch": [round(float(v), 5) for v in mean_curve],
                "best_epochs": best + 1,
                "best_val_rmse": float(mean_curve[best]),
                "best_val_rmse_per_fold": [float(c[best]) for c in curves],
                "val_rmse_at_25": float(mean_curve[24]) if len(mean_curve) >= 25 else None,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"    tune {ci + 1}/{len(TUNE_GRID)} {change}: {mean_curve[best]:.4f} @ {best + 1}",
            file=sys.stderr,
            flush=True,
        )
    svd_val = []
    for seed, (_, yf, _, yv, fit, val) in enumerate(folds):
        pred, _ = svd_fit_predict(fit["user"], fit["item"], yf, val["user"], val["item"], seed)
        svd_val.append(rmse(pred, yv))
    chosen = min(candidates, key=lambda c: c["best_val_rmse"])
    return {
        "folds": [{"fit_rows": len(f[4]), "val_rows": len(f[5])} for f in folds],
        "max_epochs": p["tune_epochs"],
        "candidates": candidates,
        "chosen": {**chosen["changes"], "epochs": chosen["best_epochs"]},
        "chosen_val_rmse": chosen["best_val_rmse"],
        "lab_val_rmse_at_25": candidates[0]["val_rmse_at_25"],
        "svd_val_rmse_per_fold": svd_val,
        "svd_val_rmse": statistics.fmean(svd_val),
        "peak": peak_bytes(),
    }


def stage_accuracy(p: dict[str, Any]) -> dict[str, Any]:
    """Test RMSE per seed, interleaved: SVD, our FM (lab settings), our FM (tuned)."""
    import numpy as np

    from backends.local.fm import train_fm
    from recsys.evaluation import regression_report

    data = movielens(p["data"])
    Xtr, Xte = data.design_matrix("train"), data.design_matrix("test")
    ytr, yte = data.labels("train"), data.labels("test").astype(np.float64)
    tr, te = data.train, data.test
    models = {
        "fm_lab": {},
        "fm_tuned": dict(p["tuned"]),
    }
    runs: dict[str, list[dict[str, Any]]] = {"svd": [], **{m: [] for m in models}}
    baselines = None
    for seed in range(p["seeds"]):
        pred, fit_s = svd_fit_predict(
            tr["user"], tr["item"], tr["star_rating"], te["user"], te["item"], seed
        )
        runs["svd"].append(
            {
                "seed": seed,
                "rmse": rmse(pred, yte),
                "mae": float(np.mean(np.abs(pred - yte))),
                "fit_s": fit_s,
            }
        )
        for name, change in models.items():
            params = lab_regressor(**change, seed=seed)
            t0 = time.perf_counter()
            fm = train_fm(Xtr, ytr, params)
            fit_s = time.perf_counter() - t0
            pred = fm.predict(Xte)
            rep = regression_report(yte, pred, ytr, items_test=te["item"], items_train=tr["item"])
            runs[name].append(
                {
                    "seed": seed,
                    "rmse": rep["test_rmse"],
                    "rmse_clipped": rmse(np.clip(pred, *RATING_SCALE), yte),
                    "mae": rep["test_mae"],
                    "fit_s": fit_s,
                    "params": {
                        k: v
                        for k, v in params.to_dict().items()
                        if k in change or k in ("epochs", "seed")
                    },
                }
            )
            if baselines is None:
                baselines = {
                    k: rep[k]
                    for k in (
                        "naive_rmse",
                        "naive_mae",
                        "item_mean_rmse",
                        "item_mean_mae",
                        "train_mean",
                    )
                }
        print(
            f"    seed {seed}: " + ", ".join(f"{m} {runs[m][-1]['rmse']:.4f}" for m in runs),
            file=sys.stderr,
            flush=True,
        )
    return {
        "n_users": data.n_users,
        "n_items": data.n_items,
        "train_rows": len(tr),
        "test_rows": len(te),
        "runs": runs,
        "baselines": baselines,
        "configs": {k: v for k, v in models.items()},
        "lab_params": lab_regressor().to_dict(),
        "peak": peak_bytes(),
    }


def _torchfm_model(n_users: int, n_items: int, k: int, sparse: bool = False):
    import numpy as np
    import torch

    if not hasattr(np, "long"):
        np.long = np.int64  # torchfm 0.7 uses the alias numpy 2 removed (np.long)
    from torchfm.layer import FactorizationMachine, FeaturesEmbedding, FeaturesLinear

    class TorchFM(torch.nn.Module):
        """torchfm's FactorizationMachineModel with a linear (not sigmoid) output."""

        def __init__(self) -> None:
            super().__init__()
            field_dims = [n_users, n_items]
            self.embedding = FeaturesEmbedding(field_dims, k)
            self.linear = FeaturesLinear(field_dims)
            self.fm = FactorizationMachine(reduce_sum=True)

        def forward(self, x):
            return (self.linear(x) + self.fm(self.embedding(x))).squeeze(1)

    model = TorchFM()
    if sparse:
        model.embedding.embedding.sparse = True
        model.linear.fc.sparse = True
    return model


def stage_throughput(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from backends.local import _kernel
    from backends.local.fm import train_fm

    source, prep = THROUGHPUT_DATASETS[p["dataset"]]
    data = load_prepared(source, prep, p["data"])
    X, y = data.design_matrix("train"), data.labels("train")
    fields = np.stack(
        [data.train["user"].to_numpy(np.int64), data.train["item"].to_numpy(np.int64)], axis=1
    )
    n, nu, ni = len(y), data.n_users, data.n_items
    k, bs, epochs = 64, 1000, p["epochs"]
    partial = p.get("partial_batches")  # pytorch-fm: time only the first N batches of one epoch
    threads = p["threads"]  # 1 or "default"
    default_threads = torch.get_num_threads()
    torch_threads = 1 if threads == 1 else default_threads
    lr, wd = 0.001, 1e-6  # pytorch-fm's example defaults (Adam)

    class RatingsDataset(torch.utils.data.Dataset):
        """As torchfm's MovieLens datasets: (field indices, target) per row from numpy."""

        def __init__(self, items, targets):
            self.items, self.targets = items, targets

        def __len__(self):
            return self.targets.shape[0]

        def __getitem__(self, index):
            return self.items[index], self.targets[index]

    def ours(n_threads, step="auto"):
        def run(seed):
            params = lab_regressor(epochs=epochs, threads=n_threads, seed=seed)
            os.environ[_kernel.KERNEL_ENV] = step  # "off": the PyTorch training step
            t0 = time.perf_counter()
            fm = train_fm(X, y, params)
            sec = time.perf_counter() - t0
            os.environ[_kernel.KERNEL_ENV] = "auto"
            return {
                "rows": epochs * n,
                "seconds": sec,
                "train_mse": fm.metadata["history"][-1]["train_mse"],
            }

        return run

    def torchfm(mode):
        def run(seed):
            torch.manual_seed(seed)
            torch.set_num_threads(torch_threads)
            model = _torchfm_model(nu, ni, k, sparse=mode == "sparse")
            crit = torch.nn.MSELoss()
            if mode == "sparse":
                dense = [model.linear.bias]
                sparse = [model.embedding.embedding.weight, model.linear.fc.weight]
                opts = [torch.optim.SparseAdam(sparse, lr=lr), torch.optim.Adam(dense, lr=lr)]
            else:
                opts = [torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)]
            rows, total = 0, 0.0
            n_epochs = 1 if partial else epochs
            t0 = time.perf_counter()
            for _ in range(n_epochs):
                if mode == "dataloader":
                    batches = torch.utils.data.DataLoader(
                        RatingsDataset(fields, y), batch_size=bs, shuffle=True
                    )
                else:
                    ft, yt = torch.from_numpy(fields), torch.from_numpy(y)
                    perm = torch.randperm(n)
                    batches = (
                        (ft[perm[s : s + bs]], yt[perm[s : s + bs]]) for s in range(0, n, bs)
                    )
                for b, (f, t) in enumerate(batches):
                    if partial and b >= partial:
                        break
                    out = model(f)
                    loss = crit(out, t.float())
                    model.zero_grad()
                    loss.backward()
                    for o in opts:
                        o.step()
                    rows += len(t)
                    total += float(loss.detach()) * len(t)
            sec = time.perf_counter() - t0
            torch.set_num_threads(default_threads)
            return {"rows": rows, "seconds": sec, "train_mse": total / max(rows, 1)}

        return run

    if _kernel.load() is None:
        raise SystemExit("the native kernels are not built: pip install -e . with a C compiler")
    variants: dict[str, Any] = {"ours": ours(None)}
    if threads != 1 and p.get("ours_default_threads", True):
        variants[f"ours_threads_{default_threads}"] = ours(default_threads)
    variants["ours_pytorch_step"] = ours(None, "off")
    variants["torchfm_dataloader"] = torchfm("dataloader")
    variants["torchfm_tensors"] = torchfm("tensors")
    variants["torchfm_tensors_sparseadam"] = torchfm("sparse")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(p["repeat"]):
        for name, fn in variants.items():
            load = os.getloadavg()[0]
            r = fn(rep)
            r.update(rate=r["rows"] / r["seconds"], loadavg=load)
            results[name].append(r)
            print(
                f"    {p['dataset']} threads={threads} rep {rep}: {name} {r['rate']:,.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )
    return {
        "dataset": p["dataset"],
        "threads": threads,
        "torch_threads_default": default_threads,
        "torch_threads_used_by_torchfm": torch_threads,
        "train_rows": n,
        "n_users": nu,
        "n_items": ni,
        "feature_dim": nu + ni,
        "k": k,
        "batch_size": bs,
        "epochs": epochs,
        "torchfm_partial_batches": partial,
        "results": results,
        "peak": peak_bytes(),
    }


def stage_full(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from backends.local.fm import train_fm

    peaks = Peaks()
    t0 = time.perf_counter()
    data = load_prepared("full", {}, p["data"])
    X, y = data.design_matrix("train"), data.labels("train")
    Xte, yte = data.design_matrix("test"), data.labels("test")
    load_s = time.perf_counter() - t0
    peaks.mark("load_prepare_encode")
    params = lab_regressor(seed=p["seed"])
    t0 = time.perf_counter()
    fm = train_fm(X, y, params)
    train_s = time.perf_counter() - t0
    peaks.mark("train")
    pred = fm.predict(Xte)
    return {
        "load_prepare_encode_s": load_s,
        "train_s": train_s,
        "train_rows": X.shape[0],
        "feature_dim": X.shape[1],
        "epochs": params.epochs,
        "num_factors": params.num_factors,
        "peak_phases": peaks.phases,
        "peak": peaks.overall,
        "test_rmse": rmse(pred, yte),
        "naive_rmse": rmse(np.full(len(yte), y.mean()), yte),
        "params_bytes": int(fm.V.nbytes + fm.w.nbytes),
    }


def _hr_at_10(user_vectors, item_vectors, data, rows=None) -> dict[str, float]:
    """HR@10 / NDCG@10 of the held-out rows (or the subset ``rows``) as ``recsys run`` ranks
    them: every video the customer did not rate in training, ties by lower index."""
    from recsys.ranking import rank_metrics, ranks_from_scores

    test = data.test if rows is None else data.test.iloc[rows]
    ranks = ranks_from_scores(lambda u: user_vectors[u] @ item_vectors.T, test["user"].to_numpy(),
                              test["item"].to_numpy(), data.n_items, data.seen_items())  # fmt: skip
    m = rank_metrics(ranks, cutoffs=(10,))
    return {"hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"], "test_rows": len(test)}


def stage_ranking(p: dict[str, Any]) -> dict[str, Any]:
    """One training of the ranking FM (``RunConfig().ranking``, seed ``p["seed"]``); with
    ``p["peers"]`` also implicit's ALS and BPR on the same rows, one thread each."""
    import numpy as np

    from backends import get_backend
    from recsys.config import RunConfig, apply_seed
    from recsys.data.prepare import PrepareConfig
    from recsys.objectives import train_ranking_model
    from recsys.vectors import fm_vectors

    source, prep = RANKING_DATASETS[p["dataset"]]
    data = load_prepared(source, prep, p["data"])
    rows = None
    if p.get("sample") and len(data.test) > p["sample"]:
        rows = np.sort(np.random.default_rng(0).choice(len(data.test), p["sample"], replace=False))
    cfg = apply_seed(RunConfig(prepare=PrepareConfig(**prep)), p["seed"]).ranking
    peak_before = peak_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    fm, user_features = train_ranking_model(get_backend("torch"), data, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = fm.metadata
    epochs = len(meta["history"])
    out: dict[str, Any] = {
        "dataset": p["dataset"], "variant": p["variant"], "seed": p["seed"], "code": __import__("recsys").__file__,
        "native": os.environ.get("RECSYS_NATIVE", "auto"), "n_users": data.n_users, "n_items": data.n_items,
        "train_rows": int(meta["train_rows"]), "epochs_run": epochs, "best_epoch": meta.get("best_epoch"),
        "train_s": meta["train_seconds"], "call_wall_s": wall, "call_cpu_s": cpu,
        "rows_per_s": meta["train_rows"] * epochs / meta["train_seconds"],
        "peak_before_train": peak_before,
    }  # fmt: skip
    out.update(_hr_at_10(*fm_vectors(fm, user_features=user_features), data, rows))
    if p.get("peers"):
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking
        from threadpoolctl import threadpool_limits

        user_items = data.seen_items().astype(np.float32).tocsr()
        for name, cls in (("als", AlternatingLeastSquares), ("bpr", BayesianPersonalizedRanking)):
            with threadpool_limits(1):
                model = cls(num_threads=1, random_state=p["seed"])
                t0 = time.perf_counter()
                model.fit(user_items, show_progress=False)
                fit_s = time.perf_counter() - t0
            out[name] = {"fit_s": fit_s, "iterations": model.iterations, "factors": model.factors,
                         **_hr_at_10(np.asarray(model.user_factors), np.asarray(model.item_factors), data, rows)}  # fmt: skip
    out["peak"] = peak_bytes()
    return out


STAGES = {
    "tune": stage_tune,
    "accuracy": stage_accuracy,
    "throughput": stage_throughput,
    "full": stage_full,
    "ranking": stage_ranking,
}


# --------------------------------------------------------------------------------------------
# Orchestration (parent)
# --------------------------------------------------------------------------------------------


def run_child(script: Path, stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --stage stage`` in a fresh interpreter with ``params`` (JSON); return its
    JSON result plus the parent's view: wall time, psutil-sampled peak RSS, load average."""

    with tempfile.NamedTemporaryFile(prefix=f"bench-{stage}-", suffix=".json", delete=False) as fh:
        out_path = Path(fh.name)
    cmd = [
        sys.executable,
        str(script),
        "--stage",
        stage,
        "--stage-params",
        json.dumps(params),
        "--stage-out",
        str(out_path),
    ]
    result = run_watched(cmd, out_path, stage)
    print(
        f"  {stage} {params.get('dataset', '')}: {result['process_wall_s']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_ms(values: list[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def accuracy_table(res: dict[str, Any]) -> list[tuple[str, ...]]:
    acc = res["accuracy"]
    runs = acc["runs"]
    tuned = res["tuned_config"]
    rows = []
    labels = {
        "fm_lab": "our FM, lab settings (RunConfig().regressor)",
        "fm_tuned": "our FM, tuned on validation: "
        + ", ".join(f"{k}={v}" for k, v in tuned.items()),
        "svd": "Surprise SVD() defaults (peer)",
    }
    for key in ("fm_tuned", "fm_lab", "svd"):
        r = runs[key]
        clipped = fmt_ms([x["rmse_clipped"] for x in r]) if "rmse_clipped" in r[0] else "(clips)"
        rows.append(
            (
                labels[key],
                fmt_ms([x["rmse"] for x in r]),
                clipped,
                fmt_ms([x["mae"] for x in r]),
                f"{statistics.median(x['fit_s'] for x in r):.1f}",
                str(len(r)),
            )
        )
    b = acc["baselines"]
    rows.append(
        ("naive: training mean", f"{b['naive_rmse']:.4f}", "", f"{b['naive_mae']:.4f}", "", "")
    )
    rows.append(
        (
            "per-movie training mean",
            f"{b['item_mean_rmse']:.4f}",
            "",
            f"{b['item_mean_mae']:.4f}",
            "",
            "",
        )
    )
    return rows


def throughput_rows(res: dict[str, Any]) -> tuple[list[tuple[str, ...]], list[dict[str, Any]]]:
    rows, ratios = [], []
    for tp in res["throughput"]:
        r = tp["results"]
        med = {v: statistics.median(x["rate"] for x in runs) for v, runs in r.items()}
        ours = med["ours"]
        loads = [x["loadavg"] for runs in r.values() for x in runs]
        for v in r:
            ratio = ours / med[v] if not v.startswith("ours") else None
            rows.append(
                (
                    tp["dataset"],
                    f"{tp['train_rows']:,} x {tp['feature_dim']:,}",
                    "1" if tp["threads"] == 1 else f"default ({tp['torch_threads_default']})",
                    v,
                    f"{min(x['rate'] for x in r[v]):,.0f} / {med[v]:,.0f} / {max(x['rate'] for x in r[v]):,.0f}",
                    f"{ratio:.2f}x" if ratio else "",
                    f"{min(loads):.1f}-{max(loads):.1f}",
                )
            )
            if ratio:
                ratios.append(
                    {
                        "dataset": tp["dataset"],
                        "threads": tp["threads"],
                        "peer": v,
                        "ours_rows_per_s": ours,
                        "peer_rows_per_s": med[v],
                        "ratio": ratio,
                        "floor_applies": v in ("torchfm_dataloader", "torchfm_tensors"),
                        "pass": ratio >= FLOOR_SPEEDUP,
                        "partial_epoch": tp["torchfm_partial_batches"],
                    }
                )
    return rows, ratios


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * len(header)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


@contextlib.contextmanager
def _env(**values: str | None):
    """Environment variables for child processes started inside the block."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def export_rev(rev: str) -> Path:
    """``recsys/`` and ``backends/`` at git revision ``rev``, in a temporary directory."""
    repo = Path(__file__).resolve().parent.parent
    blob = subprocess.run(["git", "-C", str(repo), "archive", rev, "recsys", "backends"],
                          check=True, capture_output=True).stdout  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix=f"recsys-{rev}-"))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    return out


def run_ranking(script: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ranking stage: per dataset and seed, the variants interleaved, each in its own process."""
    before_tree = export_rev(args.before_rev)
    env = {
        "before": {"PYTHONPATH": str(before_tree), "RECSYS_NATIVE": None},
        "after": {"PYTHONPATH": None, "RECSYS_NATIVE": "on"},
        "after_pytorch": {"PYTHONPATH": None, "RECSYS_NATIVE": "off"},
    }
    runs = []
    for ds in args.ranking_datasets.split(","):
        unfiltered = ds == "full-unfiltered"
        variants = ("after",) if unfiltered else RANKING_VARIANTS
        for seed in range(1 if unfiltered else args.ranking_seeds):
            for variant in variants:
                params = {"data": args.data, "dataset": ds, "variant": variant, "seed": seed,
                          "peers": variant == "after" and not unfiltered,
                          "sample": args.ranking_sample if unfiltered else None}  # fmt: skip
                with _env(**env[variant]):
                    r = run_child(script, "ranking", params)
                print(f"    {ds} seed {seed} {variant}: {r['epochs_run']} epochs, {r['train_s']:.1f} s, "
                      f"{r['rows_per_s']:,.0f} rows/s, HR@10 {r['hr@10']:.4f}", file=sys.stderr, flush=True)  # fmt: skip
                runs.append(r)
    return runs


def ranking_summary(runs: list[dict[str, Any]]) -> tuple[list[tuple[str, ...]], list[dict[str, Any]]]:
    rows, floors = [], []
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == ds]
        med, hr, cpu = {}, {}, {}
        for variant in RANKING_VARIANTS:
            v = [r for r in mine if r["variant"] == variant]
            if not v:
                continue
            med[variant] = statistics.median(r["rows_per_s"] for r in v)
            hr[variant] = statistics.fmean(r["hr@10"] for r in v)
            cpu[variant] = statistics.median(r["call_cpu_s"] for r in v)
            ratio = (f"{med[variant] / med['before']:.2f}x rows/s ({cpu['before'] / cpu[variant]:.2f}x CPU), "
                     f"HR@10 {100 * (hr[variant] / hr['before'] - 1):+.1f} %") if "before" in med and variant != "before" else ""  # fmt: skip
            rows.append((ds, f"{v[0]['train_rows']:,}", variant, str(len(v)),
                         "/".join(str(r["epochs_run"]) for r in v), f"{statistics.median(r['train_s'] for r in v):.1f}",
                         f"{cpu[variant]:.1f}", f"{med[variant]:,.0f}", fmt_ms([r["hr@10"] for r in v]),
                         f"{max(r['peak'] for r in v) / GB:.2f}", ratio))  # fmt: skip
        after = [r for r in mine if r["variant"] == "after"]
        for peer in ("als", "bpr"):
            p = [r[peer] for r in after if peer in r]
            if p:
                rows.append((ds, f"{after[0]['train_rows']:,}", f"implicit {peer.upper()} ({p[0]['factors']} factors, {p[0]['iterations']} it.)",
                             str(len(p)), "", f"{statistics.median(x['fit_s'] for x in p):.1f}", "", "",
                             fmt_ms([x["hr@10"] for x in p]), "", ""))  # fmt: skip
        if "before" in med and "after" in med:
            speedup = med["after"] / med["before"]
            floors.append({"floor": f"ranking FM rows/s >= {FLOOR_RANKING_SPEEDUP:g}x before ({ds})",
                           "measured": f"{speedup:.2f}x", "pass": speedup >= FLOOR_RANKING_SPEEDUP})  # fmt: skip
            change = hr["after"] / hr["before"] - 1
            floors.append({"floor": f"ranking FM HR@10 within ±{100 * RANKING_HR_TOLERANCE:g} % of before ({ds})",
                           "measured": f"{hr['after']:.4f} vs {hr['before']:.4f} ({100 * change:+.1f} %)",
                           "pass": abs(change) <= RANKING_HR_TOLERANCE})  # fmt: skip
    return rows, floors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help="MovieLens ratings.csv (ml-latest-small)"
    )
    parser.add_argument("--only", choices=("accuracy", "throughput", "full", "ranking"), action="append",
                        help="run only these parts (repeatable); default all")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, help="seeds per model for the test RMSE")
    parser.add_argument("--tune-folds", type=int, default=3,
                        help="rolling validation folds inside the training rows (fold f: seed f)")  # fmt: skip
    parser.add_argument(
        "--tune-epochs", type=int, default=40, help="epochs of each candidate's validation curve"
    )
    parser.add_argument("--tuned-config", type=json.loads, default=None,
                        help="JSON of FMParams changes (incl. epochs) to use instead of tuning")  # fmt: skip
    parser.add_argument("--datasets", default="ml,default,default-unfiltered,full-unfiltered",
                        help=f"throughput datasets, from {', '.join(THROUGHPUT_DATASETS)}")  # fmt: skip
    parser.add_argument(
        "--threads", default="1,default", help="torch thread settings for throughput"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="throughput epochs on the small datasets"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved repeats of each throughput variant"
    )
    parser.add_argument("--partial-batches", type=int, default=40,
                        help="on full-unfiltered, pytorch-fm is timed over this many batches (one epoch of ours)")  # fmt: skip
    parser.add_argument(
        "--full-repeat", type=int, default=1, help="runs of the full-preset training"
    )
    parser.add_argument("--ranking-datasets", default="ml,default,full,full-unfiltered",
                        help=f"ranking datasets, from {', '.join(RANKING_DATASETS)}")  # fmt: skip
    parser.add_argument("--ranking-seeds", type=int, default=3, help="training seeds per ranking variant")
    parser.add_argument("--before-rev", default="ff11328",
                        help="git revision whose ranking FM is the 'before' variant")  # fmt: skip
    parser.add_argument("--ranking-sample", type=int, default=20000,
                        help="full-unfiltered: HR@10 on this many random test rows")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--stage-params", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (
        min(args.seeds, args.tune_folds, args.epochs, args.repeat, args.full_repeat) < 1
        or args.tune_epochs < 25
    ):
        parser.error("counts must be >= 1 and --tune-epochs >= 25")
    bad = set(args.datasets.split(",")) - set(THROUGHPUT_DATASETS)
    bad |= set(args.ranking_datasets.split(",")) - set(RANKING_DATASETS)
    if bad:
        parser.error(f"unknown datasets {sorted(bad)}")
    if args.ranking_seeds < 1:
        parser.error("--ranking-seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        result = STAGES[args.stage](args.stage_params)
        args.stage_out.write_text(json.dumps(result))
        return 0
    script = Path(__file__).resolve()
    parts = set(args.only or ("accuracy", "throughput", "full", "ranking"))
    from importlib.metadata import version

    import surprise
    import torch

    res: dict[str, Any] = {
        "machine": {
            **machine_info(),
            "torch": torch.__version__,
            "torchfm": version("torchfm"),
            "scikit-surprise": surprise.__version__,
        },  # fmt: skip
        "command": "python benchmarks/bench_fm.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.startswith("stage")
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": list(os.getloadavg()),
    }
    if "accuracy" in parts:
        if args.tuned_config is None:
            res["tune"] = run_child(
                script,
                "tune",
                {"data": args.data, "tune_folds": args.tune_folds, "tune_epochs": args.tune_epochs},
            )
            res["tuned_config"] = res["tune"]["chosen"]
        else:
            res["tuned_config"] = args.tuned_config
        res["accuracy"] = run_child(
            script,
            "accuracy",
            {"data": args.data, "seeds": args.seeds, "tuned": res["tuned_config"]},
        )
    if "throughput" in parts:
        res["throughput"] = []
        for ds in args.datasets.split(","):
            for th in args.threads.split(","):
                big = ds.startswith("full")
                res["throughput"].append(
                    run_child(
                        script,
                        "throughput",
                        {
                            "data": args.data,
                            "dataset": ds,
                            "threads": 1 if th == "1" else "default",
                            "epochs": 1 if ds.endswith("unfiltered") else args.epochs,
                            "repeat": 1 if big else args.repeat,
                            "partial_batches": args.partial_batches if big else None,
                            "ours_default_threads": not big,
                        },
                    )  # fmt: skip
                )
    if "full" in parts:
        runs = [
            run_child(script, "full", {"data": args.data, "seed": i})
            for i in range(args.full_repeat)
        ]
        res["full"] = {
            "runs": runs,
            "train_s": [r["train_s"] for r in runs],
            "peak": max(r["peak"] for r in runs),
        }
    if "ranking" in parts:
        res["ranking"] = run_ranking(script, args)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res["loadavg_end"] = list(os.getloadavg())

    m = res["machine"]
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; torch {m['torch']}, "
          f"torchfm {m['torchfm']}, scikit-surprise {m['scikit-surprise']}; load average at start "
          f"{res['loadavg_start'][0]:.1f}\n")  # fmt: skip
    floors = []
    if "accuracy" in res:
        acc = res["accuracy"]
        print(f"ml-latest-small leave-last-out: {acc['train_rows']:,} train / {acc['test_rows']} test ratings, "
              f"{acc['n_users']} users x {acc['n_items']:,} movies; {args.seeds} seeds per model\n")  # fmt: skip
        print_table(("model", "test RMSE (mean ± std)", "RMSE, clipped to 0.5-5", "MAE", "fit s (median)", "seeds"),
                    accuracy_table(res))  # fmt: skip
        runs = acc["runs"]
        svd = statistics.fmean(x["rmse"] for x in runs["svd"])
        for key, label in (("fm_tuned", "tuned"), ("fm_lab", "lab settings")):
            ours = statistics.fmean(x["rmse"] for x in runs[key])
            wins = sum(a["rmse"] < b["rmse"] for a, b in zip(runs[key], runs["svd"], strict=True))
            floors.append({"floor": f"test RMSE of our FM ({label}) < Surprise SVD (mean over seeds)",
                           "measured": f"{ours:.4f} vs {svd:.4f}; lower in {wins}/{len(runs['svd'])} seeds",
                           "pass": ours < svd})  # fmt: skip
        res["accuracy_table"] = accuracy_table(res)
    if "throughput" in res:
        rows, ratios = throughput_rows(res)
        res["throughput_table"], res["throughput_ratios"] = rows, ratios
        print_table(
            (
                "data",
                "train rows x features",
                "threads",
                "variant",
                "rows/s min / median / max",
                "ours / peer",
                "load avg",
            ),
            rows,
        )
        for r in ratios:
            if r["floor_applies"]:
                floors.append({"floor": f"training throughput >= {FLOOR_SPEEDUP:g}x pytorch-fm ({r['peer']}, {r['dataset']}, threads {r['threads']})",
                               "measured": f"{r['ratio']:.2f}x", "pass": r["pass"]})  # fmt: skip
    if "full" in res:
        f = res["full"]
        r = f["runs"][0]
        print(f"full preset (18/95): {r['train_rows']:,} train rows x {r['feature_dim']:,} features, 25 epochs k=64: "
              f"train {', '.join(f'{s:.1f}' for s in f['train_s'])} s, peak RSS {f['peak'] / GB:.2f} GB "
              f"(training phase {max(x['peak_phases']['train'] for x in f['runs']) / GB:.2f} GB), test RMSE "
              f"{r['test_rmse']:.4f} vs naive {r['naive_rmse']:.4f}\n")  # fmt: skip
    if "ranking" in res:
        res["ranking_table"], ranking_floors = ranking_summary(res["ranking"])
        print_table(("data", "train rows", "variant", "runs", "epochs", "train s (median)", "CPU s (median)",
                     "rows/s (median)", "HR@10 (mean ± std)", "peak GB", "vs before"), res["ranking_table"])  # fmt: skip
        floors += ranking_floors
    res["floors"] = floors
    for fl in floors:
        print(f"{'PASS' if fl['pass'] else 'FAIL'}  {fl['floor']}: {fl['measured']}")
    write_json(args.json, res)
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
