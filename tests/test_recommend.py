"""Tests of FM -> k-NN vectors, recent-history features and the Recommender.

References are independent of the code under test: an O(n^2) pairwise FM loop, FM scores
sorted in plain Python, feature matrices written out by hand, and file round trips.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backends.local.knn import FaissIndex
from recsys.data.prepare import Mappings, one_hot
from recsys.data.schema import CUSTOMER, DATE, ITEM, PRODUCT, TITLE, USER
from recsys.errors import BackendError, ConfigError, DataError
from recsys.features import FeatureLayout, design_rows, pair_user_features, user_features
from recsys.model import FittedFM
from recsys.params import KNNParams
from recsys.recommend import RECOMMENDATION_COLUMNS, Recommender, write_recommendations
from recsys.vectors import fm_vectors, model_layout, user_offsets
from tests.reference import BruteIndex, fm_brute_force

GRID = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])

# ---------------------------------------------------------------------------------------------
# references and builders


def fm_pairwise(fm: FittedFM, x: np.ndarray) -> float:
    return float(fm_brute_force(fm.w0, fm.w, fm.V, np.atleast_2d(x))[0])


def make_fm(
    n_users, n_items, k=3, *, seed=0, grid=False, classifier=False, extra=0, metadata=None
) -> FittedFM:
    rng = np.random.default_rng(seed)
    d = n_users + n_items + extra
    if grid:  # halves: every score is exact in float32, so ties are exact too
        V, w = rng.choice(GRID, size=(d, k)), rng.choice(GRID, size=d)
    else:
        V, w = rng.normal(size=(d, k)), rng.normal(size=d)
    meta = (
        {"n_users": n_users, "n_items": n_items, "backend": "test"}
        if metadata is None
        else metadata
    )
    return FittedFM(0.25, w, V, "binary_classifier" if classifier else "regressor", metadata=meta)


def make_mappings(n_users, n_items, none_title=None) -> Mappings:
    customers = pd.Index(np.array([101 + 104 * u for u in range(n_users)], dtype=np.int64))
    products = pd.Index([f"B{i:04d}{chr(65 + i % 26)}" for i in range(n_items)])
    assert list(products) == sorted(products)
    titles = np.array([f"Video {i}" for i in range(n_items)], dtype=object)
    if none_title is not None:
        titles[none_title] = None
    return Mappings(customers, products, titles)


def brute_top(scores, exclude, N):
    """Top-N of a score list over items not in ``exclude``, ties by lower index."""
    cands = [i for i in range(len(scores)) if i not in exclude]
    cands.sort(key=lambda i: (-scores[i], i))
    top = cands[:N]
    return top, [scores[i] for i in top]


def assert_top_with_ties(ids, scores, all_scores, exclude, N):
    """``ids``/``scores`` (one row, -1/-inf padded or trimmed) are a top-N of ``all_scores`` over
    items not in ``exclude``: the score sequence is exactly the brute-force one, every id has
    its score, tied ids are in ascending order, and ids match wherever the tie group fits.

    Which members of a tie group that straddles the cut-off are returned is checked separately
    (see test_ties_at_cutoff_prefer_lower_index)."""
    exp_ids, exp_scores = brute_top(all_scores, exclude, N)
    n = len(exp_ids)
    ids, scores = list(ids), list(scores)
    assert scores[:n] == exp_scores
    assert ids[n:] == [-1] * (len(ids) - n) and all(s == -np.inf for s in scores[n:])
    got = ids[:n]
    assert len(set(got)) == n and not set(got) & set(exclude)
    assert [all_scores[i] for i in got] == exp_scores
    for v in set(exp_scores):
        group = [i for i in got if all_scores[i] == v]
        assert group == sorted(group)
        cands = [i for i in range(len(all_scores)) if i not in exclude and all_scores[i] == v]
        if len(cands) == len(group):
            assert group == cands


# ---------------------------------------------------------------------------------------------
# the one-hot case: a small catalogue with exact ties and a hand-made "seen" matrix

N_USERS, N_ITEMS = 6, 9
SEEN = {0: {0, 3}, 1: set(), 2: {1, 2, 4, 5, 6, 7}, 3: {8}, 4: {0, 1, 2, 3, 4, 5, 6}, 5: set()}


@pytest.fixture(scope="module")
def grid_fm() -> FittedFM:
    fm = make_fm(N_USERS, N_ITEMS, seed=3, grid=True)
    # items 2 and 5 (and 7 and 8) are identical: always tied, lower index first
    for a, b in ((2, 5), (7, 8)):
        fm.V[N_USERS + b] = fm.V[N_USERS + a]
        fm.w[N_USERS + b] = fm.w[N_USERS + a]
    return fm


@pytest.fixture(scope="module")
def seen() -> sp.csr_matrix:
    dense = np.zeros((N_USERS, N_ITEMS), dtype=bool)
    for u, items in SEEN.items():
        dense[u, sorted(items)] = True
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def mappings() -> Mappings:
    return make_mappings(N_USERS, N_ITEMS, none_title=4)


@pytest.fixture(scope="module")
def rec(grid_fm, mappings, seen) -> Recommender:
    return Recommender(grid_fm, mappings, seen)


@pytest.fixture(scope="module")
def fm_scores(grid_fm) -> np.ndarray:
    """(n_users, n_items) FM scores from the pairwise definition."""
    out = np.empty((N_USERS, N_ITEMS))
    for u in range(N_USERS):
        for i in range(N_ITEMS):
            x = np.zeros(grid_fm.feature_dim)
            x[u] = x[N_USERS + i] = 1
            out[u, i] = fm_pairwise(grid_fm, x)
    return out


def test_fixture_has_ties(fm_scores):
    assert all(fm_scores[u, 2] == fm_scores[u, 5] for u in range(N_USERS))
    assert all(len(set(row)) < N_ITEMS for row in fm_scores.tolist())


# ---------------------------------------------------------------------------------------------
# vectors


@pytest.mark.parametrize("classifier", [False, True])
def test_vectors_reproduce_fm_scores(classifier):
    n_users, n_items = 7, 11
    fm = make_fm(n_users, n_items, k=4, seed=1, classifier=classifier)
    U, It = fm_vectors(fm)
    off = user_offsets(fm)
    assert U.shape == (n_users, 5) and It.shape == (n_items, 5)
    assert U.dtype == It.dtype == np.float32 and off.dtype == np.float64
    got = U.astype(np.float64) @ It.T.astype(np.float64) + off[:, None]
    users, items = np.divmod(np.arange(n_users * n_items), n_items)
    pairs = fm.decision_pairs(users, items).reshape(n_users, n_items)
    full = fm.decision_function(one_hot(users, items, n_users, n_items)).reshape(n_users, n_items)
    brute = np.array([[fm_pairwise(fm, one_hot([u], [i], n_users, n_items).toarray()) for i in range(n_items)]
                      for u in range(n_users)])  # fmt: skip
    np.testing.assert_allclose(pairs, brute, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(full, brute, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-5)
    # the vectors are the factors and linear weights themselves
    np.testing.assert_array_equal(U[:, :4], fm.V[:n_users])
    np.testing.assert_array_equal(U[:, 4], 1.0)
    np.testing.assert_array_equal(It[:, :4], fm.V[n_users:])
    np.testing.assert_array_equal(It[:, 4], fm.w[n_users:])
    np.testing.assert_allclose(off, 0.25 + fm.w[:n_users].astype(np.float64))


def test_vectors_with_extra_features_and_explicit_layout():
    """A model wider than users + items (extra side features) still yields the one-hot vectors."""
    fm = make_fm(4, 5, seed=2, extra=3, metadata={})
    with pytest.raises(DataError, match="does not record its feature layout"):
        fm_vectors(fm)
    U, It = fm_vectors(fm, 4, 5)
    assert U.shape == (4, 4) and It.shape == (5, 4)
    np.testing.assert_array_equal(It[:, :3], fm.V[4:9])
    assert model_layout(fm, 6, 6).feature_dim == 12  # exactly as wide as the model: fine
    with pytest.raises(DataError, match="needs 13 features but the model has feature_dim 12"):
        model_layout(fm, 6, 7)


def test_knn_ranking_equals_fm_ranking():
    n_users, n_items = 25, 60
    fm = make_fm(n_users, n_items, k=6, seed=4)
    U, It = fm_vectors(fm)
    off = user_offsets(fm)
    ids, raw = FaissIndex.build(It, KNNParams()).search(U, 15)
    for u in range(n_users):
        s = fm.decision_pairs(np.full(n_items, u), np.arange(n_items))
        expected, exp_scores = brute_top(s.tolist(), set(), 15)
        gaps = np.diff(np.sort(s)[::-1][:16])
        assert np.all(np.abs(gaps) > 1e-4), "fixture should have no near-ties"
        assert ids[u].tolist() == expected
        np.testing.assert_allclose(raw[u] + off[u], exp_scores, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# recent-history features


def history_frame() -> pd.DataFrame:
    """Four users (user 3 has no ratings), five items. File order matters for ties:

    user 0: item 2 (01-01), item 1 (01-02, row 0), item 3 (01-02, row 3: later in file),
            item 4 (01-03)        -> timeline 2, 1, 3, 4
    user 1: item 0 (NaT, row 2), item 2 (NaT, row 6), item 4 (01-05)
                                  -> timeline 0, 2, 4  (no date = oldest, then file order)
    user 2: item 0
    """
    rows = [
        (0, 1, "2020-01-02"),
        (0, 2, "2020-01-01"),
        (1, 0, None),
        (0, 3, "2020-01-02"),
        (1, 4, "2020-01-05"),
        (0, 4, "2020-01-03"),
        (1, 2, None),
        (2, 0, "2020-02-01"),
    ]
    return pd.DataFrame(
        {
            USER: np.array([r[0] for r in rows], dtype=np.int32),
            ITEM: np.array([r[1] for r in rows], dtype=np.int32),
            DATE: pd.to_datetime([r[2] for r in rows]),
        }
    )


H_USERS, H_ITEMS = 4, 5
HIST = H_USERS + H_ITEMS  # first history column


def expected_user_part(n_rows, users, hist: dict[int, dict[int, float]]) -> np.ndarray:
    out = np.zeros((n_rows, H_USERS + 2 * H_ITEMS))
    for r, u in enumerate(users):
        out[r, u] = 1.0
        weights = hist.get(r, {})
        total = sum(weights.values())
        for item, wt in weights.items():
            out[r, HIST + item] = wt / total
    return out


D3 = [1.0, 2 ** (-2 / 3), 2 ** (-4 / 3)]  # decay, history_length 3: halves every 1.5 steps


@pytest.mark.parametrize(
    "length,weighting,hist",
    [
        (3, "uniform", {0: {1: 1, 3: 1, 4: 1}, 1: {0: 1, 2: 1, 4: 1}, 2: {0: 1}}),
        (
            3,
            "decay",
            {0: {4: D3[0], 3: D3[1], 1: D3[2]}, 1: {4: D3[0], 2: D3[1], 0: D3[2]}, 2: {0: 1}},
        ),
        # the tie on 01-02 is broken by file order (item 3 is more recent than item 1);
        # NaT rows are the oldest, so user 1's last two are items 4 and 2
        (2, "uniform", {0: {3: 1, 4: 1}, 1: {2: 1, 4: 1}, 2: {0: 1}}),
        (2, "decay", {0: {4: 1.0, 3: 0.5}, 1: {4: 1.0, 2: 0.5}, 2: {0: 1}}),
        (1, "decay", {0: {4: 1}, 1: {4: 1}, 2: {0: 1}}),
        (10, "uniform", {0: {1: 1, 2: 1, 3: 1, 4: 1}, 1: {0: 1, 2: 1, 4: 1}, 2: {0: 1}}),
    ],
)
def test_user_features_hand_computed(length, weighting, hist):
    layout = FeatureLayout(H_USERS, H_ITEMS, history_length=length, history_weighting=weighting)
    got = user_features(layout, history_frame())
    assert sp.isspmatrix_csr(got) and got.dtype == np.float32
    expected = expected_user_part(H_USERS, range(H_USERS), hist)
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-6, atol=1e-7)
    # history weights sum to 1 for users with history; user 3 has only the one-hot
    np.testing.assert_allclose(got.toarray()[:, HIST:].sum(axis=1), [1, 1, 1, 0], rtol=1e-6)


def test_user_features_without_history_is_one_hot():
    got = user_features(FeatureLayout(H_USERS, H_ITEMS), history_frame())
    np.testing.assert_array_equal(got.toarray(), np.eye(H_USERS, H_USERS + H_ITEMS))


#: history before each training row (in file order) with history_length 2: {row: {item: lag}}
PAIR_LAGS = {0: {2: 1}, 3: {1: 1, 2: 2}, 4: {2: 1, 0: 2}, 5: {3: 1, 1: 2}, 6: {0: 1}}


@pytest.mark.parametrize(
    "weighting,lag_weight", [("uniform", {1: 1, 2: 1}), ("decay", {1: 1.0, 2: 0.5})]
)
def test_pair_user_features_hand_computed(weighting, lag_weight):
    frame = history_frame()
    layout = FeatureLayout(H_USERS, H_ITEMS, history_length=2, history_weighting=weighting)
    got = pair_user_features(layout, frame).toarray()
    hist = {r: {item: lag_weight[lag] for item, lag in d.items()} for r, d in PAIR_LAGS.items()}
    expected = expected_user_part(len(frame), frame[USER].tolist(), hist)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # a row never contains its own rating in the history block
    assert np.all(got[np.arange(len(frame)), HIST + frame[ITEM].to_numpy()] == 0)


def test_pair_features_are_what_serving_sees():
    """The history before a user's *next* rating is exactly user_features()."""
    frame = history_frame()
    layout = FeatureLayout(H_USERS, H_ITEMS, history_length=3, history_weighting="decay")
    nxt = pd.DataFrame({USER: np.arange(H_USERS, dtype=np.int32), ITEM: np.zeros(H_USERS, dtype=np.int32),
                        DATE: pd.to_datetime(["2030-01-01"] * H_USERS)})  # fmt: skip
    pairs = pair_user_features(layout, pd.concat([frame, nxt], ignore_index=True))
    np.testing.assert_allclose(
        pairs[len(frame) :].toarray(), user_features(layout, frame).toarray(), rtol=1e-6
    )


def test_pair_features_without_history_is_one_hot():
    frame = history_frame()
    got = pair_user_features(FeatureLayout(H_USERS, H_ITEMS), frame).toarray()
    np.testing.assert_array_equal(got, np.eye(H_USERS, H_USERS + H_ITEMS)[frame[USER]])


def test_design_rows_hand_computed():
    layout = FeatureLayout(H_USERS, H_ITEMS, history_length=3)
    Xu = user_features(layout, history_frame())
    rows = design_rows(layout, Xu[[0, 3, 0]], [4, 1, 0])
    expected = np.zeros((3, 14))
    expected[0, [0, HIST + 1, HIST + 3, HIST + 4]] = [1, 1 / 3, 1 / 3, 1 / 3]
    expected[0, H_USERS + 4] = (
        1  # the candidate item 4 sits in the item block, not the history block
    )
    expected[1, [3, H_USERS + 1]] = 1
    expected[2, [0, HIST + 1, HIST + 3, HIST + 4]] = [1, 1 / 3, 1 / 3, 1 / 3]
    expected[2, H_USERS + 0] = 1
    np.testing.assert_allclose(rows.toarray(), expected, rtol=1e-6)
    with pytest.raises(DataError, match="user_part has 3 rows but 2 items"):
        design_rows(layout, Xu[[0, 1, 2]], [0, 1])


def history_fm(weighting="uniform", seed=5):
    layout = FeatureLayout(H_USERS, H_ITEMS, history_length=3, history_weighting=weighting)
    meta = {"n_users": H_USERS, "n_items": H_ITEMS, "layout": layout.to_dict()}
    fm = make_fm(H_USERS, H_ITEMS, k=3, seed=seed, extra=H_ITEMS, metadata=meta)
    return fm, layout


@pytest.mark.parametrize("weighting", ["uniform", "decay"])
def test_history_vectors_reproduce_fm_scores(weighting):
    fm, layout = history_fm(weighting)
    Xu = user_features(layout, history_frame())
    U, It = fm_vectors(fm, user_features=Xu)
    off = user_offsets(fm, user_features=Xu)
    got = U.astype(np.float64) @ It.T.astype(np.float64) + off[:, None]
    users, items = np.divmod(np.arange(H_USERS * H_ITEMS), H_ITEMS)
    X = design_rows(layout, Xu[users], items)
    full = fm.decision_function(X).reshape(H_USERS, H_ITEMS)
    brute = np.array([fm_pairwise(fm, X[r].toarray()) for r in range(X.shape[0])]).reshape(
        H_USERS, H_ITEMS
    )
    np.testing.assert_allclose(full, brute, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-5)
    # the history really matters: user 3 (no history) differs from the one-hot-only vectors of users 0..2
    U1, _ = fm_vectors(fm, H_USERS, H_ITEMS)
    assert not np.allclose(U[0], U1[0]) and np.allclose(U[3], U1[3])


def test_history_vectors_need_user_features():
    fm, layout = history_fm()
    with pytest.raises(DataError, match="pass user_features"):
        fm_vectors(fm)
    with pytest.raises(DataError, match=r"user_features must have shape \(4, 14\)"):
        fm_vectors(fm, user_features=sp.csr_matrix((3, 14)))


def test_recommender_with_history_matches_bruteforce():
    fm, layout = history_fm(seed=8)
    frame = history_frame()
    Xu = user_features(layout, frame)
    seen = sp.csr_matrix(
        (np.ones(len(frame), bool), (frame[USER], frame[ITEM])), shape=(H_USERS, H_ITEMS)
    )
    rec = Recommender(fm, make_mappings(H_USERS, H_ITEMS), seen, user_features=Xu)
    ids, scores = rec.recommend(np.arange(H_USERS), k=H_ITEMS)
    for u in range(H_USERS):
        X = design_rows(layout, Xu[[u] * H_ITEMS], np.arange(H_ITEMS))
        s = [fm_pairwise(fm, X[i].toarray()) for i in range(H_ITEMS)]
        exp_ids, exp_scores = brute_top(s, set(seen[u].indices.tolist()), H_ITEMS)
        n = len(exp_ids)
        assert ids[u, :n].tolist() == exp_ids and np.all(ids[u, n:] == -1)
        np.testing.assert_allclose(scores[u, :n], exp_scores, rtol=1e-5, atol=1e-5)
        assert np.all(np.isneginf(scores[u, n:]))


def test_recommender_rejects_layout_mismatch():
    fm, _ = history_fm()
    with pytest.raises(
        DataError, match="trained for 4 users x 5 items but the mappings have 3 x 5"
    ):
        Recommender(fm, make_mappings(3, 5))


# ---------------------------------------------------------------------------------------------
# Recommender: index-level API


@pytest.mark.parametrize("N", [1, 2, 3, 5, 9, 20])
@pytest.mark.parametrize("exclude", [True, False])
def test_recommend_equals_bruteforce(rec, fm_scores, N, exclude):
    ids, scores = rec.recommend(np.arange(N_USERS), k=N, exclude_seen=exclude)
    assert ids.shape == scores.shape == (N_USERS, N)
    assert ids.dtype == np.int64 and scores.dtype == np.float64
    for u in range(N_USERS):
        excl = SEEN[u] if exclude else set()
        assert_top_with_ties(ids[u], scores[u], fm_scores[u].tolist(), excl, N)
        # the scalar API: 1-D, trimmed to the real recommendations
        i1, s1 = rec.recommend(u, k=N, exclude_seen=exclude)
        assert i1.ndim == s1.ndim == 1
        assert len(i1) == min(N, N_ITEMS - len(excl))
        assert_top_with_ties(i1, s1, fm_scores[u].tolist(), excl, N)


def test_ties_at_cutoff_prefer_lower_index_minimal():
    """y(u, i) = V_u * V_i with item factors 1, 1, 2: top-2 is [2, 0] (ties by lower index)."""
    V = np.array([[1.0], [1.0], [1.0], [1.0], [2.0]])
    fm = FittedFM(0.0, np.zeros(5), V, metadata={"n_users": 2, "n_items": 3})
    rec = Recommender(fm, make_mappings(2, 3))
    assert rec.recommend(0, k=3)[0].tolist() == [2, 0, 1]
    assert rec.recommend(0, k=1)[0].tolist() == [2]


def test_ties_at_cutoff_prefer_lower_index():
    V = np.array([[1.0], [1.0], [1.0], [1.0], [2.0]])
    fm = FittedFM(0.0, np.zeros(5), V, metadata={"n_users": 2, "n_items": 3})
    rec = Recommender(fm, make_mappings(2, 3))
    # the k=2 list must be a prefix of the k=3 list [2, 0, 1]; got [2, 1]
    assert rec.recommend(0, k=2)[0].tolist() == [2, 0]


def test_batch_equals_scalar_with_ties(rec):
    # user 5 (nothing seen): item 4 scores 1.5, items 0 and 1 both 1.25
    batch = rec.recommend(np.arange(N_USERS), k=2)[0]
    assert rec.recommend(5, k=2)[0].tolist() == batch[5].tolist() == [4, 0]


def test_recommend_seen_items_appear_without_filter(rec, fm_scores):
    # user 4 has seen 7 of 9 items: unfiltered, the best item overall is a seen one
    best = int(np.lexsort((np.arange(N_ITEMS), -fm_scores[4]))[0])
    assert best in SEEN[4]
    assert rec.recommend(4, k=1, exclude_seen=False)[0].tolist() == [best]
    assert rec.recommend(4, k=1)[0].tolist() != [best]
    ids, _ = rec.recommend(4, k=20)
    assert sorted(ids.tolist()) == [7, 8]  # every unseen item, nothing else
    ids, _ = rec.recommend(4, k=20, exclude_seen=False)
    assert sorted(ids.tolist()) == list(range(N_ITEMS))


def test_recommend_scores_descending_and_equal_decision_pairs(rec, grid_fm):
    ids, scores = rec.recommend(np.arange(N_USERS), k=N_ITEMS)
    for u in range(N_USERS):
        valid = ids[u] >= 0
        assert np.all(np.diff(scores[u][valid]) <= 0)
        np.testing.assert_array_equal(
            scores[u][valid], grid_fm.decision_pairs(np.full(valid.sum(), u), ids[u][valid])
        )


def test_recommend_scalar_vs_array_shapes(rec):
    for userid in (3, np.int64(3), np.int32(3)):
        ids, scores = rec.recommend(userid, k=4)
        assert ids.shape == scores.shape == (4,)
    ids2, scores2 = rec.recommend([3], k=4)
    assert ids2.shape == (1, 4)
    np.testing.assert_array_equal(ids2[0], ids)


def test_batch_equals_scalar_without_ties():
    """Batch = concatenation of single calls, in the order asked (duplicates too)."""
    n_users, n_items = 12, 40
    rng = np.random.default_rng(9)
    fm = make_fm(n_users, n_items, k=4, seed=9)
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < 0.3)
    rec = Recommender(fm, make_mappings(n_users, n_items), seen)
    users = np.array([5, 0, 2, 0, 11, 7])
    for N in (1, 6, 45):
        ids_b, scores_b = rec.recommend(users, k=N)
        for row, u in enumerate(users):
            i1, s1 = rec.recommend(int(u), k=N)
            n = len(i1)
            assert ids_b[row, :n].tolist() == i1.tolist()
            np.testing.assert_array_equal(scores_b[row, :n], s1)
            assert np.all(ids_b[row, n:] == -1)


def test_recommend_bad_input(rec):
    with pytest.raises(DataError, match=r"user indices must be in \[0, 6\)"):
        rec.recommend(6)
    with pytest.raises(DataError, match="user indices"):
        rec.recommend([0, -1])
    for bad in (0, -2, 2.5):
        with pytest.raises(DataError, match="k must be a positive integer"):
            rec.recommend(0, k=bad)


def test_random_fm_recommend_equals_bruteforce():
    """Continuous scores, larger catalogue, random seen sets: FAISS + offsets = FM top-K."""
    n_users, n_items = 30, 80
    rng = np.random.default_rng(12)
    fm = make_fm(n_users, n_items, k=5, seed=12)
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < 0.2)
    rec = Recommender(fm, make_mappings(n_users, n_items), seen)
    ids, scores = rec.recommend(np.arange(n_users), k=10)
    for u in range(n_users):
        s = [fm_pairwise(fm, one_hot([u], [i], n_users, n_items).toarray()) for i in range(n_items)]
        exp_ids, exp_scores = brute_top(s, set(seen[u].indices.tolist()), 10)
        assert ids[u].tolist() == exp_ids
        np.testing.assert_allclose(scores[u], exp_scores, rtol=1e-5, atol=1e-5)


def test_any_index_gives_the_same_results(grid_fm, mappings, seen, rec):
    """Any KNNIndex works: a numpy index searched in batches of 4 queries gives FAISS's answers."""
    index = BruteIndex(rec.item_vectors, batch_size=4)
    other = Recommender(grid_fm, mappings, seen, index=index)
    a = other.recommend(np.arange(N_USERS), k=5)
    b = rec.recommend(np.arange(N_USERS), k=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert max(n for n, _ in index.calls) <= 4  # the declared batch size is respected


def test_a_depth_limited_index_says_what_it_cannot_answer(grid_fm, mappings, seen, rec):
    index = BruteIndex(rec.item_vectors, max_k=5)
    limited = Recommender(grid_fm, mappings, seen, index=index)
    # users 0 and 1 have at most 2 seen items: 3 + 2 = 5 neighbours suffice
    np.testing.assert_array_equal(limited.recommend([0, 1], k=3)[0], rec.recommend([0, 1], k=3)[0])
    # user 2 has 6 seen items: 3 + 6 = 9 > 5
    with pytest.raises(BackendError, match="need more than the 5 neighbours"):
        limited.recommend(2, k=3)
    # without filtering no margin is needed
    np.testing.assert_array_equal(limited.recommend(2, k=3, exclude_seen=False)[0],
                                  rec.recommend(2, k=3, exclude_seen=False)[0])  # fmt: skip
    with pytest.raises(BackendError):
        limited.recommendations(k=3)


def test_recommender_constructor_errors(grid_fm, mappings, seen):
    with pytest.raises(DataError, match=r"seen must have shape \(6, 9\)"):
        Recommender(grid_fm, mappings, seen[:5])
    with pytest.raises(DataError, match="mappings need 7 users"):
        Recommender(grid_fm, make_mappings(7, 9))
    with pytest.raises(DataError, match="the k-NN index holds 8 vectors but there are 9 items"):
        Recommender(grid_fm, mappings, seen, index=BruteIndex(np.zeros((8, 4))))


def test_no_seen_matrix(grid_fm, mappings, fm_scores):
    rec = Recommender(grid_fm, mappings)
    ids, scores = rec.recommend(np.arange(N_USERS), k=N_ITEMS)
    for u in range(N_USERS):
        assert ids[u].tolist() == brute_top(fm_scores[u].tolist(), set(), N_ITEMS)[0]
    np.testing.assert_array_equal(rec.item_popularity, np.zeros(N_ITEMS))


# ---------------------------------------------------------------------------------------------
# Recommender: id-level API


def popularity_order(seen_dict, n_items):
    pop = [sum(i in s for s in seen_dict.values()) for i in range(n_items)]
    return sorted(range(n_items), key=lambda i: (-pop[i], i)), pop


def expected_rows(mappings, customer, u, fm_scores, k, exclude=True):
    ids, scores = brute_top(fm_scores[u].tolist(), SEEN[u] if exclude else set(), k)
    return [
        (customer, r + 1, mappings.product_ids[i], mappings.product_titles[i], s, "model")
        for r, (i, s) in enumerate(zip(ids, scores, strict=True))
    ]


def frame_rows(frame):
    titles = frame[TITLE].astype(object).where(frame[TITLE].notna(), None)
    return list(
        zip(
            frame[CUSTOMER],
            frame["rank"],
            frame[PRODUCT],
            titles,
            frame["score"].astype(object).where(frame["score"].notna(), None),
            frame["source"],
            strict=True,
        )
    )


@pytest.mark.parametrize("k", [1, 4, 12])
def test_recommendations_all(rec, mappings, fm_scores, k):
    got = rec.recommendations(k=k)
    assert tuple(got.columns) == RECOMMENDATION_COLUMNS
    expected = []
    for u in range(N_USERS):
        expected += expected_rows(mappings, mappings.customer_ids[u], u, fm_scores, k)
    assert frame_rows(got) == expected
    # ranks are 1..n per customer, consecutive
    for _, grp in got.groupby(CUSTOMER):
        assert grp["rank"].tolist() == list(range(1, len(grp) + 1))
    assert (got["source"] == "model").all()


def test_recommendations_exclude_seen_false(rec, mappings, fm_scores):
    got = rec.recommendations(k=3, exclude_seen=False)
    expected = []
    for u in range(N_USERS):
        expected += expected_rows(
            mappings, mappings.customer_ids[u], u, fm_scores, 3, exclude=False
        )
    assert frame_rows(got) == expected


def test_recommendations_unknown_get_popularity(rec, mappings, fm_scores):
    order, pop = popularity_order(SEEN, N_ITEMS)
    assert pop == [2, 2, 2, 2, 2, 2, 2, 1, 1]  # written out from SEEN: ties decided by index
    asked = [205, 999999, "nope", "413", 101]
    got = rec.recommendations(asked, k=4)
    assert tuple(got.columns) == RECOMMENDATION_COLUMNS
    fallback = [  # the popular videos with no score: a rating count is not an FM score
        (c, r + 1, mappings.product_ids[i], mappings.product_titles[i], None, "popularity")
        for c in (999999, "nope")
        for r, i in enumerate(order[:4])
    ]
    expected = (
        expected_rows(mappings, 205, 1, fm_scores, 4)
        + fallback
        + expected_rows(mappings, "413", 3, fm_scores, 4)  # ids given as text are found
        + expected_rows(mappings, 101, 0, fm_scores, 4)
    )
    assert frame_rows(got) == expected


def test_fallback_k_larger_than_catalogue_and_custom_popularity(grid_fm, mappings, seen):
    popularity = np.array([0, 5, 1, 5, 9, 0, 2, 2, 3], dtype=float)
    rec = Recommender(grid_fm, mappings, seen, item_popularity=popularity)
    got = rec.recommendations(["unknown"], k=12)
    # 9 > 5 = 5 > 3 > 2 = 2 > 1 > 0 = 0, ties by lower index
    assert got[PRODUCT].tolist() == [mappings.product_ids[i] for i in (4, 1, 3, 8, 6, 7, 2, 0, 5)]
    assert got["score"].isna().all()
    assert got["rank"].tolist() == list(range(1, 10))
    assert (got["source"] == "popularity").all()


def test_iter_recommendations_chunks_equal_whole(rec):
    whole = rec.recommendations(k=5)
    chunks = list(rec.iter_recommendations(k=5, chunk_size=4))
    assert len(chunks) == 2
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


def test_recommendations_bad_k(rec):
    for bad in (0, -1, 1.5):
        with pytest.raises(DataError, match="k must be a positive integer"):
            rec.recommendations(k=bad)


def test_default_k_is_knn_params_k(grid_fm, mappings, seen):
    rec = Recommender(grid_fm, mappings, seen, knn_params=KNNParams(k=2))
    got = rec.recommendations()
    assert got.groupby(CUSTOMER).size().tolist() == [2] * N_USERS


# ---------------------------------------------------------------------------------------------
# similar items, per-customer views, overlap


@pytest.fixture(scope="module")
def rand_rec():
    n_users, n_items = 8, 30
    fm = make_fm(n_users, n_items, k=4, seed=21, classifier=True)
    rng = np.random.default_rng(21)
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < 0.25)
    return Recommender(fm, make_mappings(n_users, n_items), seen), fm, seen


def brute_similar(fm, n_users, item, N):
    vec = np.column_stack([fm.V[n_users:], fm.w[n_users:]]).astype(np.float64)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    cos = (vec @ vec[item]).tolist()
    return brute_top(cos, {item}, N)


@pytest.mark.parametrize("item", [0, 7, 29])
@pytest.mark.parametrize("N", [1, 5, 29, 50])
def test_similar_items_bruteforce_cosine(rand_rec, item, N):
    rec, fm, _ = rand_rec
    ids, scores = rec.similar_items(item, N)
    exp_ids, exp_scores = brute_similar(fm, 8, item, N)
    assert item not in ids.tolist()
    assert len(ids) == min(N, 29)
    assert ids.tolist() == exp_ids
    np.testing.assert_allclose(scores, exp_scores, atol=1e-5)


def test_similar_frame(rand_rec):
    rec, fm, _ = rand_rec
    got = rec.similar(rec.mappings.product_ids[7], k=4)
    exp_ids, exp_scores = brute_similar(fm, 8, 7, 4)
    assert got[PRODUCT].tolist() == [rec.mappings.product_ids[i] for i in exp_ids]
    assert got[TITLE].tolist() == [f"Video {i}" for i in exp_ids]
    assert got["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(got["score"], exp_scores, atol=1e-5)
    with pytest.raises(DataError, match="unknown product_id"):
        rec.similar("nope")
    with pytest.raises(DataError, match=r"item index must be in \[0, 30\)"):
        rec.similar_items(30)


def test_customer_scores_classifier(rand_rec):
    rec, fm, seen = rand_rec
    u = 5
    cust = rec.mappings.customer_ids[u]
    got = rec.customer_scores(cust)
    assert list(got.columns) == [PRODUCT, TITLE, "score", "seen"]
    assert sorted(got[PRODUCT]) == list(rec.mappings.product_ids)  # every item exactly once
    assert np.all(np.diff(got["score"].to_numpy()) <= 0)
    item = rec.mappings.item_index(got[PRODUCT].to_numpy())
    logits = np.array([fm_pairwise(fm, one_hot([u], [i], 8, 30).toarray()) for i in item])
    np.testing.assert_allclose(got["score"], 1 / (1 + np.exp(-logits)), rtol=1e-6, atol=1e-7)
    assert got["seen"].tolist() == [bool(seen[u, i]) for i in item]
    assert got[TITLE].tolist() == [f"Video {i}" for i in item]
    with pytest.raises(DataError, match="unknown customer_id"):
        rec.customer_scores(123456)


def test_customer_scores_regressor_ties_by_index(rec, mappings, fm_scores):
    got = rec.customer_scores(mappings.customer_ids[2])
    exp_ids, exp_scores = brute_top(fm_scores[2].tolist(), set(), N_ITEMS)
    assert got[PRODUCT].tolist() == [mappings.product_ids[i] for i in exp_ids]
    assert got["score"].tolist() == exp_scores
    assert got["seen"].tolist() == [i in SEEN[2] for i in exp_ids]


def test_score_correlation_bruteforce(rand_rec):
    rec, fm, _ = rand_rec
    ca, cb = rec.mappings.customer_ids[1], rec.mappings.customer_ids[6]
    corr, a, b = rec.score_correlation(ca, cb)

    def probs(u):
        return np.array(
            [
                1 / (1 + math.exp(-fm_pairwise(fm, one_hot([u], [i], 8, 30).toarray())))
                for i in range(30)
            ]
        )

    pa, pb = probs(1), probs(6)
    np.testing.assert_allclose(a, pa, rtol=1e-6)  # in item order
    np.testing.assert_allclose(b, pb, rtol=1e-6)
    assert corr == pytest.approx(np.corrcoef(pa, pb)[0, 1], abs=1e-6)
    self_corr, _, _ = rec.score_correlation(ca, ca)
    assert self_corr == pytest.approx(1.0)


def test_list_overlap_hand_made():
    frame = pd.DataFrame(
        {
            CUSTOMER: ["a", "a", "a", "b", "b", "b", "c", "d"],
            PRODUCT: ["p1", "p2", "p3", "p2", "p3", "p4", "p5", "p1"],
        }
    )
    got = Recommender.list_overlap(frame, ["a", "b", "c", "d", "e"])
    expected = pd.DataFrame(
        [[3, 2, 0, 1, 0], [2, 3, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]],
        index=list("abcde"),
        columns=list("abcde"),
    )
    pd.testing.assert_frame_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# write_recommendations


def read_back(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={PRODUCT: str, TITLE: "string"})
    return pd.read_parquet(path)


def test_write_parquet_round_trip(rec, tmp_path):
    frame = rec.recommendations(k=4)
    assert frame[TITLE].isna().any()  # item 4 has no title
    path = write_recommendations(frame, tmp_path / "recs.parquet")
    assert path == tmp_path / "recs.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    assert [p.name for p in tmp_path.iterdir()] == ["recs.parquet"]


def test_write_csv_round_trip(rec, tmp_path):
    frame = rec.recommendations(k=4)
    path = write_recommendations(frame, tmp_path / "recs.csv")
    back = read_back(path)
    assert list(back.columns) == list(RECOMMENDATION_COLUMNS)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["score"].tolist() == frame["score"].tolist()  # floats round-trip exactly


@pytest.mark.parametrize("name", ["recs.parquet", "recs.csv"])
def test_write_chunked_iterable(rec, tmp_path, name):
    whole = rec.recommendations(k=3)
    path = write_recommendations(rec.iter_recommendations(k=3, chunk_size=2), tmp_path / name)
    pd.testing.assert_frame_equal(read_back(path), whole, check_dtype=name.endswith(".parquet"))
    # a later chunk of unknown customers (object-dtype ids, fallback rows) appends fine
    chunks = [whole.iloc[:5], rec.recommendations([999, 998], k=3)]
    path = write_recommendations(iter(chunks), tmp_path / ("b" + name))
    back = read_back(path)
    assert len(back) == 5 + 6
    assert back["source"].tolist() == ["model"] * 5 + ["popularity"] * 6
    assert back[PRODUCT].tolist() == pd.concat(chunks)[PRODUCT].tolist()


def test_write_explicit_format_and_bad_format(rec, tmp_path):
    frame = rec.recommendations(k=2)
    path = write_recommendations(frame, tmp_path / "recs.out", fmt="CSV")
    pd.testing.assert_frame_equal(
        pd.read_csv(path, dtype={PRODUCT: str, TITLE: "string"}), frame, check_dtype=False
    )
    with pytest.raises(ConfigError, match="parquet or csv, got 'json'"):
        write_recommendations(frame, tmp_path / "recs.json")
    assert not (tmp_path / "recs.json").exists()


def test_write_empty_iterable_parquet(tmp_path):
    path = write_recommendations(iter([]), tmp_path / "empty.parquet")
    back = pd.read_parquet(path)
    assert len(back) == 0 and tuple(back.columns) == RECOMMENDATION_COLUMNS


@pytest.mark.parametrize("name", ["recs.parquet", "recs.csv"])
@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_nothing(rec, tmp_path, name, existing):
    frame = rec.recommendations(k=3)
    target = tmp_path / name
    if existing:
        target.write_bytes(b"old content")

    def chunks():
        yield frame.iloc[:4]
        yield frame.iloc[4:8]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_recommendations(chunks(), target)
    if existing:
        assert target.read_bytes() == b"old content"
        assert [p.name for p in tmp_path.iterdir()] == [name]
    else:
        assert list(tmp_path.iterdir()) == []
