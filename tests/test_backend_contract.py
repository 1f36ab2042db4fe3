"""The backend contract (:mod:`backends.base`), written once and run against every backend.

Each test takes the ``backend`` fixture, which is the torch backend and then the SageMaker
backend on a moto server with the fake algorithms of ``tests/sagemaker_fakes.py`` (FM trained by
the torch engine from the RecordIO the backend uploaded, k-NN brute-forced in a batch
transform). The references are independent of both: the O(n^2 k) pairwise FM definition,
numpy ``argsort`` top-k, FM scores sorted in plain Python.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backends import get_backend
from backends.base import TrainOptions
from recsys.data.prepare import Mappings
from recsys.errors import DataError, NotFittedError
from recsys.estimators import FMClassifier, FMRegressor
from recsys.model import FittedFM
from recsys.params import FMParams, KNNParams
from recsys.recommend import Recommender
from tests.reference import fm_brute_force, knn_brute_force

# The moto server and fake-algorithm fixtures (sagemaker_backend, sagemaker_session, ...).
pytest_plugins = ["tests.sagemaker_fakes"]
pytest.register_assert_rewrite("tests.sagemaker_fakes")

BACKENDS = ["torch", "sagemaker"]


def _needs_sagemaker() -> None:
    pytest.importorskip("sagemaker")
    pytest.importorskip("moto")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    if request.param == "torch":
        return get_backend("torch")
    _needs_sagemaker()
    return request.getfixturevalue("sagemaker_backend")


@pytest.fixture
def aws_footprint(backend, request: pytest.FixtureRequest) -> Callable[[], dict[str, list[str]]]:
    """What the backend has put on AWS so far: S3 objects, training jobs, models (empty for torch)."""
    if not backend.remote:
        return lambda: {"objects": [], "training_jobs": [], "models": []}
    from tests.sagemaker_fakes import BUCKET

    session = request.getfixturevalue("sagemaker_session")

    def footprint() -> dict[str, list[str]]:
        listing = session.s3_client.list_objects_v2(Bucket=BUCKET)
        sm = session.sagemaker_client
        return {
            "objects": [o["Key"] for o in listing.get("Contents", [])],
            "training_jobs": [
                j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]
            ],
            "models": [m["ModelName"] for m in sm.list_models()["Models"]],
        }

    return footprint


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def auc(y: np.ndarray, score: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    pos, neg = score[y == 1], score[y == 0]
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
        / (len(pos) * len(neg))
    )


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------
def planted_problem(classifier: bool, n: int = 1600, d: int = 30, seed: int = 0):
    """Sparse rows with real values in [0.5, 1.5] and targets from a planted FM (3 factors):
    ratings with N(0, 0.1) noise, or labels 1 above the median score. Returns
    ``(X_train, y_train, X_test, y_test)``, 1200 / 400 rows."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.15, format="csr", random_state=rng,
                  data_rvs=lambda m: rng.uniform(0.5, 1.5, m)).astype(np.float32)  # fmt: skip
    w0, w, V = 0.5, rng.normal(0, 1, d), rng.normal(0, 0.6, (d, 3))
    raw = fm_brute_force(w0, w, V, X)
    y = (raw > np.median(raw)) if classifier else raw + rng.normal(0, 0.1, n)
    y = y.astype(np.float32)
    return X[:1200], y[:1200], X[1200:], y[1200:]


def fm_params(ptype: str, **overrides) -> FMParams:
    values = dict(num_factors=4, epochs=15, mini_batch_size=50, bias_lr=0.05, linear_lr=0.05,
                  factors_lr=0.05, factors_init_sigma=0.1, predictor_type=ptype)  # fmt: skip
    return FMParams(**{**values, **overrides})


# ---------------------------------------------------------------------------------------------
# fit_fm
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ptype", ["regressor", "binary_classifier"])
def test_fit_fm_returns_a_fitted_fm_that_learns(backend, ptype: str) -> None:
    classifier = ptype == "binary_classifier"
    X, y, X_test, y_test = planted_problem(classifier)
    fm = backend.fit_fm(X, y, fm_params(ptype), options=TrainOptions(metadata={"purpose": "contract"}))

    assert isinstance(fm, FittedFM)
    assert fm.predictor_type == ptype
    assert fm.w.shape == (30,) and fm.V.shape == (30, 4)
    assert fm.metadata["backend"] == backend.name and fm.metadata["purpose"] == "contract"
    assert np.isfinite(fm.w0) and np.isfinite(fm.w).all() and np.isfinite(fm.V).all()
    assert fm.V.any() and fm.w.any()
    # The model computes the FM formula with the arrays it holds.
    np.testing.assert_allclose(
        fm.decision_function(X_test[:60]),
        fm_brute_force(fm.w0, fm.w, fm.V, X_test[:60]),
        rtol=1e-10,
        atol=1e-10,
    )
    # ... and it learned the planted signal.
    raw = fm.decision_function(X_test)
    if classifier:
        proba = fm.predict_score(X_test)
        np.testing.assert_allclose(proba, 1 / (1 + np.exp(-raw)), rtol=1e-12)
        assert auc(y_test, raw) > 0.9
    else:
        mse = float(np.mean((raw - y_test) ** 2))
        naive = float(np.mean((y.mean() - y_test) ** 2))
        assert mse < 0.05 * naive, (mse, naive)


@pytest.mark.parametrize("ptype", ["regressor", "binary_classifier"])
def test_torch_and_sagemaker_train_the_same_arrays(sagemaker_backend, ptype: str) -> None:
    """SageMaker's path (RecordIO upload, hyperparameters as strings, model.tar.gz with MXNet
    params, download, parse) loses nothing: with the torch FM as the fake algorithm and the same
    seed, both backends return identical arrays. The input is deliberately awkward: float64,
    duplicate entries and unsorted column indices in the rows, integer labels."""
    classifier = ptype == "binary_classifier"
    X, y, X_test, y_test = planted_problem(classifier, seed=1)
    coo = X.tocoo()
    half = coo.data / 2  # every entry split in two duplicates, rows stored back to front
    order = np.argsort(-coo.col, kind="stable")
    awkward = sp.csr_matrix(
        (np.concatenate([half[order], half[order]]).astype(np.float64),
         (np.concatenate([coo.row[order]] * 2), np.concatenate([coo.col[order]] * 2))),
        shape=X.shape,
    )  # fmt: skip
    awkward.has_sorted_indices = False
    assert not awkward.has_canonical_format
    labels = y.astype(np.int64) if classifier else y.astype(np.float64)
    params = fm_params(ptype)
    eval_kw = {} if classifier else {"eval_set": (X_test, y_test)}  # the test channel too
    local = get_backend("torch").fit_fm(awkward, labels, params, **eval_kw)
    remote = sagemaker_backend.fit_fm(awkward, labels, params, **eval_kw)
    assert (local.metadata["backend"], remote.metadata["backend"]) == ("torch", "sagemaker")
    assert remote.w0 == local.w0
    np.testing.assert_array_equal(remote.w, local.w)
    np.testing.assert_array_equal(remote.V, local.V)
    assert remote.w.dtype == local.w.dtype == np.float32
    np.testing.assert_array_equal(remote.decision_function(X_test), local.decision_function(X_test))


# ---------------------------------------------------------------------------------------------
# k-NN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "L2", "COSINE"])
def test_knn_search_equals_numpy_top_k(backend, metric: str) -> None:
    rng = np.random.default_rng(5)
    V = rng.normal(size=(30, 6)).astype(np.float32)
    Q = rng.normal(size=(7, 6)).astype(np.float32)
    index = backend.build_knn(V, KNNParams(k=8, index_metric=metric))
    assert (index.ntotal, index.dim, index.metric) == (30, 6, metric)
    ids, scores = index.search(Q, 8)

    want_ids, want_scores = knn_brute_force(V, Q, 8, metric)
    assert scores.shape == ids.shape == (7, 8)
    assert ((ids >= 0) & (ids < 30)).all()
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    steps = np.diff(scores, axis=1)
    assert (steps >= 0).all() if metric == "L2" else (steps <= 0).all()  # best first
    # A shorter search is the head of the longer one.
    head_ids, head_scores = index.search(Q, 3)
    np.testing.assert_array_equal(head_ids, ids[:, :3])


def test_knn_k_larger_than_the_index_and_batch_equals_single(backend) -> None:
    rng = np.random.default_rng(6)
    V = rng.normal(size=(5, 4)).astype(np.float32)
    Q = rng.normal(size=(3, 4)).astype(np.float32)
    index = backend.build_knn(V, KNNParams(k=10))
    ids, scores = index.search(Q, 9)
    assert scores.shape == ids.shape == (3, 5)  # min(k, ntotal)
    assert all(sorted(row) == list(range(5)) for row in ids.tolist())  # everything, once
    want_ids, want_scores = knn_brute_force(V, Q, 5, "INNER_PRODUCT")
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    for r in range(len(Q)):
        one_ids, one_scores = index.search(Q[r : r + 1], 9)
        np.testing.assert_array_equal(one_ids, ids[r : r + 1])
        np.testing.assert_allclose(one_scores, scores[r : r + 1], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the Recommender on each backend's index
# ---------------------------------------------------------------------------------------------
N_USERS, N_ITEMS, N = 12, 15, 5


def mappings(n_users: int, n_items: int) -> Mappings:
    return Mappings(
        pd.Index(np.arange(1000, 1000 + n_users, dtype=np.int64)),
        pd.Index([f"V{i:03d}" for i in range(n_items)]),
        np.array([f"Video {i}" for i in range(n_items)], dtype=object),
    )


def brute_force_recommendations(
    fm: FittedFM, user: int, seen: set[int], n_items: int, N: int
) -> tuple[list[int], list[float]]:
    """The FM score of every unseen item, sorted in plain Python (score down, index up)."""
    scores = fm.decision_pairs(np.full(n_items, user), np.arange(n_items))
    cands = sorted((i for i in range(n_items) if i not in seen), key=lambda i: (-scores[i], i))[:N]
    return cands, [float(scores[i]) for i in cands]


def test_recommender_equals_brute_force_top_k_over_unseen_items(backend) -> None:
    rng = np.random.default_rng(8)
    d = N_USERS + N_ITEMS
    fm = FittedFM(0.3, rng.normal(size=d), rng.normal(size=(d, 4)), "binary_classifier",
                  metadata={"n_users": N_USERS, "n_items": N_ITEMS})  # fmt: skip
    seen_sets = [
        set(rng.choice(N_ITEMS, size=rng.integers(0, 5), replace=False).tolist())
        for _ in range(N_USERS)
    ]
    seen_sets[3] = set(range(N_ITEMS - 2))  # fewer unseen items than N: padded
    rows = [u for u, s in enumerate(seen_sets) for _ in s]
    cols = [i for s in seen_sets for i in s]
    seen = sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(N_USERS, N_ITEMS))
    # the Recommender asks the backend for an index deep enough to skip every seen item
    rec = Recommender(fm, mappings(N_USERS, N_ITEMS), seen, backend=backend, knn_params=KNNParams(k=N))

    users = np.arange(N_USERS)
    ids, scores = rec.recommend(users, N)
    assert ids.shape == scores.shape == (N_USERS, N)
    for u in users:
        want_ids, want_scores = brute_force_recommendations(fm, u, seen_sets[u], N_ITEMS, N)
        got = ids[u][ids[u] >= 0]
        assert got.tolist() == want_ids
        assert not set(got.tolist()) & seen_sets[u]
        np.testing.assert_allclose(scores[u][: len(got)], want_scores, rtol=1e-5, atol=1e-5)
        assert np.isneginf(scores[u][len(got) :]).all() and (ids[u][len(got) :] == -1).all()
    assert (ids[3] >= 0).sum() == 2
    # A scalar user gives the same (1-D, unpadded) answer as its row of the batch.
    for u in (0, 3, 7):
        one_ids, one_scores = rec.recommend(int(u), N)
        keep = ids[u] >= 0
        np.testing.assert_array_equal(one_ids, ids[u][keep])
        np.testing.assert_allclose(one_scores, scores[u][keep], rtol=1e-6)


def test_recommender_with_a_tie_at_the_cut_off(backend) -> None:
    """Items 3-6 score the same for user 0 and the top 4 ends inside that tie group. The local
    index searches deeper; SageMaker's k-NN returns a fixed k (``max_k``). Either way the result
    is a correct top 4: the brute-force score sequence, tied ids ascending."""
    n_users, n_items = 2, 10
    item_scores = [9.0, 8.0, 7.0, 5.0, 5.0, 5.0, 5.0, 2.0, 1.0, 0.0]
    V = np.zeros((n_users + n_items, 2))
    V[0] = V[1] = (1.0, 0.0)
    V[n_users:, 0] = item_scores
    fm = FittedFM(
        0.0, np.zeros(n_users + n_items), V, metadata={"n_users": n_users, "n_items": n_items}
    )
    rec = Recommender(
        fm, mappings(n_users, n_items), None, backend=backend, knn_params=KNNParams(k=4)
    )
    ids, scores = rec.recommend(0, 4)
    assert scores.tolist() == [9.0, 8.0, 7.0, 5.0]
    assert ids[:3].tolist() == [0, 1, 2] and ids[3] in (3, 4, 5, 6)


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ptype", ["regressor", "binary_classifier"])
def test_fitted_fm_round_trips_through_save_and_load(backend, ptype: str, tmp_path: Path) -> None:
    X, y, X_test, _ = planted_problem(ptype == "binary_classifier", seed=2)
    fm = backend.fit_fm(X, y, fm_params(ptype, epochs=2), options=TrainOptions(metadata={"n_users": 20, "n_items": 10}))
    fm.save(tmp_path / "model")
    again = FittedFM.load(tmp_path / "model")
    assert again.predictor_type == fm.predictor_type and again.w0 == fm.w0
    np.testing.assert_array_equal(again.w, fm.w)
    np.testing.assert_array_equal(again.V, fm.V)
    assert again.metadata == fm.metadata and again.metadata["backend"] == backend.name
    np.testing.assert_array_equal(again.predict_score(X_test), fm.predict_score(X_test))
    np.testing.assert_array_equal(again.predict(X_test), fm.predict(X_test))


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def _bad_inputs(case: str):
    X, y, X_test, y_test = planted_problem(False, n=1300)
    ptype, kwargs = "regressor", {}
    if case == "nan in X":
        X = X.copy()
        X.data[7] = np.nan
    elif case == "inf in y":
        y = y.copy()
        y[3] = np.inf
    elif case == "labels not 0/1":
        ptype, y = "binary_classifier", np.where(y > np.median(y), 1.0, 2.0)
    elif case == "X and y lengths differ":
        y = y[:-1]
    elif case == "nan in X_eval":
        X_test = X_test.copy()
        X_test.data[0] = np.nan
        kwargs = {"eval_set": (X_test, y_test)}
    elif case == "X_eval and y_eval lengths differ":
        kwargs = {"eval_set": (X_test, y_test[:-2])}
    return X, y, fm_params(ptype, epochs=1), kwargs


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan in X", "NaN or infinite"),
        ("inf in y", "NaN or infinite"),
        ("labels not 0/1", "labels must be 0 or 1"),
        ("X and y lengths differ", "1200 rows but y has 1199 labels"),
        ("nan in X_eval", "NaN or infinite"),
        ("X_eval and y_eval lengths differ", "100 rows but y has 98 labels"),
    ],
)
def test_bad_training_data_is_a_data_error_before_anything_is_uploaded(
    backend, aws_footprint, case: str, message: str
) -> None:
    X, y, params, kwargs = _bad_inputs(case)
    with pytest.raises(DataError, match=message):
        backend.fit_fm(X, y, params, **kwargs)
    assert aws_footprint() == {"objects": [], "training_jobs": [], "models": []}
    assert backend.plan_requests() == []  # a remote backend: not even planned


@pytest.mark.parametrize("bad", ["nan", "no rows", "zero width"])
def test_bad_vectors_are_a_data_error_before_anything_is_uploaded(
    backend, aws_footprint, bad: str, request: pytest.FixtureRequest
) -> None:
    V = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    V = {
        "nan": np.where(np.eye(6, 3, dtype=bool), np.nan, V),
        "no rows": V[:0],
        "zero width": V[:, :0],
    }[bad]
    with pytest.raises(DataError):
        backend.build_knn(V, KNNParams(k=3))
    assert aws_footprint() == {"objects": [], "training_jobs": [], "models": []}


def test_unfitted_estimators_raise_not_fitted_error(backend, aws_footprint, tmp_path: Path) -> None:
    X = sp.random(4, 6, density=0.5, format="csr", random_state=0, dtype=np.float32)
    regressor, classifier = FMRegressor(backend=backend), FMClassifier(backend=backend)
    for call in (lambda: regressor.predict(X), lambda: regressor.decision_function(X),
                 lambda: classifier.predict(X), lambda: classifier.predict_proba(X),
                 lambda: regressor.save(tmp_path / "m")):  # fmt: skip
        with pytest.raises(NotFittedError, match=r"not fitted yet; call fit\(X, y\)"):
            call()
    assert aws_footprint() == {"objects": [], "training_jobs": [], "models": []}
