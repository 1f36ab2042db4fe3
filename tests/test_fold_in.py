"""Fold-in (recsys/fold_in.py): vectors for customers outside the model, against references
computed here by other means -- recency ranks and history weights written out by hand, the FM
by its pair-by-pair definition, the ridge solve by its normal equations, top-k by a full sort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.data.prepare import Mappings
from recsys.errors import DataError
from recsys.features import FeatureLayout
from recsys.fold_in import (
    POSITIVE_LOGIT,
    RIDGE,
    Histories,
    fold_in_vectors,
    histories_matrix,
    unique_rows,
)
from recsys.model import FittedFM
from recsys.ranking import HISTORY_BUCKETS, metrics_by_history, rank_metrics
from recsys.recommend import Recommender
from tests.reference import fm_brute_force, knn_brute_force

N_USERS, N_ITEMS = 4, 7


def test_histories_matrix_holds_recency_ranks():
    m = histories_matrix([[3, 1, 3, 5], [], [6]], N_ITEMS)
    # customer 0 watched 3, 1, 3, 5 (oldest first): 5 is the latest (1), 3 was re-watched (2), 1 is 3
    assert m.toarray().tolist() == [
        [0, 3, 0, 2, 0, 1, 0],
        [0] * 7,
        [0, 0, 0, 0, 0, 0, 1],
    ]
    with pytest.raises(DataError, match=r"in \[0, 7\)"):
        histories_matrix([[7]], N_ITEMS)
    with pytest.raises(DataError, match="integers"):
        histories_matrix([[1.5]], N_ITEMS)


def _model(history_length: int, seed: int = 0) -> tuple[FittedFM, FeatureLayout]:
    layout = FeatureLayout(N_USERS, N_ITEMS, history_length)
    rng = np.random.default_rng(seed)
    d = layout.feature_dim
    fm = FittedFM(0.3, rng.normal(size=d), rng.normal(size=(d, 3)), "binary_classifier",
                  metadata={"layout": layout.to_dict()})  # fmt: skip
    return fm, layout


@pytest.mark.parametrize("weighting", ["uniform", "decay"])
def test_history_models_fold_in_to_the_fm_score_of_the_history_row(weighting):
    """With a history block, a new customer's score for video i is the FM of the row
    [their last videos, weighted as in training | video i] -- no user one-hot."""
    layout = FeatureLayout(N_USERS, N_ITEMS, 2, weighting)
    fm, _ = _model(2)
    fm.metadata["layout"] = layout.to_dict()
    histories = [[0, 4, 2], [5]]
    vectors, offsets = fold_in_vectors(fm, layout, histories_matrix(histories, N_ITEMS))
    # by hand: the last two videos, most recent first, weights 1 and w(lag 2), summing to 1
    w2 = 1.0 if weighting == "uniform" else 0.5 ** (1 / 1.0)
    rows = [{2: 1 / (1 + w2), 4: w2 / (1 + w2)}, {5: 1.0}]
    item_vectors = Recommender(fm, _mappings(), user_features=_user_part(layout)).item_vectors
    for r, hist in enumerate(rows):
        X = np.zeros((N_ITEMS, layout.feature_dim))
        for item, weight in hist.items():
            X[:, layout.history_offset + item] = weight
        X[np.arange(N_ITEMS), layout.item_offset + np.arange(N_ITEMS)] = 1.0
        want = fm_brute_force(fm.w0, fm.w, fm.V, X)
        got = item_vectors.astype(np.float64) @ vectors[r].astype(np.float64) + offsets[r]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_one_hot_models_fold_in_by_the_ridge_solution():
    fm, layout = _model(0, seed=3)
    histories = [[1, 4], [0, 2, 3, 5, 6, 1], [], [6]]
    vectors, offsets = fold_in_vectors(fm, layout, histories_matrix(histories, N_ITEMS))
    lo = layout.item_offset
    for r, hist in enumerate(histories):
        # normal equations of min |A x - t|^2 + RIDGE |x|^2, rows a_i = [1, V_i], t_i = logit - w0 - w_i
        A = np.array([[1.0, *fm.V[lo + i].astype(np.float64)] for i in hist]).reshape(len(hist), 4)
        t = np.array([POSITIVE_LOGIT - fm.w0 - float(fm.w[lo + i]) for i in hist])
        x = np.linalg.solve(A.T @ A + RIDGE * np.eye(4), A.T @ t)
        np.testing.assert_allclose(vectors[r, :3], x[1:], rtol=1e-5, atol=1e-6)
        assert vectors[r, 3] == 1.0
        assert offsets[r] == pytest.approx(fm.w0 + x[0], rel=1e-6)


def _user_part(layout: FeatureLayout) -> sp.csr_matrix:
    """The model's customers' side of a row: their one-hot (no history here)."""
    return sp.csr_matrix((np.ones(N_USERS), (np.arange(N_USERS), np.arange(N_USERS))), shape=(N_USERS, layout.feature_dim))


def _mappings(n_users: int = N_USERS, n_items: int = N_ITEMS) -> Mappings:
    return Mappings(pd.Index(np.arange(100, 100 + n_users)), pd.Index([f"V{i}" for i in range(n_items)]),
                    np.array([f"video {i}" for i in range(n_items)], dtype=object))  # fmt: skip


@pytest.mark.parametrize("history_length", [0, 3])
def test_recommend_history_equals_a_full_sort_of_the_folded_in_scores(history_length):
    fm, layout = _model(history_length, seed=5)
    rec = Recommender(fm, _mappings(), user_features=_user_part(layout))
    histories = [[1, 4], [0, 2, 3, 5], [6, 6, 6]]
    ids, scores = rec.recommend_history(histories, k=4)
    vectors, offsets = fold_in_vectors(fm, layout, histories_matrix(histories, N_ITEMS))
    watched = histories_matrix(histories, N_ITEMS) > 0
    ref_ids, ref_raw = knn_brute_force(rec.item_vectors, vectors, 4, exclude=watched)
    np.testing.assert_array_equal(ids, ref_ids)
    ok = ref_ids >= 0
    np.testing.assert_allclose(scores[ok], (ref_raw + offsets[:, None])[ok], rtol=1e-5)
    assert (ids[1, 3:] == -1).all()  # only 3 unwatched videos left for customer 1
    ids_all, _ = rec.recommend_history(histories, k=4, exclude_seen=False)
    np.testing.assert_array_equal(ids_all, knn_brute_force(rec.item_vectors, vectors, 4)[0])


def test_histories_from_ratings_keep_every_customer_and_round_trip(tmp_path):
    mappings = _mappings()
    frame = pd.DataFrame({
        "customer_id": [7, 7, 9, 7, 8, 8],
        "product_id": ["V2", "V5", "V1", "X-outside", "V3", "V3"],
        "review_date": pd.to_datetime(["2020-01-03", "2020-01-01", "2020-01-01", "2020-01-02", "2020-01-05",
                                       "2020-01-01"]),
    })  # fmt: skip
    h = Histories.from_frame(frame, mappings)
    assert h.customer_ids.tolist() == [7, 8, 9]
    # customer 7: V5 (Jan 1), X (Jan 2, outside the catalogue), V2 (Jan 3): V2 latest, then V5
    dense = h.ranks.toarray()
    assert dense[0].tolist() == [0, 0, 1, 0, 0, 2, 0]
    assert dense[1].tolist() == [0, 0, 0, 1, 0, 0, 0]  # V3 twice: its latest rank
    assert dense[2].tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert h.index([9, "8", 5]).tolist() == [2, 1, -1]
    h.save(tmp_path)
    back = Histories.load(tmp_path, N_ITEMS)
    assert back.customer_ids.tolist() == [7, 8, 9] and (back.ranks != h.ranks).nnz == 0


def test_id_level_api_tags_each_list_with_its_source():
    fm, layout = _model(3, seed=8)
    rng = np.random.default_rng(8)
    seen = sp.csr_matrix(rng.random((N_USERS, N_ITEMS)) < 0.3)
    others = Histories(pd.Index([500, 501]), histories_matrix([[3, 1], []], N_ITEMS))
    rec = Recommender(fm, _mappings(), seen, histories=others, user_features=_user_part(layout))
    frame = rec.recommendations([101, 500, 501, "stranger"], k=3)
    assert frame.groupby("customer_id", sort=False)["source"].first().to_dict() == {
        101: "model", 500: "fold_in", 501: "popularity", "stranger": "popularity"}
    folded = frame[frame["customer_id"] == 500]
    ids, scores = rec.recommend_history([[3, 1]], k=3)
    assert folded["product_id"].tolist() == [f"V{i}" for i in ids[0]]
    np.testing.assert_allclose(folded["score"], scores[0])
    assert frame.loc[frame["source"] == "popularity", "score"].isna().all()
    # every customer the recommender knows, model first
    everyone = rec.recommendations(k=2)
    assert everyone["customer_id"].unique().tolist() == [100, 101, 102, 103, 500, 501]


def test_metrics_by_history_buckets_by_hand():
    ranks = np.array([1.0, 20.0, 3.0, np.inf, 150.0, 2.0])
    base = np.array([5.0, 5.0, 50.0, np.inf, 1.0, 30.0])
    lengths = np.array([1, 1, 3, 4, 10, 40])
    out = metrics_by_history(ranks, base, lengths)
    assert set(out["by_history_length"]) == set(HISTORY_BUCKETS)
    one = out["by_history_length"]["1"]
    assert one["test_rows"] == 2 and one["hr@10"] == 0.5 and one["popularity_hr@10"] == 1.0
    assert out["by_history_length"]["2-4"]["hr@10"] == 0.5  # rank 3 hits, the miss outside the catalogue not
    assert out["by_history_length"]["5-17"]["hr@100"] == 0.0
    assert out["by_history_length"][">=18"]["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert out["all"] == {"test_rows": 6, **rank_metrics(ranks),
                          **{f"popularity_{k}": v for k, v in rank_metrics(base).items()}}  # fmt: skip
    assert metrics_by_history(ranks[:1], base[:1], np.array([1]))["by_history_length"]["5-17"] == {"test_rows": 0}


def test_unique_rows_groups_identical_histories():
    m = sp.random(400, 30, density=0.05, format="csr", random_state=1)
    m.data = np.ceil(m.data * 3)
    m = sp.vstack([m, m[:150], sp.csr_matrix((5, 30)), m[7:9]]).tocsr()
    m.sort_indices()
    first, inverse = unique_rows(m)
    assert (m[first][inverse] != m).nnz == 0  # every row equals its representative
    assert len(first) == len(np.unique(m.toarray(), axis=0))  # and distinct rows stay apart
