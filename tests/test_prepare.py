"""Preparation stages against hand-built frames and brute-force references."""

from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.data.loaders import load_amazon_reviews
from recsys.data.prepare import (
    Mappings,
    PrepareConfig,
    build_mappings,
    drop_duplicates,
    filter_long_tail,
    index_ratings,
    labels,
    one_hot,
    prepare,
    reduce_columns,
    split_explicit,
    split_leave_last_out,
    split_random,
)
from recsys.data.synthetic import generate_reviews, write_reviews_tsv
from recsys.errors import ConfigError, DataError


def frame(rows: list[tuple]) -> pd.DataFrame:
    """(customer, product, title, rating, date) rows -> a ratings frame."""
    df = pd.DataFrame(rows, columns=["customer_id", "product_id", "product_title", "star_rating", "review_date"])
    df["star_rating"] = df["star_rating"].astype(np.float32)
    df["review_date"] = pd.to_datetime(df["review_date"])
    df["product_id"] = df["product_id"].astype("category")
    return df


# ---------------------------------------------------------------------------------------------
# reduce / duplicates
# ---------------------------------------------------------------------------------------------
def test_reduce_keeps_the_ratings_columns_and_names_missing_ones() -> None:
    df = frame([(1, "A", "t", 5, "2015-01-01")]).assign(review_body=["long text"], marketplace=["US"])
    out = reduce_columns(df)
    assert list(out.columns) == ["customer_id", "product_id", "product_title", "star_rating", "review_date"]
    no_title = reduce_columns(df.drop(columns=["product_title", "review_date"]))
    assert no_title["product_title"].isna().all() and no_title["review_date"].isna().all()
    with pytest.raises(DataError, match="star_rating"):
        reduce_columns(df.drop(columns=["star_rating"]))


def test_duplicates_exact_rows_then_rereviews_keep_the_latest() -> None:
    df = frame([
        (1, "A", "a", 5, "2015-01-01"),  # 0
        (1, "A", "a", 5, "2015-01-01"),  # 1 exact duplicate of 0
        (1, "A", "a", 2, "2015-03-01"),  # 2 re-review, latest -> kept
        (1, "A", "a", 4, "2015-02-01"),  # 3 re-review, older
        (2, "A", "a", 3, "2015-01-05"),  # 4
        (2, "B", "b", 1, "2015-01-05"),  # 5 same day re-reviews of B: the later line wins
        (2, "B", "b", 4, "2015-01-05"),  # 6
        (3, "C", "c", 5, None),          # 7 no date counts as oldest
        (3, "C", "c", 3, "2014-01-01"),  # 8
    ])  # fmt: skip
    out, stats = drop_duplicates(df)
    assert stats == {"exact_duplicates_removed": 1, "rereviews_removed": 4}
    kept = list(zip(out["customer_id"], out["product_id"].astype(str), out["star_rating"], strict=True))
    assert kept == [(1, "A", 2.0), (2, "A", 3.0), (2, "B", 4.0), (3, "C", 3.0)]  # file order preserved


def test_duplicates_against_brute_force_on_random_frames() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 60
        df = frame([(int(rng.integers(0, 4)), f"P{rng.integers(0, 4)}", "t", int(rng.integers(1, 3)),
                     f"2015-01-{int(rng.integers(1, 4)):02d}") for _ in range(n)])  # fmt: skip
        out, stats = drop_duplicates(df)
        # brute force: walk the rows; for each (customer, product) keep the max (date, line)
        seen_exact: set = set()
        latest: dict = {}
        exact = 0
        for i, r in enumerate(df.itertuples(index=False)):
            key = (r.customer_id, r.product_id, r.product_title, r.star_rating, r.review_date)
            if key in seen_exact:
                exact += 1
                continue
            seen_exact.add(key)
            pair = (r.customer_id, r.product_id)
            if pair not in latest or (r.review_date, i) >= latest[pair][0]:
                latest[pair] = ((r.review_date, i), i)
        keep = sorted(i for _, i in latest.values())
        assert stats["exact_duplicates_removed"] == exact
        assert stats["rereviews_removed"] == n - exact - len(keep)
        pd.testing.assert_frame_equal(out, df.iloc[keep].reset_index(drop=True))


# ---------------------------------------------------------------------------------------------
# long tail
# ---------------------------------------------------------------------------------------------
def test_long_tail_filter_is_the_labs_single_pass() -> None:
    # customer 1: 3 ratings, customer 2: 2, customer 3: 1; product A: 3, B: 2, C: 1
    df = frame([(1, "A", "", 5, "2015-01-01"), (1, "B", "", 5, "2015-01-02"), (1, "C", "", 5, "2015-01-03"),
                (2, "A", "", 5, "2015-01-01"), (2, "B", "", 5, "2015-01-02"), (3, "A", "", 5, "2015-01-01")])  # fmt: skip
    out, passes = filter_long_tail(df, 2, 2)
    # counts are taken once: customers {1, 2}, products {A, B}
    assert passes == 1
    assert sorted(zip(out["customer_id"], out["product_id"].astype(str), strict=True)) == [(1, "A"), (1, "B"), (2, "A"), (2, "B")]


def test_long_tail_filter_repeat_until_stable_is_a_k_core() -> None:
    rng = np.random.default_rng(0)
    df = frame([(int(rng.integers(0, 40)), f"P{int(rng.zipf(1.6)) % 30}", "", 4, "2015-01-01") for _ in range(400)])
    df = drop_duplicates(df)[0]
    out, passes = filter_long_tail(df, 4, 5, repeat_until_stable=True)
    c = out["customer_id"].value_counts()
    p = out["product_id"].astype(str).value_counts()
    assert c.min() >= 4 and p.min() >= 5 and passes >= 1
    once, _ = filter_long_tail(df, 4, 5)
    assert len(out) <= len(once)


def test_empty_filter_result_names_thresholds_and_counts() -> None:
    df = frame([(1, "A", "", 5, "2015-01-01"), (1, "B", "", 5, "2015-01-02"), (2, "A", "", 5, "2015-01-01")])
    with pytest.raises(DataError) as err:
        filter_long_tail(df, 18, 95)
    msg = str(err.value)
    assert ">= 18" in msg and ">= 95" in msg
    assert "0 of 2 customers" in msg and "0 of 2 videos" in msg and "most active: 2" in msg
    assert "--min-customer-ratings" in msg


# ---------------------------------------------------------------------------------------------
# index, split, encode
# ---------------------------------------------------------------------------------------------
def test_mappings_both_ways_and_titles() -> None:
    df = frame([(30, "B", "Bee", 5, "2015-01-01"), (10, "A", "Old A", 4, "2015-01-01"), (10, "A", "New A", 4, "2015-01-02"),
                (20, "C", None, 3, "2015-01-01")])  # fmt: skip
    m = build_mappings(df)
    assert m.customer_ids.tolist() == [10, 20, 30] and m.product_ids.tolist() == ["A", "B", "C"]
    assert m.product_titles.tolist() == ["New A", "Bee", None]
    assert m.user_index([30, "10", "nope", 99]).tolist() == [2, 0, -1, -1]
    assert m.item_index(["C", "A", "Z"]).tolist() == [2, 0, -1]
    idx = index_ratings(df, m)
    assert idx["user"].tolist() == [2, 0, 0, 1] and idx["item"].tolist() == [1, 0, 0, 2]


def test_mappings_save_load_round_trip(tmp_path) -> None:
    m = build_mappings(frame([(5, "X", "x", 5, "2015-01-01"), (7, "Y", None, 5, "2015-01-01")]))
    m.save(tmp_path)
    back = Mappings.load(tmp_path)
    assert back.customer_ids.tolist() == [5, 7] and back.product_ids.tolist() == ["X", "Y"]
    assert back.product_titles.tolist() == ["x", None]


def test_leave_last_out_takes_the_latest_by_date_with_ties_by_file_order() -> None:
    df = frame([
        (1, "A", "", 5, "2015-03-01"),  # 0 latest of customer 1 -> test
        (1, "B", "", 4, "2015-01-01"),  # 1
        (2, "A", "", 3, "2015-02-01"),  # 2 tie on the latest date ...
        (2, "B", "", 2, "2015-02-01"),  # 3 ... the later line wins -> test
        (2, "C", "", 2, "2014-02-01"),  # 4
        (3, "C", "", 1, "2015-02-01"),  # 5 single rating: stays in training
        (4, "A", "", 1, None),          # 6 no date = oldest
        (4, "B", "", 1, "2010-01-01"),  # 7 -> test
    ])  # fmt: skip
    idx = index_ratings(df, build_mappings(df))
    train, test, stats = split_leave_last_out(idx)
    assert sorted(zip(test["customer_id"], test["product_id"].astype(str), strict=True)) == [(1, "A"), (2, "B"), (4, "B")]
    assert len(train) == 5 and stats == {"test_customers_single_rating": 1, "test_date_ties": 1}
    # brute force: per customer with >= 2 ratings, max over (date (NaT lowest), line)
    key = [(pd.Timestamp.min if pd.isna(d) else d, i) for i, d in enumerate(df["review_date"])]
    expected = {c: max((key[i], i) for i in g.index)[1] for c, g in df.groupby("customer_id") if len(g) > 1}
    assert sorted(expected.values()) == sorted(idx.index[idx.set_index(["customer_id", "product_id"]).index.isin(
        test.set_index(["customer_id", "product_id"]).index)].tolist())  # fmt: skip


def test_random_split_is_seeded_and_disjoint() -> None:
    df = frame([(i % 7, f"P{i % 11}", "", 5, "2015-01-01") for i in range(77)])
    idx = index_ratings(df, build_mappings(df))
    a_train, a_test, _ = split_random(idx, 0.25, seed=1)
    b_train, b_test, _ = split_random(idx, 0.25, seed=1)
    pd.testing.assert_frame_equal(a_test, b_test)
    assert len(a_test) == round(77 * 0.25) and len(a_train) + len(a_test) == 77
    pairs = lambda f: set(zip(f["user"], f["item"], strict=True))  # noqa: E731
    assert not pairs(a_train) & pairs(a_test)


def test_explicit_split_drops_unknown_and_removes_overlap_from_training() -> None:
    df = frame([(1, "A", "", 5, "2015-01-01"), (1, "B", "", 4, "2015-01-02"), (2, "A", "", 3, "2015-01-01")])
    m = build_mappings(df)
    test_df = frame([(1, "B", "", 4, "2015-01-02"), (9, "A", "", 1, "2015-01-01"), (2, "Z", "", 1, "2015-01-01")])
    train, test, stats = split_explicit(index_ratings(df, m), test_df, m)
    assert stats == {"explicit_test_rows_dropped": 2, "explicit_test_overlap_removed": 1}
    assert list(zip(test["user"], test["item"], strict=True)) == [(0, 1)]
    assert (0, 1) not in set(zip(train["user"], train["item"], strict=True))


def test_prepare_warns_once_and_reports_dropped_test_rows(caplog) -> None:
    rng = np.random.default_rng(4)
    rows = [(int(c), f"P{int(p)}", "", 4, f"2015-01-{int(d):02d}")
            for c, p, d in zip(rng.integers(0, 30, 600), rng.integers(0, 12, 600), rng.integers(1, 28, 600), strict=True)]  # fmt: skip
    train_df = frame(rows)
    test_df = frame([(c, p, "", 3, "2015-02-01") for c, p in [(0, "P1"), (99, "P1"), (1, "Q9"), (2, "P2"), (98, "Q8")]])
    with caplog.at_level("WARNING", logger="recsys"):
        prepared = prepare(train_df, PrepareConfig(min_customer_ratings=1, min_product_ratings=1), test_frame=test_df)
    r = prepared.report
    assert (r.explicit_test_rows_dropped, r.test_rows) == (3, 2)  # customers 99/98 and video Q9 are unknown
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warnings == ["dropped 3 of 5 test ratings: their customer or video is not in the prepared training data "
                        "(unknown id, or removed by the long-tail filter)"]  # fmt: skip
    assert "3 test ratings dropped" in r.summary_lines()[-1]
    from recsys.pipeline import _data_metrics

    d = _data_metrics(SimpleNamespace(rows_read=600, rows_skipped=0, skip_reasons={}, skipped_lines=[], bad_dates=2,
                                      invalid_utf8_lines=1), prepared)  # fmt: skip
    assert (d["test_rows_dropped"], d["bad_dates"], d["invalid_utf8_lines"]) == (3, 2, 1)
    assert d["train_rows_removed_overlapping_test"] == r.explicit_test_overlap_removed
    assert d["rows_removed_by_filter"] == 0


def test_one_hot_equals_the_labs_per_row_encoding() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 13, 200), rng.integers(0, 7, 200)
    X = one_hot(users, items, 13, 7)
    lab = sp.lil_matrix((200, 20), dtype=np.float32)
    for r, (u, i) in enumerate(zip(users, items, strict=True)):
        lab[r, u] = 1
        lab[r, 13 + i] = 1
    assert X.dtype == np.float32 and X.format == "csr" and X.shape == (200, 20)
    assert (X != lab.tocsr()).nnz == 0
    with pytest.raises(DataError):
        one_hot([13], [0], 13, 7)


def test_labels_regression_and_five_star_classification() -> None:
    r = np.array([1, 4, 5, 3.5, 5])
    assert labels(r).tolist() == [1, 4, 5, 3.5, 5]
    assert labels(r, "classification").tolist() == [0, 0, 1, 0, 1]
    assert labels(r, "classification", threshold=4).tolist() == [0, 1, 1, 0, 1]
    with pytest.raises(ConfigError):
        labels(r, "ranking")


def test_prepare_config_validation() -> None:
    with pytest.raises(ConfigError, match="min_customer_ratings"):
        PrepareConfig(min_customer_ratings=0).validate()
    with pytest.raises(ConfigError, match="split"):
        PrepareConfig(split="temporal").validate()


# ---------------------------------------------------------------------------------------------
# the whole stage on the built-in data, through the real file and loader
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("data") / "tiny.tsv.gz"
    info = write_reviews_tsv(generate_reviews("tiny", seed=0), path, seed=0)
    return path, info


def test_loader_reports_exactly_the_generators_malformed_lines(tiny_file) -> None:
    path, info = tiny_file
    df, report = load_amazon_reviews(path, max_examples=1000)
    assert report.rows_skipped == len(info.malformed_line_numbers)
    assert [n for n, _ in report.skipped_lines] == sorted(info.malformed_line_numbers)
    assert report.invalid_utf8_lines == len(info.non_utf8_line_numbers)
    assert report.rows_read == info.valid_rows == len(df)


def test_prepare_on_the_builtin_data_against_brute_force(tiny_file) -> None:
    path, _ = tiny_file
    df, _ = load_amazon_reviews(path)
    p = prepare(df, PrepareConfig())
    r = p.report
    # brute force on plain Python tuples
    rows = list(zip(df["customer_id"], df["product_id"].astype(str), df["product_title"].astype(str),
                    df["star_rating"], df["review_date"], itertools.count(), strict=False))  # fmt: skip
    latest: dict = {}
    exact = set()
    n_exact = 0
    for c, pid, t, s, d, i in rows:
        if (c, pid, t, s, d) in exact:
            n_exact += 1
            continue
        exact.add((c, pid, t, s, d))
        k = (pd.Timestamp.min if pd.isna(d) else d, i)
        if (c, pid) not in latest or k >= latest[(c, pid)]:
            latest[(c, pid)] = k
    assert r.exact_duplicates_removed == n_exact
    assert r.rows_after_dedupe == len(latest)
    cust = pd.Series([c for c, _ in latest]).value_counts()
    prod = pd.Series([q for _, q in latest]).value_counts()
    kept = [(c, q) for c, q in latest if cust[c] >= 18 and prod[q] >= 95]
    assert r.rows_after_filter == len(kept) == len(p.ratings)
    assert r.customers == len({c for c, _ in kept}) and r.products == len({q for _, q in kept})
    assert r.train_rows + r.test_rows == len(kept) and r.test_rows == r.customers
    X = p.design_matrix("train")
    assert X.shape == (r.train_rows, r.customers + r.products) and X.nnz == 2 * r.train_rows
    assert r.rating_distribution_after == {f"{k:g}": int(v) for k, v in p.ratings["star_rating"].value_counts().sort_index().items()}


def test_duplicate_vocabulary_agrees_with_brute_force_everywhere(tiny_file) -> None:
    """Exact duplicate rows and re-reviews: the same two numbers in explore, prepare and the summary."""
    from recsys.data.explore import explore
    from recsys.pipeline import RunResult, _data_metrics

    path, _ = tiny_file
    df, load_report = load_amazon_reviews(path)
    # brute force with pandas, independent of the code under test
    cols = ["customer_id", "product_id", "product_title", "star_rating", "review_date"]
    exact = int(df.duplicated(cols).sum())
    rereviews = int(df.drop_duplicates(cols).duplicated(["customer_id", "product_id"]).sum())
    assert exact > 0 and rereviews > 0
    e = explore(df, load_report)
    assert (e.exact_duplicate_rows, e.rereviews) == (exact, rereviews)
    p = prepare(df, PrepareConfig())
    assert (p.report.exact_duplicates_removed, p.report.rereviews_removed) == (exact, rereviews)
    assert p.report.rows_after_dedupe == len(df) - exact - rereviews
    metrics = {"data": _data_metrics(load_report, p)}
    line = RunResult(config=None, out_dir=None, metrics=metrics).summary_lines()[0]
    assert f"{exact:,} exact duplicate rows and {rereviews:,} re-reviews removed" in line
