"""Benchmark rating quality: our FM (SGD, MCMC, MCMC + feature groups) against Surprise and myFM.

Usage::

    python benchmarks/bench_quality.py                        # everything, ~45 min
    python benchmarks/bench_quality.py --only validation      # the grid the defaults come from, ~19 min
    python benchmarks/bench_quality.py --only validation --grid recent_mean   # [features] recent_mean, ~4 min
    python benchmarks/bench_quality.py --only validation --grid sweeps        # the regressor's sweeps, ~2 min
    python benchmarks/bench_quality.py --only movielens --seeds 5                   # ~7 min
    RECSYS_CACHE_DIR=/work/cache python benchmarks/bench_quality.py --only full --full-groups   # ~21 min
    python benchmarks/bench_quality.py --only movielens --rows mcmc,classifier_mcmc # re-run some rows

Each part runs in a fresh Python process (this script re-invoked with a hidden ``--stage``
argument, helpers from ``bench_fm.py``); the parent samples its RSS. Results are merged into
``benchmarks/results/bench_quality.json`` part by part.

Data: ``ml-latest-small`` (``--data``) loaded as ``recsys run --data`` does
(:func:`recsys.data.loaders.load_ratings`) and prepared with ``min_customer_ratings = 5,
min_product_ratings = 5``; the ``full`` preset with the lab's 18/95 filter. Both leave-last-out:
each customer's latest rating is the test row. Every model trains on the same training rows
and predicts the same test rows.

Parts
-----
validation  The grid the MCMC defaults were chosen on, never touching the test rows: validation
            folds carved from the training rows (``bench_fm.validation_folds``: fold f holds out
            each customer's latest training rating after removing their f-1 latest; fits on what
            is before): ``--folds`` on ml-latest-small, one on full. Regressor RMSE and classifier
            accuracy / AUC / log loss for each candidate (initial spread of the factors, factors,
            burn-in + kept sweeps, saved samples, groups), with SGD (lab), SVD and logistic
            regression on the same folds.
movielens   Test figures on ml-latest-small, ``--seeds`` seeds each (the split is fixed; a seed
            changes initialisation and sampling):
            regressor -- ours: SGD with the lab's settings (``RunConfig().regressor``), the same
            at the MCMC's number of factors on the default design (the timing peer "at equal
            factors"), MCMC (``--mcmc``) on the default design (``LOCAL_BEST["features"]``:
            the one-hots and the customer's rating level) and on the plain one-hots
            (``mcmc_plain``), MCMC + feature groups (``--groups``); Surprise ``SVD()``, ``SVDpp()``,
            ``BaselineOnly()`` with their defaults; myFM (``MyFMRegressor``, same factors,
            sweeps, kept samples and groups as ours) when it imports. RMSE, wall and CPU seconds
            of the fit (``time.process_time``: the machine is shared, CPU time is the steadier
            figure).
            classifier (label ``rating >= 5.0`` as the pipeline) -- ours SGD with the lab's
            settings (``RunConfig().classifier``), MCMC probit (default design and plain);
            scikit-learn ``LogisticRegression(max_iter=1000)`` on the same one-hot features (and
            on the default design, ``logreg_default``). Accuracy at 0.5,
            balanced accuracy, AUC, log loss, the majority-class accuracy.
full        The ``full`` preset after the 18/95 filter: the regressor models (SVD++ with
            ``--full-svdpp``) and the classifiers, ``--full-seeds`` seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from bench_data import machine_info, write_json
from bench_fm import RATING_SCALE, mean_std, print_table, rmse, run_child

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_quality.json"
DEFAULT_DATA = "/work/shared/datasets/ml-latest-small/ratings.csv"
#: the recommended MCMC settings (chosen on the validation part)
MCMC_REGRESSOR = {"num_factors": 8, "mcmc_burn_in": 10, "mcmc_samples": 60, "mcmc_saved_samples": 0, "mcmc_init_sigma": 0.3}
MCMC_CLASSIFIER = {"num_factors": 8, "mcmc_burn_in": 20, "mcmc_samples": 100, "mcmc_saved_samples": 16, "mcmc_init_sigma": 0.3}
#: "MCMC + groups": the groups and settings best on both validation sets (with groups the
#: posterior mean alone predicts worse: predictions average every kept sample)
GROUPS = {"recent": 10}
MCMC_GROUPS = {"num_factors": 16, "mcmc_burn_in": 10, "mcmc_samples": 60, "mcmc_saved_samples": 60, "mcmc_init_sigma": 0.3}
#: the best plain settings on both validation sets, beyond the time budget of the defaults
MCMC_REGRESSOR_ALT = {"num_factors": 16, "mcmc_burn_in": 20, "mcmc_samples": 100, "mcmc_saved_samples": 0, "mcmc_init_sigma": 0.3}
MCMC_CLASSIFIER_ALT = {"num_factors": 16, "mcmc_burn_in": 20, "mcmc_samples": 200, "mcmc_saved_samples": 200, "mcmc_init_sigma": 0.3}
FLOOR_RMSE_BELOW_SVD = 0.02
FLOOR_TIME_RATIO = 2.0


# --------------------------------------------------------------------------------------------
# data and models (run inside the child processes)
# --------------------------------------------------------------------------------------------
def prepared(source: str, data_path: str):
    from recsys.data.loaders import load_amazon_reviews, load_ratings
    from recsys.data.prepare import PrepareConfig, prepare
    from recsys.pipeline import builtin_dataset

    if source == "movielens":
        frame, _ = load_ratings(data_path)
        return prepare(frame, PrepareConfig(min_customer_ratings=5, min_product_ratings=5))
    frame, _ = load_amazon_reviews(builtin_dataset(source, 0))
    return prepare(frame, PrepareConfig())


class Split:
    """Training and evaluation rows of one split, with every encoding the models need."""

    def __init__(self, train, test, n_users: int, n_items: int, groups: dict[str, Any] | None):
        import numpy as np

        from recsys.data.prepare import one_hot
        from recsys.feature_groups import FeatureGroups, FeatureGroupsConfig

        self.train, self.test, self.n_users, self.n_items = train, test, n_users, n_items
        self.X = one_hot(train.user, train.item, n_users, n_items)
        self.Xt = one_hot(test.user, test.item, n_users, n_items)
        self.y = train.star_rating.to_numpy(np.float32)
        self.yt = test.star_rating.to_numpy(np.float64)
        self.c, self.ct = (self.y >= 5.0).astype(np.float32), (self.yt >= 5.0).astype(np.float64)
        self.meta = {"n_users": n_users, "n_items": n_items}
        self.groups = None
        if groups:
            fg = FeatureGroups(FeatureGroupsConfig(**groups), train, n_users, n_items)
            self.groups = (fg.design(train, training=True), fg.design(test, training=False))
        # the default design of the local rating models (recsys.config.LOCAL_BEST["features"])
        from recsys.config import LOCAL_BEST

        fg = FeatureGroups(FeatureGroupsConfig(**LOCAL_BEST["features"]), train, n_users, n_items)
        self.default = (fg.design(train, training=True), fg.design(test, training=False))

    def designs(self, which: str, csr: bool = False):
        """(train, test) designs: "plain" one-hot CSR, the "default" or the "groups" GroupedDesign
        (as CSR matrices with ``csr``, for the solvers that take a plain matrix)."""
        pair = {"plain": (self.X, self.Xt), "default": self.default, "groups": self.groups}[which]
        return pair if which == "plain" or not csr else tuple(d.to_csr() for d in pair)


def timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def fit_sgd(s: Split, seed: int, classifier: bool, design: str = "plain", **changes: Any):
    import dataclasses

    from backends.local.fm import train_fm
    from recsys.config import _lab_classifier, _lab_regressor

    base = _lab_classifier() if classifier else _lab_regressor()
    params = dataclasses.replace(base, seed=seed, **changes)
    X, Xt = s.designs(design, csr=True)
    fm, wall, cpu = timed(lambda: train_fm(X, s.c if classifier else s.y, params))
    return (fm.predict_score(Xt) if classifier else fm.predict(Xt)), wall, cpu


def fit_mcmc(s: Split, seed: int, classifier: bool, settings: dict[str, Any], design: str = "default"):
    from backends.base import TrainOptions
    from backends.local.mcmc import train_fm_mcmc
    from recsys.params import FMParams

    kind = "binary_classifier" if classifier else "regressor"
    params = FMParams(predictor_type=kind, solver="mcmc", seed=seed, **settings)
    X, Xt = s.designs(design)
    fm, wall, cpu = timed(lambda: train_fm_mcmc(X, s.c if classifier else s.y, params, options=TrainOptions(metadata=s.meta)))
    Xt = Xt if design == "plain" else Xt.to_csr()
    return (fm.predict_score(Xt) if classifier else fm.predict(Xt)), wall, cpu


def fit_surprise(s: Split, seed: int, name: str):
    import numpy as np
    import pandas as pd
    import surprise

    df = pd.DataFrame({"u": s.train.user.to_numpy(), "i": s.train.item.to_numpy(), "r": s.y.astype(np.float64)})
    trainset = surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=RATING_SCALE)).build_full_trainset()
    algo = {"svd": lambda: surprise.SVD(random_state=seed), "svdpp": lambda: surprise.SVDpp(random_state=seed),
            "baseline": lambda: surprise.BaselineOnly(verbose=False)}[name]()  # fmt: skip
    _, wall, cpu = timed(lambda: algo.fit(trainset))
    pred = np.array([algo.predict(int(u), int(i)).est for u, i in zip(s.test.user, s.test.item, strict=True)])
    return pred, wall, cpu


def _myfm_relations(design):
    from myfm import RelationBlock

    return [RelationBlock(b.index, b.table.astype("float64")) for b in design.relations]


def fit_myfm(s: Split, seed: int, classifier: bool, settings: dict[str, Any], groups: bool = False):
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import myfm
    cls = myfm.MyFMClassifier if classifier else myfm.MyFMRegressor
    model = cls(rank=settings["num_factors"], random_seed=seed)
    n_iter, kept = settings["mcmc_burn_in"] + settings["mcmc_samples"], settings["mcmc_samples"]
    y = s.c if classifier else s.y
    if groups:
        train, test = s.groups
        fit = lambda: model.fit(train.X.astype(np.float64), y, X_rel=_myfm_relations(train), n_iter=n_iter,  # noqa: E731
                                n_kept_samples=kept, grouping=train.groups.tolist())  # fmt: skip
        _, wall, cpu = timed(fit)
        args = (test.X.astype(np.float64),), {"X_rel": _myfm_relations(test)}
    else:
        fit = lambda: model.fit(s.X.astype(np.float64), y, n_iter=n_iter, n_kept_samples=kept,  # noqa: E731
                                group_shapes=[s.n_users, s.n_items])  # fmt: skip
        _, wall, cpu = timed(fit)
        args = (s.Xt.astype(np.float64),), {}
    pred = model.predict_proba(*args[0], **args[1]) if classifier else model.predict(*args[0], **args[1])
    return pred, wall, cpu


def fit_logreg(s: Split, seed: int, design: str = "plain"):
    from sklearn.linear_model import LogisticRegression

    X, Xt = s.designs(design, csr=True)
    model = LogisticRegression(max_iter=1000, random_state=seed)
    _, wall, cpu = timed(lambda: model.fit(X, s.c))
    return model.predict_proba(Xt)[:, 1], wall, cpu


def myfm_available() -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import myfm
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return f"{type(exc).__name__}: {exc}"
    return None if hasattr(myfm, "MyFMRegressor") else "myfm has no MyFMRegressor"


def classifier_metrics(y, p, y_train) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score

    from recsys.evaluation import classification_report

    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    rep = classification_report(y, p, y_train)
    return {"accuracy": rep["accuracy"], "balanced_accuracy": float(balanced_accuracy_score(y, p >= 0.5)),
            "auc": rep["auc"], "log_loss": rep["log_loss"], "majority_accuracy": rep["baseline_accuracy"]}  # fmt: skip


def _record(out: dict, name: str, seed: int, result, metrics: dict[str, float]) -> None:
    _, wall, cpu = result
    out.setdefault(name, []).append({"seed": seed, "wall_s": wall, "cpu_s": cpu, **metrics})


def evaluate(s: Split, p: dict[str, Any], seeds: list[int], *, svdpp: bool) -> dict[str, Any]:
    """Every regressor and classifier on split ``s``, for each seed."""
    mc_r, mc_c, k = p["mcmc_regressor"], p["mcmc_classifier"], p["mcmc_regressor"]["num_factors"]
    mc_g = p["mcmc_groups"]
    have_myfm = p["myfm"] is None
    reg: dict[str, list] = {}
    clf: dict[str, list] = {}
    first = seeds[0]
    for seed in seeds:
        runs = [  # (name, run it?, function, arguments)
            ("sgd_lab", True, fit_sgd, (s, seed, False), {}),
            (f"sgd_lab_k{k}", True, fit_sgd, (s, seed, False), {"num_factors": k, "design": "default"}),
            (f"sgd_lab_k{k}_plain", True, fit_sgd, (s, seed, False), {"num_factors": k}),
            ("mcmc", True, fit_mcmc, (s, seed, False, mc_r), {}),
            ("mcmc_plain", True, fit_mcmc, (s, seed, False, mc_r), {"design": "plain"}),
            ("mcmc_alt", True, fit_mcmc, (s, seed, False, p["mcmc_regressor_alt"]), {"design": "plain"}),
            ("mcmc_groups", s.groups is not None, fit_mcmc, (s, seed, False, mc_g), {"design": "groups"}),
            ("svd", True, fit_surprise, (s, seed, "svd"), {}),
            ("svdpp", svdpp, fit_surprise, (s, seed, "svdpp"), {}),
            ("baseline", seed == first, fit_surprise, (s, seed, "baseline"), {}),
            ("myfm", have_myfm, fit_myfm, (s, seed, False, mc_r), {}),
            ("myfm_groups", have_myfm and s.groups is not None and p["myfm_groups"], fit_myfm, (s, seed, False, mc_g),
             {"groups": True}),
        ]
        for name, run, fn, args, kwargs in runs:
            if run and (p["rows"] is None or name in p["rows"]):
                res = fn(*args, **kwargs)
                _record(reg, name, seed, res, {"rmse": rmse(res[0], s.yt)})
                print(f"  seed {seed} {name}: rmse {reg[name][-1]['rmse']:.4f} ({res[2]:.2f} s CPU)", flush=True)
        cruns = [
            ("sgd_lab", True, fit_sgd, (s, seed, True)),
            ("mcmc", True, fit_mcmc, (s, seed, True, mc_c)),
            ("mcmc_plain", True, fit_mcmc, (s, seed, True, mc_c, "plain")),
            ("mcmc_alt", True, fit_mcmc, (s, seed, True, p["mcmc_classifier_alt"], "plain")),
            ("logreg", seed == first, fit_logreg, (s, seed)),
            ("logreg_default", seed == first, fit_logreg, (s, seed, "default")),
            ("myfm", have_myfm, fit_myfm, (s, seed, True, mc_c)),
        ]
        for name, run, fn, args in cruns:
            if run and (p["rows"] is None or f"classifier_{name}" in p["rows"]):
                res = fn(*args)
                _record(clf, name, seed, res, classifier_metrics(s.ct, res[0], s.c))
                print(f"  seed {seed} classifier {name}: auc {clf[name][-1]['auc']:.4f}", flush=True)
    return {"regressor": reg, "classifier": clf, "test_rows": int(len(s.yt)), "train_rows": int(len(s.y)),
            "n_users": s.n_users, "n_items": s.n_items}  # fmt: skip


def stage_movielens(p: dict[str, Any]) -> dict[str, Any]:
    d = prepared("movielens", p["data"])
    s = Split(d.train, d.test, d.n_users, d.n_items, p["groups"])
    return evaluate(s, p, list(range(p["seeds"])), svdpp=True)


def stage_full(p: dict[str, Any]) -> dict[str, Any]:
    d = prepared("full", p["data"])
    s = Split(d.train, d.test, d.n_users, d.n_items, p["groups"] if p["full_groups"] else None)
    return evaluate(s, p, list(range(p["full_seeds"])), svdpp=p["full_svdpp"])


def stage_validation(p: dict[str, Any]) -> dict[str, Any]:
    """Each candidate on validation folds of the training rows (fold f uses seed f):
    ``--folds`` on ml-latest-small, one on full (each customer's latest training rating)."""
    import numpy as np
    from bench_fm import validation_folds

    out: dict[str, Any] = {}
    for source, n_folds in (("movielens", p["folds"]), ("full", 1)):
        d = prepared(source, p["data"])
        folds = validation_folds(d.train, n_folds)
        splits: dict[str, list[Split]] = {}
        res: dict[str, Any] = {"folds": n_folds, "validation_rows": [len(v) for _, v in folds], "regressor": [], "classifier": []}
        for cand in p["candidates"]:
            if source not in cand.get("datasets", ("movielens", "full")):
                continue
            gkey = json.dumps(cand.get("groups") or {}, sort_keys=True)
            if gkey not in splits:
                splits[gkey] = [Split(fit, val, d.n_users, d.n_items, cand.get("groups")) for fit, val in folds]
            for kind in cand["kinds"]:
                vals, cpu = [], []
                for f, sp in enumerate(splits[gkey]):
                    pred, _, c = fit_mcmc(sp, f, kind == "classifier", cand["settings"], "groups" if cand.get("groups") else "plain")
                    vals.append(classifier_metrics(sp.ct, pred, sp.c) if kind == "classifier" else {"rmse": rmse(pred, sp.yt)})
                    cpu.append(c)
                row = {"settings": cand["settings"], "groups": cand.get("groups") or {}, "cpu_s": float(np.mean(cpu)),
                       **{m: float(np.mean([v[m] for v in vals])) for m in vals[0]}}  # fmt: skip
                res[kind].append(row)
                print(f"  {source} {kind} {row}", flush=True)
        base: dict[str, list] = {}
        if "{}" not in splits:
            splits["{}"] = [Split(fit, val, d.n_users, d.n_items, None) for fit, val in folds]
        for f, sp in enumerate(splits["{}"]):
            base.setdefault("sgd_lab", []).append(rmse(fit_sgd(sp, f, False)[0], sp.yt))
            base.setdefault("svd", []).append(rmse(fit_surprise(sp, f, "svd")[0], sp.yt))
            base.setdefault("classifier_sgd_lab", []).append(classifier_metrics(sp.ct, fit_sgd(sp, f, True)[0], sp.c))
            base.setdefault("classifier_logreg", []).append(classifier_metrics(sp.ct, fit_logreg(sp, f)[0], sp.c))
        res["baselines"] = {
            k: (float(np.mean(v)) if not isinstance(v[0], dict) else {m: float(np.mean([x[m] for x in v])) for m in v[0]})
            for k, v in base.items()
        }  # fmt: skip
        print(f"  {source} baselines {res['baselines']}", flush=True)
        out[source] = res
    return out


STAGES = {"movielens": stage_movielens, "full": stage_full, "validation": stage_validation}


def recent_mean_candidates() -> list[dict[str, Any]]:
    """``--grid recent_mean``: the default rating models without and with the customer's
    current rating level over their last N ratings (``[features] recent_mean``)."""
    return [{"settings": settings, "groups": {"recent_mean": n} if n else {}, "kinds": [kind]}
            for n in (0, 3, 5, 10, 20) for kind, settings in (("regressor", MCMC_REGRESSOR), ("classifier", MCMC_CLASSIFIER))]


def sweeps_candidates() -> list[dict[str, Any]]:
    """``--grid sweeps``: burn-in + kept sweeps of the default regressor (default design: the
    one-hots and ``recent_mean = 3``) around the time budget (MCMC within 2x our SGD at equal
    factors)."""
    return [{"settings": {**MCMC_REGRESSOR, "mcmc_burn_in": burn, "mcmc_samples": kept}, "groups": {"recent_mean": 3},
             "kinds": ["regressor"]} for burn, kept in ((10, 50), (10, 60), (10, 70), (10, 75), (20, 60))]  # fmt: skip


def validation_candidates() -> list[dict[str, Any]]:
    """The grid: regressor init spread x factors x sweeps; each feature group (predictions
    averaged over every kept sample: with groups the posterior mean alone predicts worse);
    classifier init spread x factors x sweeps x saved samples."""
    cands = []
    for k, sigmas in ((4, (0.1, 0.3)), (8, (0.1, 0.3, 0.5)), (16, (0.1, 0.3)), (32, (0.1, 0.3))):
        for sigma in sigmas:
            for burn, kept in ((10, 60), (20, 100)):
                settings = {"num_factors": k, "mcmc_burn_in": burn, "mcmc_samples": kept, "mcmc_saved_samples": 0,
                            "mcmc_init_sigma": sigma}  # fmt: skip
                cands.append({"settings": settings, "kinds": ["regressor"]})
    for groups in ({"implicit": True}, {"recent": 5}, {"recent": 10}, {"time_buckets": 8}, {"implicit": True, "recent": 10}):
        for k in (8, 16):
            settings = {"num_factors": k, "mcmc_burn_in": 10, "mcmc_samples": 60, "mcmc_saved_samples": 60, "mcmc_init_sigma": 0.3}
            cands.append({"settings": settings, "groups": groups, "kinds": ["regressor"]})
    for sigma in (0.1, 0.3):
        for k in (8, 16):
            for kept in (100, 200):
                settings = {"num_factors": k, "mcmc_burn_in": 20, "mcmc_samples": kept, "mcmc_saved_samples": 16,
                            "mcmc_init_sigma": sigma}  # fmt: skip
                cands.append({"settings": settings, "kinds": ["classifier"]})
    for saved in (0, 200):  # how many saved samples the predictions average over
        settings = {"num_factors": 16, "mcmc_burn_in": 20, "mcmc_samples": 200, "mcmc_saved_samples": saved, "mcmc_init_sigma": 0.3}
        cands.append({"settings": settings, "kinds": ["classifier"]})
    return cands


# --------------------------------------------------------------------------------------------
# report (parent)
# --------------------------------------------------------------------------------------------
LABELS = {
    "sgd_lab": "ours, SGD, lab settings (k=64, 25 epochs)",
    "mcmc": "ours, MCMC (defaults)",
    "mcmc_plain": "ours, MCMC (defaults) on the plain one-hots",
    "logreg_default": "scikit-learn LogisticRegression, default design",
    "mcmc_alt": "ours, MCMC, k=16, more sweeps (best plain on validation)",
    "mcmc_groups": "ours, MCMC + feature groups (k=16)",
    "svd": "Surprise SVD()",
    "svdpp": "Surprise SVDpp()",
    "baseline": "Surprise BaselineOnly()",
    "myfm": "myFM (same factors, sweeps, groups)",
    "myfm_groups": "myFM + the same feature groups (k=16)",
    "logreg": "scikit-learn LogisticRegression, one-hot",
}


def _ms(values: list[float], digits: int = 4) -> str:
    m, sd = mean_std(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def regressor_rows(part: dict[str, Any]) -> list[tuple[str, ...]]:
    reg = part["regressor"]
    svd = mean_std([r["rmse"] for r in reg["svd"]])[0]
    rows = []
    for name, runs in reg.items():
        rm = [r["rmse"] for r in runs]
        per_seed = ", ".join(f"{v:.4f}" for v in rm)
        k, _, plain = name.removeprefix("sgd_lab_k").partition("_")
        label = f"ours, SGD, lab settings at k={k}, " + ("plain one-hots" if plain else "default design")
        rows.append((LABELS.get(name, label), _ms(rm),
                     f"{(mean_std(rm)[0] / svd - 1) * 100:+.2f} %", _ms([r["wall_s"] for r in runs], 2),
                     _ms([r["cpu_s"] for r in runs], 2), per_seed))  # fmt: skip
    return rows


def classifier_rows(part: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name, runs in part["classifier"].items():
        rows.append((LABELS.get(name, name), *(_ms([r[m] for r in runs]) for m in ("accuracy", "balanced_accuracy", "auc", "log_loss")),
                     f"{runs[0]['majority_accuracy']:.4f}", _ms([r["cpu_s"] for r in runs], 2)))  # fmt: skip
    return rows


def goals(part: dict[str, Any], k: int) -> list[dict[str, Any]]:
    reg, clf = part["regressor"], part["classifier"]
    m = lambda name, key="rmse", src=reg: mean_std([r[key] for r in src[name]])[0]  # noqa: E731
    out = [{"goal": "MCMC RMSE at least 2 % below Surprise SVD", "value": m("mcmc") / m("svd") - 1,
            "met": m("mcmc") <= (1 - FLOOR_RMSE_BELOW_SVD) * m("svd")}]  # fmt: skip
    for peer, design in ((f"sgd_lab_k{k}", "the same design"), (f"sgd_lab_k{k}_plain", "the plain one-hots")):
        if peer in reg:
            ratios = [a["cpu_s"] / b["cpu_s"] for a, b in zip(reg["mcmc"], reg[peer], strict=True)]
            walls = [a["wall_s"] / b["wall_s"] for a, b in zip(reg["mcmc"], reg[peer], strict=True)]
            out.append({"goal": f"MCMC training time within 2x our SGD at k={k} on {design} (CPU s, per-seed ratio)",
                        "value": mean_std(ratios)[0], "wall_ratio": mean_std(walls)[0],
                        "met": mean_std(ratios)[0] <= FLOOR_TIME_RATIO})  # fmt: skip
    acc, maj = m("mcmc", "accuracy", clf), clf["mcmc"][0]["majority_accuracy"]
    out.append({"goal": "classifier accuracy above the majority class", "value": acc - maj, "met": acc > maj})
    out.append({"goal": "classifier AUC above the logistic regression", "value": m("mcmc", "auc", clf) - m("logreg", "auc", clf),
                "met": m("mcmc", "auc", clf) > m("logreg", "auc", clf)})  # fmt: skip
    return out


def print_part(name: str, part: dict[str, Any], k: int) -> None:
    print(f"\n### {name}: {part['train_rows']:,} training / {part['test_rows']:,} test ratings, "
          f"{part['n_users']:,} customers, {part['n_items']:,} videos\n")  # fmt: skip
    print_table(("regressor", "test RMSE (mean ± std)", "vs SVD", "fit wall s", "fit CPU s", "per seed"), regressor_rows(part))
    print_table(("classifier (5 stars?)", "accuracy", "balanced acc.", "AUC", "log loss", "majority acc.", "fit CPU s"),
                classifier_rows(part))  # fmt: skip
    for g in part["goals"]:
        print(f"- {g['goal']}: {g['value']:+.4f} -> {'met' if g['met'] else 'NOT met'}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="MovieLens ratings.csv (ml-latest-small)")
    parser.add_argument("--only", choices=tuple(STAGES), action="append", help="run only these parts (repeatable)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per model on ml-latest-small")
    parser.add_argument("--full-seeds", type=int, default=3, help="seeds per model on the full preset")
    parser.add_argument("--full-svdpp", action="store_true", help="also run Surprise SVDpp on full (slow)")
    parser.add_argument("--full-groups", action="store_true", help="also run MCMC + groups on full")
    parser.add_argument("--mcmc", type=json.loads, default=MCMC_REGRESSOR, help="regressor MCMC settings (JSON)")
    parser.add_argument("--mcmc-classifier", type=json.loads, default=MCMC_CLASSIFIER, help="classifier MCMC settings (JSON)")
    parser.add_argument("--groups", type=json.loads, default=GROUPS, help="FeatureGroupsConfig for 'MCMC + groups' (JSON)")
    parser.add_argument("--mcmc-groups", type=json.loads, default=MCMC_GROUPS, help="MCMC settings with groups (JSON)")
    parser.add_argument("--folds", type=int, default=3, help="validation folds")
    parser.add_argument("--grid", choices=("all", "recent_mean", "sweeps"), default="all",
                        help="validation candidates: the whole grid, or only [features] recent_mean or the "
                             "regressor's sweeps (saved apart)")
    parser.add_argument("--rows", help="comma-separated model names to (re)run, merged into the saved part "
                        "(classifiers as classifier_<name>); default: all")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--stage-params", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        warnings.filterwarnings("ignore")
        result = STAGES[args.stage](args.stage_params)
        args.stage_out.write_text(json.dumps(result))
        return 0
    import surprise

    script = Path(__file__).resolve()
    res: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    myfm_missing = myfm_available()
    params = {"data": args.data, "seeds": args.seeds, "full_seeds": args.full_seeds, "full_svdpp": args.full_svdpp,
              "full_groups": args.full_groups, "mcmc_regressor": args.mcmc, "mcmc_classifier": args.mcmc_classifier,
              "groups": args.groups, "mcmc_groups": args.mcmc_groups, "myfm": myfm_missing,
              "mcmc_regressor_alt": MCMC_REGRESSOR_ALT, "mcmc_classifier_alt": MCMC_CLASSIFIER_ALT, "myfm_groups": True,
              "rows": args.rows.split(",") if args.rows else None}  # fmt: skip
    res.update({
        "machine": {**machine_info(), "scikit-surprise": surprise.__version__},
        "settings": {"mcmc_regressor": args.mcmc, "mcmc_classifier": args.mcmc_classifier, "groups": args.groups,
                     "mcmc_groups": args.mcmc_groups, "mcmc_regressor_alt": MCMC_REGRESSOR_ALT,
                     "mcmc_classifier_alt": MCMC_CLASSIFIER_ALT},
        "myfm": myfm_missing or "available",
    })  # fmt: skip
    if myfm_missing:
        print(f"myFM not available: {myfm_missing}")
    k = args.mcmc["num_factors"]
    for part in args.only or ("validation", "movielens", "full"):
        print(f"## {part}", flush=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        load = list(os.getloadavg())
        grid = {"recent_mean": recent_mean_candidates, "sweeps": sweeps_candidates}.get(args.grid, validation_candidates)()
        stage_p = {**params, "folds": args.folds, "candidates": grid, "baselines": True}
        out = run_child(script, part, stage_p)
        command = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
        if args.rows and part in res and part != "validation":  # merge the re-run rows into the saved part
            prev = res[part]
            for kind in ("regressor", "classifier"):
                prev[kind].update(out[kind])
            prev.setdefault("reruns", []).append({"rows": args.rows, "command": command, "started": started,
                                                  "loadavg_start": load, "process_wall_s": out.get("process_wall_s")})  # fmt: skip
            out = prev
        else:
            out.update({"started": started, "loadavg_start": load, "command": command})
        if part != "validation":
            out["goals"] = goals(out, k)
            print_part(part, out, k)
        res[part if part != "validation" or args.grid == "all" else f"validation_{args.grid}"] = out
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
