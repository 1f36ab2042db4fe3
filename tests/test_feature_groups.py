"""Tests of the feature groups (recsys.feature_groups): each block against a hand-written
definition over a small ratings frame, and the k-NN fold (user vectors reproduce the FM score of
full rows, checked against the brute-force FM of tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.errors import ConfigError, DataError
from recsys.feature_groups import FeatureGroups, FeatureGroupsConfig, GroupedDesign, RelationBlock
from recsys.model import FittedFM
from recsys.vectors import fm_vectors, user_offsets
from tests.reference import fm_brute_force

N_USERS, N_ITEMS = 3, 6


def ratings() -> pd.DataFrame:
    """User 0 rates items 0,1,2,3 on days 1..4; user 1 rates 4,0 (day 2, day 9); user 2 rates
    5 (day 5), 1 and 2 on the same day 7 (file order decides: 1 then 2)."""
    rows = [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4), (1, 4, 2), (1, 0, 9), (2, 5, 5), (2, 1, 7), (2, 2, 7)]
    frame = pd.DataFrame(rows, columns=["user", "item", "day"])
    frame["review_date"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(frame.pop("day"), unit="D")
    frame["star_rating"] = np.float32(4.0)
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # rows not in time order


def offsets(fg: FeatureGroups) -> dict[str, int]:
    out, start = {}, 0
    for name in ("user", "item", "time", "recent_mean", "recent", "implicit"):
        if name in fg.group_names:
            out[name] = start
            start += int(np.sum(fg.groups == fg.group_names.index(name)))
    return out


def test_implicit_set_is_the_normalised_training_history():
    train = ratings()
    fg = FeatureGroups(FeatureGroupsConfig(implicit=True), train, N_USERS, N_ITEMS)
    X = fg.design(train, training=True).to_csr().toarray()
    lo = offsets(fg)["implicit"]
    for r, (u, i) in enumerate(zip(train.user, train.item, strict=True)):
        seen = sorted(set(train.item[train.user == u]))
        expected = np.zeros(N_ITEMS)
        expected[seen] = 1.0 / np.sqrt(len(seen))
        np.testing.assert_allclose(X[r, lo : lo + N_ITEMS], expected, rtol=1e-6)
        assert X[r, u] == 1.0 and X[r, N_USERS + i] == 1.0


def test_recent_videos_are_those_rated_before_each_row():
    train = ratings()
    fg = FeatureGroups(FeatureGroupsConfig(recent=2), train, N_USERS, N_ITEMS)
    X = fg.design(train, training=True).to_csr().toarray()
    lo = offsets(fg)["recent"]
    timeline = train.assign(row=np.arange(len(train))).sort_values(["user", "review_date", "row"])
    for _, part in timeline.groupby("user"):
        items = part.item.to_list()
        for pos, r in enumerate(part.row):
            before = items[max(0, pos - 2) : pos]
            expected = np.zeros(N_ITEMS)
            if before:
                expected[before] = 1.0 / len(before)
            np.testing.assert_allclose(X[r, lo : lo + N_ITEMS], expected, rtol=1e-6)
    # a row to predict sees the customer's last two training videos, never its own item
    new = pd.DataFrame({"user": [0, 2], "item": [4, 3], "review_date": pd.to_datetime(["2020-02-01"] * 2)})
    Xn = fg.design(new, training=False).to_csr().toarray()
    np.testing.assert_allclose(Xn[0, lo : lo + N_ITEMS], [0, 0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(Xn[1, lo : lo + N_ITEMS], [0, 0.5, 0.5, 0, 0, 0])


def test_recent_mean_is_the_rating_level_before_each_row():
    train = ratings()
    train["star_rating"] = np.float32([5, 3, 4, 1, 2, 5, 4, 3, 2])
    fg = FeatureGroups(FeatureGroupsConfig(recent_mean=2), train, N_USERS, N_ITEMS)
    X = fg.design(train, training=True).to_csr().toarray()
    col = offsets(fg)["recent_mean"]
    mean = train.star_rating.mean()
    timeline = train.assign(row=np.arange(len(train))).sort_values(["user", "review_date", "row"])
    level = {}
    for u, part in timeline.groupby("user"):
        values = part.star_rating.to_list()
        for pos, r in enumerate(part.row):
            before = values[max(0, pos - 2) : pos]
            expected = np.mean(before) - mean if before else 0.0
            assert X[r, col] == pytest.approx(expected, abs=1e-6)
        level[u] = np.mean(values[-2:]) - mean
    # a row to predict, and the serving-time user part, see the mean of the last two training ratings
    new = pd.DataFrame({"user": [2, 0, 1], "item": [0, 5, 1], "review_date": pd.to_datetime(["2020-02-01"] * 3)})
    Xn = fg.design(new, training=False).to_csr().toarray()
    np.testing.assert_allclose(Xn[:, col], [level[2], level[0], level[1]], atol=1e-6)
    np.testing.assert_allclose(fg.user_part().toarray()[:, col], [level[0], level[1], level[2]], atol=1e-6)


def test_time_buckets_split_the_training_dates_at_quantiles():
    train = ratings()
    fg = FeatureGroups(FeatureGroupsConfig(time_buckets=3), train, N_USERS, N_ITEMS)
    days = np.sort((train.review_date - pd.Timestamp("2020-01-01")).dt.days.to_numpy())  # 1,2,2,3,4,5,7,7,9
    lo = offsets(fg)["time"]
    probe = pd.DataFrame({"user": [0] * 5, "item": [0] * 5,
                          "review_date": pd.Timestamp("2020-01-01") + pd.to_timedelta([0, 2, 3, 5, 30], unit="D")})  # fmt: skip
    X = fg.design(probe, training=False).to_csr().toarray()
    # edges at the 1/3 and 2/3 quantiles (lower): days[2] = 2 and days[5] = 5; a date equal to
    # an edge starts the next bucket
    assert days[2] == 2 and days[5] == 5
    np.testing.assert_array_equal(X[:, lo : lo + 3].argmax(1), [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(X[:, lo : lo + 3].sum(1), np.ones(5))


def test_column_layout_and_relation_blocks():
    train = ratings()
    fg = FeatureGroups(FeatureGroupsConfig(implicit=True, recent=2, time_buckets=2, recent_mean=3), train, N_USERS, N_ITEMS)
    design = fg.design(train, training=True)
    assert fg.group_names == ("user", "item", "time", "recent_mean", "recent", "implicit")
    assert design.feature_dim == fg.feature_dim == N_USERS + 2 * N_ITEMS + 2 + 1 + N_ITEMS
    assert [b.table.shape for b in design.relations] == [(len(train), N_ITEMS), (N_USERS, N_ITEMS)]
    part = design.take([4, 1])
    np.testing.assert_array_equal(part.to_csr().toarray(), design.to_csr().toarray()[[4, 1]])


def test_folded_user_vectors_reproduce_the_fm_score_of_full_rows():
    """Serving-time rows (user part + one video) scored by the brute-force FM equal
    U @ I.T + offsets from recsys.vectors with FeatureGroups.user_part."""
    train = ratings()
    train["star_rating"] = np.float32([5, 3, 4, 1, 2, 5, 4, 3, 2])
    fg = FeatureGroups(FeatureGroupsConfig(implicit=True, recent=2, time_buckets=3, recent_mean=2), train, N_USERS, N_ITEMS)
    rng = np.random.default_rng(0)
    d, k = fg.feature_dim, 3
    fm = FittedFM(0.3, rng.normal(size=d), rng.normal(size=(d, k)), metadata={"n_users": N_USERS, "n_items": N_ITEMS})
    part = fg.user_part()
    U, items = fm_vectors(fm, user_features=part)
    scores = U.astype(np.float64) @ items.T.astype(np.float64) + user_offsets(fm, user_features=part)[:, None]
    last = train.review_date.max()
    for u in range(N_USERS):
        rows = pd.DataFrame({"user": [u] * N_ITEMS, "item": np.arange(N_ITEMS), "review_date": [last] * N_ITEMS})
        full = fg.design(rows, training=False).to_csr()  # the latest date: the last time bucket
        np.testing.assert_allclose(scores[u], fm_brute_force(fm.w0, fm.w, fm.V, full), rtol=1e-5, atol=1e-5)


def test_invalid_config_and_inputs():
    with pytest.raises(ConfigError):
        FeatureGroupsConfig(recent=-1)
    with pytest.raises(ConfigError):
        FeatureGroupsConfig(time_buckets=1)
    with pytest.raises(ConfigError):
        FeatureGroupsConfig(implicit="yes")
    with pytest.raises(ConfigError, match="recent_mean"):
        FeatureGroupsConfig(recent_mean=2.5)
    fg = FeatureGroups(FeatureGroupsConfig(), ratings(), N_USERS, N_ITEMS)
    with pytest.raises(DataError, match="item indices"):
        fg.design(pd.DataFrame({"user": [0], "item": [N_ITEMS], "review_date": [pd.NaT]}), training=False)
    with pytest.raises(DataError, match="relation index"):
        RelationBlock(np.array([0, 5]), sp.eye(3))
    with pytest.raises(DataError, match="one id per column"):
        GroupedDesign(sp.eye(3), groups=np.zeros(2))
