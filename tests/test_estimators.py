"""Tests of the scikit-learn style estimators (recsys.estimators).

Expectations come from scikit-learn's own conventions (clone, get/set_params, its estimator
checks), from the explicit one-hot design matrix built here by hand, and from R^2, accuracy
and log loss computed from their formulas.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.utils import estimator_checks

from recsys.errors import ConfigError, DataError, ModelFormatError, NotFittedError
from recsys.estimators import FMClassifier, FMRegressor
from recsys.model import FittedFM

THREADS = 1  # tiny per-batch ops: one torch thread is far faster on a busy 2-core machine
N_USERS, N_ITEMS = 12, 9


def one_hot_by_hand(users, items, n_users=N_USERS, n_items=N_ITEMS) -> sp.csr_matrix:
    X = np.zeros((len(users), n_users + n_items), dtype=np.float32)
    for r, (u, i) in enumerate(zip(users, items, strict=True)):
        X[r, u] = 1.0
        X[r, n_users + i] = 1.0
    return sp.csr_matrix(X)


@pytest.fixture(scope="module")
def pairs():
    """(user, item) pairs covering every user and item, ratings and 0/1 labels with structure."""
    rng = np.random.default_rng(0)
    n = 240
    users = np.r_[np.arange(N_USERS), rng.integers(0, N_USERS, n - N_USERS)]
    items = np.r_[
        np.arange(N_ITEMS),
        np.arange(N_USERS - N_ITEMS) % N_ITEMS,
        rng.integers(0, N_ITEMS, n - N_USERS),
    ]
    bias_u, bias_i = rng.normal(0, 1, N_USERS), rng.normal(0, 1, N_ITEMS)
    rating = (3 + bias_u[users] + bias_i[items] + rng.normal(0, 0.3, n)).astype(np.float32)
    label = (bias_u[users] + bias_i[items] > 0).astype(np.int64)
    return users, items, rating, label


#: small, quick settings shared by every estimator in these tests
SMALL = {"num_factors": 4, "epochs": 5, "mini_batch_size": 32, "bias_lr": 0.1, "linear_lr": 0.05, "factors_lr": 0.02,
         "threads": THREADS}  # fmt: skip


def reg(**kw) -> FMRegressor:
    return FMRegressor(**{**SMALL, **kw})


def clf(**kw) -> FMClassifier:
    return FMClassifier(**{**SMALL, **kw})


# ---------------------------------------------------------------------------------------------
# scikit-learn conventions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [FMRegressor, FMClassifier])
def test_get_params_is_the_signature_and_clone_round_trips(cls):
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    est = cls(
        num_factors=7, epochs=3, optimizer="sgd", clip_gradient=2.5, seed=11, callbacks=[print]
    )
    params = est.get_params()
    assert sorted(params) == sorted(names)
    defaults = cls()
    for name in names:
        if name not in ("num_factors", "epochs", "optimizer", "clip_gradient", "seed", "callbacks"):
            assert params[name] == getattr(defaults, name)
    assert (params["num_factors"], params["epochs"], params["optimizer"], params["clip_gradient"], params["seed"]) == (
        7, 3, "sgd", 2.5, 11,
    )  # fmt: skip
    twin = clone(est)
    assert type(twin) is cls and twin is not est
    assert twin.get_params() == params
    assert est.set_params(num_factors=9, factors_lr=0.5) is est
    assert est.num_factors == 9 and est.factors_lr == 0.5
    assert est.get_params()["num_factors"] == 9
    with pytest.raises(ValueError):
        est.set_params(no_such_parameter=1)


@pytest.mark.parametrize("cls", [FMRegressor, FMClassifier])
def test_init_stores_arguments_unchanged_and_does_not_validate(cls):
    odd = {
        "num_factors": 0,
        "optimizer": "x",
        "epochs": "many",
        "clip_gradient": -1.0,
        "seed": 1.5,
        "callbacks": (),
    }
    est = cls(**odd)  # no validation in __init__
    for name, value in odd.items():
        assert getattr(est, name) is value
    assert not [a for a in vars(est) if a.endswith("_")]  # no learned state before fit


@pytest.mark.parametrize("cls", [FMRegressor, FMClassifier])
@pytest.mark.parametrize(
    "check",
    [
        "check_no_attributes_set_in_init",
        "check_parameters_default_constructible",
        "check_get_params_invariance",
        "check_set_params",
        "check_do_not_raise_errors_in_init_or_set_params",
        "check_estimator_cloneable",
    ],
)
def test_sklearn_estimator_checks(cls, check):
    getattr(estimator_checks, check)(cls.__name__, cls())


def test_clone_of_a_fitted_estimator_is_unfitted(pairs):
    users, items, rating, _ = pairs
    est = reg().fit(pairs=np.c_[users, items], y=rating)
    twin = clone(est)
    with pytest.raises(NotFittedError):
        twin.predict(pairs=np.c_[users, items])


@pytest.mark.parametrize("cls", [FMRegressor, FMClassifier])
def test_unfitted_use_raises_not_fitted_error_naming_fit(cls, tmp_path):
    est = cls()
    X = np.c_[[0, 1], [1, 0]]
    calls = [
        lambda: est.predict(X),
        lambda: est.decision_function(X),
        lambda: est.save(tmp_path / "m"),
    ]
    if cls is FMClassifier:
        calls.append(lambda: est.predict_proba(X))
    for call in calls:
        with pytest.raises(NotFittedError, match=r"fit\(") as exc:
            call()
        assert cls.__name__ in str(exc.value)
    assert not (tmp_path / "m").exists()


def test_fit_returns_self_and_exposes_the_learned_arrays(pairs):
    users, items, rating, _ = pairs
    est = reg()
    assert est.fit(pairs=np.c_[users, items], y=rating) is est
    assert isinstance(est.model_, FittedFM)
    assert est.n_features_in_ == N_USERS + N_ITEMS
    assert est.layout_ == (N_USERS, N_ITEMS)
    assert est.w0_ == est.model_.w0
    np.testing.assert_array_equal(est.w_, est.model_.w)
    np.testing.assert_array_equal(est.V_, est.model_.V)
    assert est.V_.shape == (N_USERS + N_ITEMS, 4)
    assert est.model_.metadata["n_users"] == N_USERS and est.model_.metadata["n_items"] == N_ITEMS


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [reg, clf], ids=["regressor", "classifier"])
def test_pairs_input_equals_the_explicit_one_hot_matrix(pairs, make):
    users, items, rating, label = pairs
    y = rating if make is reg else label
    X = one_hot_by_hand(users, items)
    a = make().fit(X, y)
    b = make().fit(pairs=np.c_[users, items], y=y)
    c = make().fit(pairs=pd.DataFrame({"user": users, "item": items, "other": 0}), y=y)
    for est in (b, c):  # same design -> bit-identical training
        assert est.w0_ == a.w0_ and np.array_equal(est.w_, a.w_) and np.array_equal(est.V_, a.V_)
    ref = a.decision_function(X)
    np.testing.assert_array_equal(b.decision_function(pairs=np.c_[users, items]), ref)
    np.testing.assert_array_equal(
        c.decision_function(pairs=pd.DataFrame({"item": items, "user": users})), ref
    )
    # a pairs-fitted model also takes the matrix
    np.testing.assert_array_equal(b.decision_function(X), ref)
    np.testing.assert_array_equal(b.predict(pairs=np.c_[users, items]), a.predict(X))
    # a two-column integer array given as X is a design matrix, never pairs
    with pytest.raises(DataError, match="X has 2 features"):
        b.predict(np.c_[users, items])
    with pytest.raises(DataError, match="either a design matrix X or"):
        b.predict(X, pairs=np.c_[users, items])
    # dense float design matrices (and a DataFrame without user/item columns) are matrices
    np.testing.assert_array_equal(a.decision_function(X.toarray()), ref)
    np.testing.assert_array_equal(a.decision_function(pd.DataFrame(X.toarray())), ref)


def test_pairs_layout_from_fit_arguments_and_unknown_ids(pairs):
    users, items, rating, _ = pairs
    est = reg(n_users=N_USERS + 3, n_items=N_ITEMS + 2).fit(pairs=np.c_[users, items], y=rating)
    assert est.layout_ == (N_USERS + 3, N_ITEMS + 2)
    assert est.n_features_in_ == N_USERS + N_ITEMS + 5
    ref = est.decision_function(one_hot_by_hand(users, items, N_USERS + 3, N_ITEMS + 2))
    np.testing.assert_array_equal(est.predict(pairs=np.c_[users, items]), ref)
    with pytest.raises(DataError, match="set them in the constructor"):
        est.predict(pairs=np.c_[[N_USERS + 3], [0]])
    with pytest.raises(DataError):
        est.predict(pairs=np.c_[[-1], [0]])
    with pytest.raises(DataError, match="set them in the constructor"):
        reg(n_users=2, n_items=2).fit(pairs=np.c_[users, items], y=rating)
    with pytest.raises(DataError, match="features"):
        est.predict(sp.csr_matrix((2, 5), dtype=np.float32))


def test_classifier_probabilities_and_labels(pairs):
    users, items, _, label = pairs
    X = one_hot_by_hand(users, items)
    est = clf(epochs=10).fit(X, label)
    z = est.decision_function(X)
    proba = est.predict_proba(X)
    assert proba.shape == (len(users), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(proba[:, 1], 1.0 / (1.0 + np.exp(-z)), rtol=1e-12)
    pred = est.predict(X)
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba[:, 1] >= 0.5).astype(int))
    np.testing.assert_array_equal(est.classes_, [0, 1])
    assert 0 < pred.sum() < len(pred)  # it learned something in both directions


def test_classifier_accepts_booleans_and_rejects_other_labels(pairs):
    users, items, _, label = pairs
    X = one_hot_by_hand(users, items)
    a = clf().fit(X, label)
    b = clf().fit(X, label.astype(bool))
    np.testing.assert_array_equal(a.V_, b.V_)
    with pytest.raises(DataError, match="0 or 1"):
        clf().fit(X, label + 1)
    with pytest.raises(DataError, match="0 or 1"):
        clf().fit(X, np.where(label == 1, 1.0, -1.0))


def test_nan_labels_raise_data_error(pairs):
    users, items, rating, _ = pairs
    y = rating.copy()
    y[3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        reg().fit(pairs=np.c_[users, items], y=y)
    with pytest.raises(DataError, match="NaN"):
        reg().fit(pairs=np.c_[users, items], y=rating, eval_set=(np.c_[users, items], y))


def test_score_is_r2_and_accuracy_by_hand(pairs):
    users, items, rating, label = pairs
    X = one_hot_by_hand(users, items)
    r = reg(epochs=10).fit(X, rating)
    p = r.predict(X)
    y = rating.astype(np.float64)
    r2 = 1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r.score(X, rating) == pytest.approx(r2, rel=1e-6)
    c = clf(epochs=10).fit(X, label)
    acc = np.mean(c.predict(X) == label)
    assert c.score(X, label) == pytest.approx(acc, abs=0)


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,cls", [(reg, FMRegressor), (clf, FMClassifier)], ids=["regressor", "classifier"]
)
def test_save_load_round_trip(pairs, tmp_path, make, cls):
    users, items, rating, label = pairs
    y = rating if cls is FMRegressor else label
    P = np.c_[users, items]
    est = make(num_factors=3, seed=5, optimizer="adagrad").fit(pairs=P, y=y)
    est.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m")
    assert type(loaded) is cls
    assert loaded.layout_ == est.layout_
    assert (loaded.n_users, loaded.n_items) == (N_USERS, N_ITEMS)
    np.testing.assert_array_equal(loaded.predict(pairs=P), est.predict(pairs=P))  # pairs still understood
    np.testing.assert_array_equal(
        loaded.decision_function(one_hot_by_hand(users, items)), est.decision_function(pairs=P)
    )
    if cls is FMClassifier:
        np.testing.assert_array_equal(loaded.predict_proba(pairs=P), est.predict_proba(pairs=P))
    for name in (
        "num_factors",
        "seed",
        "optimizer",
        "mini_batch_size",
        "epochs",
        "factors_lr",
        "threads",
    ):
        assert loaded.get_params()[name] == est.get_params()[name]
    other = FMClassifier if cls is FMRegressor else FMRegressor
    with pytest.raises(ModelFormatError, match=cls.__name__):
        other.load(tmp_path / "m")


def test_load_a_plain_fitted_fm_with_one_hot_metadata(tmp_path):
    rng = np.random.default_rng(1)
    fm = FittedFM(
        0.5, rng.normal(size=7), rng.normal(size=(7, 2)), metadata={"n_users": 3, "n_items": 4}
    )
    fm.save(tmp_path / "fm")
    est = FMRegressor.load(tmp_path / "fm")
    assert est.layout_ == (3, 4)
    np.testing.assert_allclose(
        est.predict(pairs=np.c_[[0, 2], [3, 1]]), fm.decision_pairs([0, 2], [3, 1]), rtol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# validation at fit time
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "param,value",
    [
        ("num_factors", 0),
        ("num_factors", 2.5),
        ("optimizer", "x"),
        ("epochs", 0),
        ("mini_batch_size", -1),
        ("factors_lr", -0.1),
        ("clip_gradient", 0.0),
        ("bias_init_method", "zeros"),
        ("early_stopping_patience", 0),
    ],
)
@pytest.mark.parametrize("make", [reg, clf], ids=["regressor", "classifier"])
def test_invalid_hyperparameter_raises_config_error_at_fit(pairs, make, param, value):
    users, items, rating, label = pairs
    est = make(**{param: value})  # fine until fit
    with pytest.raises(ConfigError, match=param):
        est.fit(pairs=np.c_[users, items], y=rating if make is reg else label)
    assert not hasattr(est, "model_")


def test_unknown_backend_raises_config_error(pairs):
    users, items, rating, _ = pairs
    with pytest.raises(ConfigError, match="backend"):
        reg(backend="nope").fit(pairs=np.c_[users, items], y=rating)


# ---------------------------------------------------------------------------------------------
# eval_set and history
# ---------------------------------------------------------------------------------------------
def test_eval_set_history_has_one_entry_per_epoch(pairs):
    users, items, rating, _ = pairs
    X = one_hot_by_hand(users, items)
    X_eval, y_eval = X[:60], rating[:60] + 0.25
    est = reg(epochs=4).fit(X, rating, eval_set=(X_eval, y_eval))
    hist = est.history_
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert all({"train_mse", "eval_mse"} <= set(h) for h in hist)
    mse = float(np.mean((est.predict(X_eval) - y_eval.astype(np.float64)) ** 2))
    assert hist[-1]["eval_mse"] == pytest.approx(mse, rel=1e-5)
    # without an eval set: train loss only
    plain = reg(epochs=3).fit(X, rating)
    assert [sorted(h) for h in plain.history_] == [["epoch", "train_mse"]] * 3


def test_classifier_eval_set_reports_log_loss(pairs):
    users, items, _, label = pairs
    X = one_hot_by_hand(users, items)
    est = clf(epochs=3).fit(X, label, eval_set=(X[:50], label[:50]))
    assert len(est.history_) == 3
    p = est.predict_proba(X[:50])[:, 1]
    y = label[:50]
    logloss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert est.history_[-1]["eval_logloss"] == pytest.approx(logloss, rel=1e-5)


def test_early_stopping_and_callbacks_through_the_estimator(pairs):
    users, items, rating, _ = pairs
    X = one_hot_by_hand(users, items)
    epochs_seen = []
    est = reg(
        epochs=10, callbacks=[lambda info: epochs_seen.append(info.epoch) or info.epoch == 2]
    ).fit(X, rating)
    assert epochs_seen == [1, 2] and len(est.history_) == 2
    with pytest.raises(DataError, match="evaluation set"):
        reg(early_stopping_patience=2).fit(X, rating)
