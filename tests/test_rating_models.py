"""The rating models in a run: the settings each backend gets by default, ``--lab``, the
``[features]`` groups from training to recommendations and back from a saved run, and the
classifier's balanced accuracy -- checked against hand-computed values and the brute-force FM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.config import LOCAL_BEST, config_from_dict
from recsys.data.schema import ITEM, USER
from recsys.evaluation import classification_report
from recsys.saved_run import SavedRun
from tests.reference import fm_brute_force


def test_defaults_per_backend_and_lab():
    local = config_from_dict({})
    for name in ("regressor", "classifier"):
        fm = getattr(local, name)
        assert {k: getattr(fm, k) for k in LOCAL_BEST[name]} == LOCAL_BEST[name]
    lab = config_from_dict({"lab": True})
    assert (lab.regressor.solver, lab.regressor.num_factors, lab.classifier.num_factors) == ("sgd", 64, 128)
    recommending = config_from_dict({"objective": "classifier"})  # the classifier recommends: the lab's
    assert (recommending.classifier.solver, recommending.classifier.num_factors) == ("sgd", 128)
    own = config_from_dict({"regressor": {"num_factors": 16, "solver": "sgd"}})
    assert (own.regressor.solver, own.regressor.num_factors) == ("sgd", 16)  # a config's own keys win
    assert own.classifier.solver == "mcmc"
    # [features]: the rating level group locally, none with the lab's settings; a set key wins
    assert local.features.recent_mean == LOCAL_BEST["features"]["recent_mean"] > 0
    assert lab.features.recent_mean == 0
    assert recommending.features.recent_mean == 0  # the recommending SGD classifier keeps the lab's design
    assert recommending.regressor.solver == "mcmc"  # ... while the regressor stays Bayesian
    assert config_from_dict({"features": {"recent_mean": 0}}).features.recent_mean == 0
    assert config_from_dict({"lab": True, "features": {"recent_mean": 4}}).features.recent_mean == 4
    relabelled = config_from_dict({**local.to_dict(), "lab": True})  # an effective config keeps its value
    assert relabelled.features.recent_mean == LOCAL_BEST["features"]["recent_mean"]


def test_balanced_accuracy_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=float)
    p = np.array([0.9, 0.2, 0.7, 0.1, 0.6, 0.3, 0.2, 0.4])
    out = classification_report(y, p, y)
    # recall of the positives 2/3, of the negatives 4/5
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert out["baseline_balanced_accuracy"] == 0.5  # the majority class, every time


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("grouped")
    (root / "c.toml").write_text('objective = "classifier"\n[features]\nrecent = 3\nimplicit = true\ntime_buckets = 2\nrecent_mean = 2\n')
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_CACHE_DIR", str(cache_dir))
    try:
        assert main(["run", "--preset", "tiny", "-q", "--config", str(root / "c.toml"), "--out", str(root / "out")]) == 0
    finally:
        mp.undo()
    return root / "out"


def test_feature_groups_reach_the_recommendations_exactly(grouped_run: Path):
    """The classifier trained on [user | item | time | recent_mean | recent | implicit] recommends with user vectors folded from those groups: each list's scores are the
    FM of the full row."""
    m = json.loads((grouped_run / "metrics.json").read_text())
    for name in ("regressor", "classifier"):
        assert m[name]["model"]["feature_groups"] == ["user", "item", "time", "recent_mean", "recent", "implicit"]
    # the regressor samples the grouped design; the recommending classifier is the SGD FM (the
    # same columns as one CSR matrix)
    assert m["regressor"]["model"]["solver"] == "mcmc" and m["classifier"]["model"]["solver"] == "sgd"
    saved = SavedRun(grouped_run)
    fm = saved.model("classifier")
    groups = saved.feature_groups_for(fm)
    part = groups.user_part()
    assert part.shape == (saved.mappings.n_users, fm.feature_dim)
    rec = saved.recommender()
    recs = pd.read_parquet(grouped_run / "recommendations.parquet")
    for cid in saved.mappings.customer_ids[:3]:
        u = int(saved.mappings.user_index([cid])[0])
        mine = recs[recs["customer_id"] == cid].head(5)
        items = saved.mappings.item_index(mine["product_id"].to_numpy())
        rows = part[[u] * len(items)].tolil()
        rows[np.arange(len(items)), saved.mappings.n_users + items] = 1.0
        np.testing.assert_allclose(mine["score"], fm_brute_force(fm.w0, fm.w, fm.V, rows.tocsr()), rtol=1e-4, atol=1e-4)
        ids, _ = rec.recommend(u, 5)
        assert ids.tolist() == items.tolist()


def test_a_saved_grouped_run_evaluates_to_its_own_metrics(grouped_run: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["evaluate", "--run", str(grouped_run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    m = json.loads((grouped_run / "metrics.json").read_text())
    assert again["classifier"]["auc"] == pytest.approx(m["classifier"]["auc"], rel=1e-9)
    assert again["regressor"]["test_rmse"] == pytest.approx(m["regressor"]["test_rmse"], rel=1e-9)
    train = pd.read_parquet(grouped_run / "data" / "train.parquet")
    assert {USER, ITEM} <= set(train.columns)


@pytest.mark.parametrize("solver", ["sgd", "mcmc"])
def test_regressor_predictions_stay_in_the_training_range(solver: str, tmp_path: Path):
    import scipy.sparse as sp

    from backends.local.backend import TorchBackend
    from recsys.model import FittedFM
    from recsys.params import FMParams

    rng = np.random.default_rng(0)
    n_users, n_items, n = 30, 20, 600
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), np.ravel(np.c_[users, n_users + items]))),
                      shape=(n, n_users + n_items))  # fmt: skip
    y = np.clip(np.round(3 + rng.normal(0, 1.5, n)), 1, 5).astype(np.float32)
    params = FMParams(num_factors=4, epochs=5, solver=solver, mcmc_burn_in=2, mcmc_samples=5, seed=0)
    fm = TorchBackend().fit_fm(X, y, params)
    assert fm.metadata["target_range"] == [1.0, 5.0]
    # far-out rows: the raw output leaves [1, 5] and the prediction is the raw output clipped
    X_far = sp.csr_matrix(X[:50].toarray() * 25.0)
    raw = fm.decision_function(X_far)
    assert (raw < 1).any() or (raw > 5).any()
    np.testing.assert_allclose(fm.predict(X_far), np.minimum(np.maximum(raw, 1.0), 5.0), rtol=1e-6)
    np.testing.assert_allclose(fm.predict(X), np.minimum(np.maximum(fm.decision_function(X), 1.0), 5.0), rtol=1e-6)
    # a saved and loaded model keeps the range; a model without one (an older file) is unbounded
    loaded = FittedFM.load(fm.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict(X_far), fm.predict(X_far))
    bare = FittedFM(w0=fm.w0, w=fm.w, V=fm.V)
    np.testing.assert_allclose(bare.predict(X_far), raw, rtol=1e-6)
