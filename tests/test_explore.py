"""Tests of the exploration stage (recsys.data.explore) and its plots (recsys.plots).

Expected values are computed by hand for tiny frames, or by brute force (Counter, np.quantile,
pandas' own ``duplicated``) -- never by the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from recsys.data.explore import QUANTILES, Exploration, explore, review_counts
from recsys.errors import DataError
from recsys.plots import (
    EXPLORATION_PLOTS,
    plot_count_distribution,
    plot_exploration,
    plot_rating_distribution,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATINGS = ["customer_id", "product_id", "product_title", "star_rating", "review_date"]


def ratings_frame(rows: list[tuple]) -> pd.DataFrame:
    """A ratings frame with the loader's dtypes from (customer, product, title, star, date) rows."""
    cust, prod, title, star, date = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "customer_id": np.array(cust, dtype=np.int64),
            "product_id": pd.Categorical(prod),
            "product_title": pd.Categorical(title),
            "star_rating": np.array(star, dtype=np.float32),
            "review_date": pd.to_datetime(list(date)),
        }
    )


@pytest.fixture
def tiny() -> pd.DataFrame:
    nan, nat = np.nan, None
    return ratings_frame(
        [
            (1, "A", "a", 5.0, "2014-01-05"),  # 0
            (1, "A", "a", 5.0, "2014-01-05"),  # 1 whole duplicate of 0
            (1, "A", "a", 5.0, "2014-03-01"),  # 2 same as 0 except the date: re-review
            (1, "A", "a", 4.0, "2014-03-02"),  # 3 re-review, new rating
            (2, "A", nan, 3.0, nat),  # 4
            (2, "A", nan, 3.0, nat),  # 5 whole duplicate of 4 (NaN == NaN, NaT == NaT)
            (2, "B", "b", 1.0, "2015-03-10"),  # 6
            (3, "B", "b", 5.0, "2015-07-04"),  # 7
            (3, "C", "c", 2.0, "2013-12-31"),  # 8
            (4, "C", "c", 5.0, "2015-03-11"),  # 9
        ]
    )


# --------------------------------------------------------------------------------------------
# explore: hand-computed values


def test_shape_and_nulls(tiny):
    e = explore(tiny)
    assert (e.n_rows, e.n_columns, e.n_ratings) == (10, 5, 10)
    assert e.nulls == {
        "customer_id": 0,
        "product_id": 0,
        "product_title": 2,
        "star_rating": 0,
        "review_date": 2,
    }
    assert e.missing_dates == 2


def test_duplicates(tiny):
    e = explore(tiny)
    assert e.exact_duplicate_rows == 2  # rows 1 and 5
    assert e.rereviews == 2  # rows 2 and 3: (1, A) again once its exact duplicate is gone
    assert "exact duplicate rows: 2; re-reviews (same customer and video again): 2" in e.summary_lines()


def test_ratings(tiny):
    e = explore(tiny)
    assert e.rating_counts == {1.0: 1, 2.0: 1, 3.0: 2, 4.0: 1, 5.0: 5}
    assert list(e.rating_counts) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert e.rating_shares == pytest.approx({1.0: 0.1, 2.0: 0.1, 3.0: 0.2, 4.0: 0.1, 5.0: 0.5})
    assert all(type(k) is float for k in e.rating_counts)


def test_dates(tiny):
    e = explore(tiny)
    expected_months = dict.fromkeys(range(1, 13), 0) | {1: 2, 3: 4, 7: 1, 12: 1}
    assert e.reviews_by_month == expected_months
    assert e.busiest_month == 3
    assert e.reviews_by_year == {2013: 1, 2014: 4, 2015: 3}
    assert (e.busiest_year, e.quietest_year) == (2014, 2013)
    # every month from 2013-12 to 2015-07, zero-filled
    assert len(e.reviews_by_year_month) == 20
    assert list(e.reviews_by_year_month)[:4] == ["2013-12", "2014-01", "2014-02", "2014-03"]
    nonzero = {k: v for k, v in e.reviews_by_year_month.items() if v}
    assert nonzero == {"2013-12": 1, "2014-01": 2, "2014-03": 2, "2015-03": 2, "2015-07": 1}
    assert e.busiest_year_month == "2014-01"  # three months tie with 2: the earliest wins
    assert (e.date_min, e.date_max) == ("2013-12-31", "2015-07-04")
    assert sum(e.reviews_by_month.values()) == 8  # the two NaT rows are left out


def test_ties_and_gap_years():
    frame = ratings_frame(
        [
            (1, "A", "a", 5.0, "2010-05-01"),
            (2, "A", "a", 5.0, "2010-02-01"),
            (3, "A", "a", 5.0, "2012-05-01"),
            (4, "A", "a", 5.0, "2012-02-01"),
            (5, "A", "a", 5.0, "2013-08-01"),
            (6, "A", "a", 5.0, "2015-09-01"),
        ]
    )
    e = explore(frame)
    assert e.reviews_by_year == {2010: 2, 2011: 0, 2012: 2, 2013: 1, 2014: 0, 2015: 1}
    assert e.busiest_year == 2010  # 2010 and 2012 tie: earliest
    assert e.quietest_year == 2013  # 2013 and 2015 tie; gap years (0 reviews) do not count
    assert e.busiest_month == 2  # Feb and May both have 2: earliest
    assert e.busiest_year_month == "2010-02"


def test_counts_and_quantiles(tiny):
    e = explore(tiny)
    per_customer = np.array(list(Counter(tiny["customer_id"].tolist()).values()))
    per_product = np.array(list(Counter(tiny["product_id"].astype(str).tolist()).values()))
    assert sorted(per_customer) == [1, 2, 3, 4] and sorted(per_product) == [2, 2, 6]
    assert (e.n_customers, e.n_products) == (4, 3)
    assert list(e.reviews_per_customer_quantiles) == [float(q) for q in QUANTILES]
    assert list(e.reviews_per_customer_quantiles.values()) == pytest.approx(
        np.quantile(per_customer, QUANTILES)
    )
    assert list(e.reviews_per_product_quantiles.values()) == pytest.approx(
        pd.Series(per_product).quantile(list(QUANTILES)).to_numpy()
    )
    assert e.reviews_per_customer_quantiles[0.5] == 2.5
    assert e.reviews_per_product_quantiles[0.5] == 2.0
    assert e.reviews_per_product_quantiles[1.0] == 6.0

    customers, products = review_counts(tiny)
    assert sorted(customers.tolist()) == [1, 2, 3, 4]
    assert sorted(products.tolist()) == [2, 2, 6]


def test_id_dtypes_give_same_answers(tiny):
    reference = explore(tiny).to_dict()
    variants = [
        tiny.astype({"customer_id": "category"}),
        tiny.astype({"customer_id": "str", "product_id": "str", "product_title": "str"}),
        tiny.astype({"product_id": "object"}),
    ]
    # unused categories must not count as customers/products
    extra = tiny.copy()
    extra["customer_id"] = pd.Categorical(extra["customer_id"], categories=[9, 4, 3, 2, 1, 0])
    extra["product_id"] = extra["product_id"].cat.add_categories(["Z", "Y"])
    variants.append(extra)
    for frame in variants:
        assert explore(frame).to_dict() == reference


def test_duplicates_match_pandas_on_random_frame():
    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(0, 40, n),
            "product_id": pd.Categorical(rng.choice(list("ABCDEFG"), n)),
            "product_title": pd.Categorical(rng.choice(["x", "y", None], n)),
            "star_rating": rng.choice(np.array([1, 2, 3, 4, 5, np.nan], np.float32), n),
            "review_date": pd.to_datetime(rng.integers(0, 8, n), unit="D", origin="2020-01-01"),
        }
    )
    frame.loc[rng.random(n) < 0.2, "review_date"] = pd.NaT
    e = explore(frame)
    assert e.exact_duplicate_rows == frame.duplicated(RATINGS).sum()
    distinct = frame.drop_duplicates(RATINGS)
    assert e.rereviews == distinct.duplicated(["customer_id", "product_id"]).sum()
    assert e.rereviews > 100 and e.exact_duplicate_rows > 100
    assert e.rating_counts == {
        float(k): int(v) for k, v in frame["star_rating"].value_counts().sort_index().items()
    }


def test_report_given(tiny):
    report = SimpleNamespace(
        columns=[f"col{i}" for i in range(15)],
        rows_read=12,
        null_counts={"product_title": 2, "review_body": np.int64(7)},
    )
    with_report = explore(tiny, report)
    without = explore(tiny)
    assert (with_report.n_rows, with_report.n_columns, with_report.n_ratings) == (12, 15, 10)
    assert with_report.nulls == {"product_title": 2, "review_body": 7}
    # everything computed from the frame is unchanged
    skip = {"n_rows", "n_columns", "nulls"}
    a, b = with_report.to_dict(), without.to_dict()
    assert {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }
    # a partial report: shape and nulls fall back to the frame
    partial = explore(tiny, SimpleNamespace(rows_read=None))
    assert (partial.n_rows, partial.n_columns) == (10, 5)
    assert partial.nulls == without.nulls


def test_no_dates():
    frame = ratings_frame([(1, "A", "a", 4.0, None), (2, "B", "b", 5.0, None)])
    e = explore(frame)
    assert e.reviews_by_month == dict.fromkeys(range(1, 13), 0)
    assert e.reviews_by_year == {} and e.reviews_by_year_month == {}
    assert e.busiest_month is e.busiest_year is e.quietest_year is e.date_min is None
    assert e.missing_dates == 2 and e.nulls["review_date"] == 2
    assert any("dates: none" in line for line in e.summary_lines())
    # no date column at all
    e2 = explore(frame.drop(columns=["review_date", "product_title"]))
    assert e2.busiest_year is None and (e2.exact_duplicate_rows, e2.rereviews) == (0, 0)


def test_errors(tiny):
    with pytest.raises(DataError, match="empty"):
        explore(tiny.iloc[:0])
    with pytest.raises(DataError, match="star_rating"):
        explore(tiny.drop(columns="star_rating"))
    with pytest.raises(DataError, match="datetime64"):
        explore(tiny.assign(review_date=tiny["review_date"].astype(str)))
    with pytest.raises(DataError, match="numeric"):
        explore(tiny.assign(star_rating=tiny["star_rating"].astype(str)))
    with pytest.raises(DataError):
        explore([1, 2, 3])  # type: ignore[arg-type]


def test_to_dict_and_summary(tiny):
    e = explore(tiny)
    d = json.loads(json.dumps(e.to_dict()))  # plain json, no default= needed
    assert d["rating_counts"] == {"1.0": 1, "2.0": 1, "3.0": 2, "4.0": 1, "5.0": 5}
    assert d["reviews_by_month"]["3"] == 4
    assert d["reviews_per_customer_quantiles"]["0.5"] == 2.5
    assert d["busiest_year_month"] == "2014-01"
    assert set(d) == set(Exploration.__dataclass_fields__)
    lines = e.summary_lines()
    assert all(isinstance(line, str) for line in lines)
    text = "\n".join(lines)
    assert "rows: 10 x 5 columns" in text
    assert "busiest month of the year: Mar" in text
    assert "quietest year: 2013" in text


# --------------------------------------------------------------------------------------------
# plots


def _assert_png(path, shape):
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape == shape


def test_plot_exploration(tiny, tmp_path):
    out = tmp_path / "plots"
    paths = plot_exploration(explore(tiny), tiny, out)
    assert set(paths) == set(EXPLORATION_PLOTS)
    assert {p.name for p in paths.values()} == {
        "rating_distribution.png",
        "reviews_by_month.png",
        "reviews_by_year.png",
        "reviews_per_customer.png",
        "reviews_per_product.png",
    }
    assert sorted(os.listdir(out)) == sorted(EXPLORATION_PLOTS.values())  # no temp files left
    for name, path in paths.items():
        wide = name.startswith("reviews_per_")
        _assert_png(path, (440, 1100, 4) if wide else (440, 770, 4))
    # writing again replaces the files in place
    plot_exploration(explore(tiny), tiny, out)
    assert sorted(os.listdir(out)) == sorted(EXPLORATION_PLOTS.values())


def test_plots_without_dates_and_with_half_stars(tmp_path):
    frame = ratings_frame(
        [(1, "A", "a", 0.5, None), (1, "B", "b", 3.5, None), (2, "A", "a", 5.0, None)]
    )
    paths = plot_exploration(explore(frame), frame, tmp_path, item_label="movie")
    for path in paths.values():
        _assert_png(path, matplotlib.image.imread(path).shape)
        assert path.stat().st_size > 1000


def test_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    target = tmp_path / "rating_distribution.png"
    target.write_bytes(b"old")
    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_rating_distribution(explore(tiny), target)
    assert os.listdir(tmp_path) == ["rating_distribution.png"]
    assert target.read_bytes() == b"old"


def test_count_distribution_errors(tmp_path):
    with pytest.raises(DataError, match="empty"):
        plot_count_distribution(np.array([], dtype=np.int64), tmp_path / "x.png", what="customer")
    with pytest.raises(DataError, match=">= 1"):
        plot_count_distribution(np.array([0, 3]), tmp_path / "x.png", what="customer")
    with pytest.raises(DataError, match="integers"):
        plot_count_distribution(np.array([1.5, 3.0]), tmp_path / "x.png", what="customer")
    assert os.listdir(tmp_path) == []
    single = plot_count_distribution(np.array([1]), tmp_path / "one.png", what="customer")
    _assert_png(single, (440, 1100, 4))


def test_plots_do_not_touch_pyplot(tmp_path):
    """Plotting never imports pyplot (no global figures, backend left alone for notebooks)."""
    code = (
        "import sys, pandas as pd, numpy as np\n"
        "from recsys.data.explore import explore\n"
        "from recsys.plots import plot_exploration\n"
        "f = pd.DataFrame({'customer_id': [1, 2, 2], 'product_id': ['a', 'a', 'b'],\n"
        "    'product_title': ['x', 'x', 'y'], 'star_rating': np.float32([5, 4, 3]),\n"
        "    'review_date': pd.to_datetime(['2014-01-01', '2015-02-02', None])})\n"
        f"plot_exploration(explore(f), f, {str(tmp_path)!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert len(os.listdir(tmp_path)) == len(EXPLORATION_PLOTS)


def test_no_pyplot_figures_left_open(tiny, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    plot_exploration(explore(tiny), tiny, tmp_path)
    assert plt.get_fignums() == before
