"""Tests of the built-in synthetic dataset (recsys.data.synthetic).

Expectations are independent of the generator's internals: the schema of the real Amazon
reviews file, the lab's long-tail filter written out by brute force, simple recommenders
built here from scratch, and the raw bytes of the written file.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.data.schema import AMAZON_COLUMNS
from recsys.data.synthetic import (
    GENERATOR_VERSION,
    MALFORMED_REASONS,
    PRESETS,
    GeneratorConfig,
    WriteInfo,
    generate_reviews,
    write_preset,
    write_reviews_tsv,
)
from recsys.errors import ConfigError, DataError

INT_COLUMNS = ("customer_id", "product_parent", "star_rating", "helpful_votes", "total_votes")
STR_COLUMNS = tuple(c for c in AMAZON_COLUMNS if c not in INT_COLUMNS)
NULLABLE = ("review_headline", "review_body", "review_date")


# --------------------------------------------------------------------------------------------
# Helpers (deliberately simple re-implementations, not the library's code)


def long_tail_filter(df: pd.DataFrame, min_customer: int = 18, min_product: int = 95) -> pd.DataFrame:
    """The lab's filter: drop (customer, product) repeats keeping the last, count once, filter."""
    dedup = df.drop_duplicates(subset=["customer_id", "product_id"], keep="last")
    c_counts = dedup["customer_id"].value_counts()
    p_counts = dedup["product_id"].value_counts()
    keep = dedup["customer_id"].map(c_counts).ge(min_customer) & dedup["product_id"].map(
        p_counts
    ).ge(min_product)
    return dedup[keep]


def sizes(df: pd.DataFrame) -> tuple[int, int, int]:
    return df["customer_id"].nunique(), df["product_id"].nunique(), len(df)


def leave_last_out(filtered: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each customer's latest review (by date, then row order) is the test row."""
    ordered = filtered.assign(_d=filtered["review_date"].fillna("")).sort_values(
        ["customer_id", "_d"], kind="stable"
    )
    test = ordered.groupby("customer_id").tail(1)
    return ordered.drop(test.index), test


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    return generate_reviews("tiny", seed=0)


@pytest.fixture(scope="module")
def default() -> pd.DataFrame:
    return generate_reviews("default", seed=0)


@pytest.fixture(scope="module")
def default_split(default: pd.DataFrame) -> dict:
    """Leave-last-out split of the filtered default preset, as index arrays."""
    train, test = leave_last_out(long_tail_filter(default))
    customers = pd.Index(pd.concat([train, test])["customer_id"].unique())
    items = pd.Index(pd.concat([train, test])["product_id"].unique())
    return {
        "n_users": len(customers),
        "n_items": len(items),
        "u": customers.get_indexer(train["customer_id"]),
        "i": items.get_indexer(train["product_id"]),
        "r": train["star_rating"].to_numpy(np.float64),
        "ut": customers.get_indexer(test["customer_id"]),
        "it": items.get_indexer(test["product_id"]),
        "rt": test["star_rating"].to_numpy(np.float64),
        "train": train,
        "test": test,
    }


# --------------------------------------------------------------------------------------------
# Schema


def test_columns_and_dtypes(tiny: pd.DataFrame) -> None:
    assert tuple(tiny.columns) == AMAZON_COLUMNS
    for col in INT_COLUMNS:
        assert tiny[col].dtype == np.int64, col
    for col in STR_COLUMNS:
        assert tiny[col].dtype == "str", col
        assert pd.api.types.is_string_dtype(tiny[col]), col


def test_sizes_match_config(tiny: pd.DataFrame) -> None:
    cfg = PRESETS["tiny"]
    assert len(tiny) == cfg.n_reviews
    assert tiny["customer_id"].nunique() == cfg.n_customers  # everyone wrote >= 1 review
    assert tiny["product_id"].nunique() <= cfg.n_products


def test_value_ranges_and_formats(tiny: pd.DataFrame) -> None:
    assert set(tiny["marketplace"]) == {"US"}
    assert set(tiny["product_category"]) == {"Digital_Video_Download"}
    assert set(tiny["star_rating"]) == {1, 2, 3, 4, 5}
    assert (tiny["helpful_votes"] >= 0).all()
    assert (tiny["total_votes"] >= tiny["helpful_votes"]).all()
    assert set(tiny["vine"]) == {"N", "Y"} or set(tiny["vine"]) == {"N"}
    assert set(tiny["verified_purchase"]) == {"N", "Y"}
    assert tiny["customer_id"].between(1, 99_999_999).all()
    assert tiny["product_parent"].between(100_000_000, 999_999_999).all()
    assert tiny["product_id"].str.fullmatch(r"B00[0-9A-Z]{7}").all()
    assert tiny["review_id"].str.fullmatch(r"R[0-9A-Z]{12,13}").all()
    dates = tiny["review_date"].dropna()
    assert dates.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    parsed = pd.to_datetime(dates, format="%Y-%m-%d")
    assert parsed.min() >= pd.Timestamp("1995-01-01")
    assert parsed.max() <= pd.Timestamp("2015-12-31")


def test_nulls_only_where_allowed(tiny: pd.DataFrame) -> None:
    nulls = tiny.isna().sum()
    for col in AMAZON_COLUMNS:
        if col in NULLABLE:
            assert 1 <= nulls[col] <= max(5, 0.0002 * len(tiny)), (col, nulls[col])
        else:
            assert nulls[col] == 0, col


def test_no_tabs_or_newlines_in_text(tiny: pd.DataFrame) -> None:
    for col in STR_COLUMNS:
        assert not tiny[col].str.contains(r"[\t\n\r]", regex=True).fillna(False).any(), col


def test_review_text_has_what_a_loader_must_cope_with(tiny: pd.DataFrame) -> None:
    body = tiny["review_body"].dropna()
    for needle in ('"', "'", "<br />", "&amp;", "\\", "é", "★", "😀"):
        assert body.str.contains(needle, regex=False).any(), needle
    assert body.str.startswith('"').any() and body.str.len().max() > 400
    assert tiny["review_headline"].str.startswith('"').any()


def test_review_ids_unique_except_exact_duplicates(tiny: pd.DataFrame) -> None:
    assert tiny.drop_duplicates()["review_id"].is_unique


# --------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_frame(tiny: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate_reviews("tiny", seed=0), tiny)


# The built-in datasets are cached under GENERATOR_VERSION: a change to the bytes written for a
# preset and seed must bump it and these digests; a change to the ratings (not just the review
# text) changes every figure measured on the built-in data.
PINNED_VERSION = 2
PINNED_TSV = {
    0: "0be141373982ec9349903ac81fa4f2b8231e3ff6c3636091f777bf72ce150368",
    1: "b119ac8ef61808dddd57d49cd13b86ba7279791bf433a4e0813c702d73194aaa",
}
PINNED_RATINGS = {
    0: "fcff8eca0d16c622c4009b8f55c2be644a5d6383477cd498cbe50159c819cbb4",
    1: "37adf9c6124fceb6af2022941fff6b88242fc79ce184b023301965dee46be2ad",
}


def ratings_digest(df: pd.DataFrame) -> str:
    core = df[["customer_id", "product_id", "product_title", "star_rating", "review_date"]]
    return hashlib.sha256(core.to_csv(index=False).encode()).hexdigest()


@pytest.mark.parametrize("seed", [0, 1])
def test_output_is_pinned_to_the_generator_version(tmp_path: Path, seed: int) -> None:
    assert GENERATOR_VERSION == PINNED_VERSION
    assert ratings_digest(generate_reviews("tiny", seed=seed)) == PINNED_RATINGS[seed]
    assert sha256(write_preset("tiny", tmp_path / "r.tsv", seed=seed).path) == PINNED_TSV[seed]


@pytest.mark.parametrize("name", ["reviews.tsv", "reviews.tsv.gz"])
def test_same_seed_same_bytes(tmp_path: Path, name: str) -> None:
    a = write_preset("tiny", tmp_path / "a" / name, seed=0)
    b = write_preset("tiny", tmp_path / "b" / name, seed=0)
    assert sha256(a.path) == sha256(b.path)


def test_write_preset_equals_generate_then_write(tmp_path: Path) -> None:
    a = write_preset("tiny", tmp_path / "a.tsv", seed=3)
    b = write_reviews_tsv(generate_reviews("tiny", seed=3), tmp_path / "b.tsv", seed=3)
    assert sha256(a.path) == sha256(b.path)
    assert a.malformed_line_numbers == b.malformed_line_numbers


# --------------------------------------------------------------------------------------------
# Structure


def test_rating_marginal(default: pd.DataFrame) -> None:
    shares = default["star_rating"].value_counts(normalize=True).sort_index()
    target = {1: 0.12, 2: 0.05, 3: 0.08, 4: 0.15, 5: 0.60}
    for star, share in target.items():
        assert shares[star] == pytest.approx(share, abs=0.02), star
    assert shares[1] > shares[2]  # J-shaped


def test_customer_activity_is_heavy_tailed(default: pd.DataFrame) -> None:
    per_customer = default["customer_id"].value_counts()
    assert per_customer.median() <= 2
    assert (per_customer == 1).mean() >= 0.3
    assert per_customer.max() >= 100


def test_popularity_is_zipf_like(default: pd.DataFrame) -> None:
    per_video = default["product_id"].value_counts()
    top = per_video.iloc[: max(1, len(per_video) // 100)]
    assert top.sum() / len(default) >= 0.2  # 20x their fair share (measured: ~0.25)
    # Zipf: log count falls roughly linearly in log rank with slope near -1 over the head.
    ranks = np.arange(1, 201)
    slope = np.polyfit(np.log(ranks), np.log(per_video.iloc[:200].to_numpy()), 1)[0]
    assert -1.5 < slope < -0.5


def test_reviews_grow_over_time_with_winter_peak(default: pd.DataFrame) -> None:
    dates = pd.to_datetime(default["review_date"].dropna())
    per_year = dates.dt.year.value_counts().sort_index()
    assert (np.diff(per_year.loc[2003:2014].to_numpy()) > 0).all()
    assert per_year.loc[2012:2015].sum() / per_year.sum() >= 0.75
    full_years = dates[dates.dt.year <= 2014]
    per_month = full_years.dt.month.value_counts().sort_index()
    winter = per_month.loc[[12, 1]].mean()
    summer = per_month.loc[[5, 6]].mean()
    assert winter > 1.15 * summer


def test_duplicates_and_rereviews_present(default: pd.DataFrame) -> None:
    n = len(default)
    distinct = default.drop_duplicates()
    assert 0.001 * n <= n - len(distinct) <= 0.003 * n
    same_pair = distinct.duplicated(subset=["customer_id", "product_id"]).sum()
    assert 0.003 * n <= same_pair <= 0.008 * n
    # A re-review is a new review: new id, possibly another date or rating.
    pairs = distinct[distinct.duplicated(["customer_id", "product_id"], keep=False)]
    assert pairs.groupby(["customer_id", "product_id"])["review_id"].nunique().min() >= 2


def test_titles_mostly_unique_some_shared(default: pd.DataFrame) -> None:
    products = default.drop_duplicates("product_id")
    titles_per_product = products["product_title"].nunique() / len(products)
    assert 0.95 <= titles_per_product < 1.0
    shared = products.groupby("product_title")["product_id"].nunique()
    assert (shared >= 2).sum() > 0
    assert products["product_title"].str.contains(r" Season \d+", regex=True).mean() > 0.1


def test_latest_review_date_ties_rare_but_possible(default_split: dict) -> None:
    train, test = default_split["train"], default_split["test"]
    last_train_date = train.groupby("customer_id")["_d"].max()
    test_date = test.set_index("customer_id")["_d"]
    tie_share = (last_train_date.reindex(test_date.index) == test_date).mean()
    assert 0 < tie_share < 0.1


# --------------------------------------------------------------------------------------------
# Something to learn


def test_post_filter_floors_tiny(tiny: pd.DataFrame) -> None:
    customers, videos, ratings = sizes(long_tail_filter(tiny))
    # a catalogue well above the default K = 100: a top-100 list is not every video
    assert customers >= 300 and videos >= 180 and ratings >= 15_000, (customers, videos, ratings)
    assert customers <= 600 and videos <= 300 and ratings <= 30_000  # and still quick to run


def test_post_filter_floors_default(default: pd.DataFrame) -> None:
    customers, videos, ratings = sizes(long_tail_filter(default))
    assert customers >= 5_000 and videos >= 1_000 and ratings >= 150_000
    # ...but small enough for the full FM + k-NN workflow to stay quick.
    assert customers <= 10_000 and videos <= 2_500 and ratings <= 300_000


def _hit_rate_at_10(scores: np.ndarray, seen: sp.csr_matrix, target: np.ndarray) -> float:
    scores = np.array(scores, dtype=np.float64)
    scores[seen.nonzero()] = -np.inf
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return float((top == target[:, None]).any(axis=1).mean())


def test_latest_video_predictable_beyond_popularity(default_split: dict) -> None:
    s = default_split
    X = sp.csr_matrix(
        (np.ones(len(s["u"])), (s["u"], s["i"])), shape=(s["n_users"], s["n_items"])
    )
    seen = X[s["ut"]]
    popularity = np.asarray(X.sum(axis=0)).ravel()
    pop_hr = _hit_rate_at_10(np.tile(popularity, (len(s["ut"]), 1)), seen, s["it"])
    norms = np.sqrt(popularity) + 1e-9
    cosine = (X.T @ X).toarray() / norms[:, None] / norms[None, :]
    np.fill_diagonal(cosine, 0.0)
    knn_hr = _hit_rate_at_10(seen @ cosine, seen, s["it"])
    assert pop_hr > 0.05  # popularity is a real signal...
    assert knn_hr > 1.3 * pop_hr, (knn_hr, pop_hr)  # ...but taste is a stronger one


def test_ratings_depend_on_customer_and_match(default_split: dict) -> None:
    s = default_split
    u, i, r, ut, it, rt = s["u"], s["i"], s["r"], s["ut"], s["it"], s["rt"]
    n_users, n_items = s["n_users"], s["n_items"]
    mu = r.mean()
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(5):  # regularised user and item biases
        bu = np.bincount(u, r - mu - bi[i], n_users) / (np.bincount(u, minlength=n_users) + 5)
        bi = np.bincount(i, r - mu - bu[u], n_items) / (np.bincount(i, minlength=n_items) + 5)
    residual = r - mu - bu[u] - bi[i]
    # Item-item neighbourhood model on the residuals: the match between customer and video.
    R = sp.csr_matrix((residual, (u, i)), shape=(n_users, n_items))
    B = sp.csr_matrix((np.ones_like(residual), (u, i)), shape=(n_users, n_items))
    co = (B.T @ B).toarray()
    sq = np.asarray(R.multiply(R).sum(axis=0)).ravel()
    sim = (R.T @ R).toarray() / np.sqrt(np.outer(sq, sq) + 1e-9) * co / (co + 50)
    np.fill_diagonal(sim, 0.0)
    S = sim[:, it].T
    numer = np.asarray(R[ut].multiply(S).sum(axis=1)).ravel()
    denom = np.asarray(B[ut].multiply(np.abs(S)).sum(axis=1)).ravel()
    base = mu + bu[ut] + bi[it]
    pred = base + numer / (denom + 1.0)

    def rmse(p: np.ndarray) -> float:
        return float(np.sqrt(np.mean((np.clip(p, 1, 5) - rt) ** 2)))

    mean_rmse, bias_rmse, nbr_rmse = rmse(np.full(len(rt), mu)), rmse(base), rmse(pred)
    assert nbr_rmse < 0.9 * mean_rmse, (nbr_rmse, mean_rmse)
    assert nbr_rmse < 0.98 * bias_rmse, (nbr_rmse, bias_rmse)  # the match matters
    # "Rated 5 stars" beats the majority class, thresholding at the training share of 5s.
    is_five = rt == 5
    threshold = np.quantile(pred, 1 - (r == 5).mean())
    accuracy = ((pred > threshold) == is_five).mean()
    majority = max(is_five.mean(), 1 - is_five.mean())
    assert accuracy > majority + 0.05, (accuracy, majority)


# --------------------------------------------------------------------------------------------
# Config


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        generate_reviews("huge")


@pytest.mark.parametrize(
    "changes",
    [
        {"n_reviews": 10},  # fewer reviews than customers
        {"max_reviews_per_customer": 1_000},  # more than half of the products
        {"n_genres": 99},
        {"star_shares": (0.5, 0.5, 0.5, 0.0, 0.0)},
        {"genre_focus": 1.5},
        {"end_date": "1990-01-01"},
        {"n_customers": 0},
        {"quality_sd": 10**400},  # an integer too large for a float
    ],
)
def test_bad_config_is_a_config_error(changes: dict) -> None:
    with pytest.raises(ConfigError):
        generate_reviews(dataclasses.replace(PRESETS["tiny"], **changes))


def test_custom_config() -> None:
    cfg = GeneratorConfig(n_customers=300, n_products=80, n_reviews=2_000, n_genres=6,
                          max_reviews_per_customer=40)  # fmt: skip
    df = generate_reviews(cfg, seed=5)
    assert len(df) == 2_000
    assert df["customer_id"].nunique() == 300
    assert df.groupby("customer_id").size().max() <= 40 + 10  # cap, plus re-reviews/dups


# --------------------------------------------------------------------------------------------
# The written file


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, tiny: pd.DataFrame) -> tuple[WriteInfo, list[bytes]]:
    path = tmp_path_factory.mktemp("tsv") / "reviews.tsv"
    info = write_reviews_tsv(tiny, path, malformed=9, non_utf8=4, seed=7)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return info, data[:-1].split(b"\n")


def test_header_and_line_count(written: tuple[WriteInfo, list[bytes]], tiny: pd.DataFrame) -> None:
    info, lines = written
    assert lines[0] == "\t".join(AMAZON_COLUMNS).encode()
    assert len(lines) == info.n_lines + 1
    assert info.n_lines == len(tiny) + 9
    assert info.valid_rows == len(tiny)
    assert len(info.malformed_line_numbers) == 9
    assert len(info.non_utf8_line_numbers) == 4


def _line_problem(line: bytes) -> str | None:
    """Why a data line is malformed, judged from its bytes alone (None if it is valid)."""
    fields = line.split(b"\t")
    if len(fields) > 15:
        return "too many fields"
    if len(fields) < 15:
        return "too few fields"
    star = fields[7]
    if not star.isdigit():
        return "non-numeric star_rating"
    if not 1 <= int(star) <= 5:
        return "star_rating outside 1-5"
    return None


def test_malformed_lines_are_where_reported(written: tuple[WriteInfo, list[bytes]]) -> None:
    info, lines = written
    found = {}
    for number, line in enumerate(lines[1:], start=2):
        problem = _line_problem(line)
        if problem is not None:
            found[number] = problem
    assert found == info.malformed_line_numbers
    assert set(found.values()) == set(MALFORMED_REASONS)
    stars = {lines[n - 1].split(b"\t")[7] for n, why in found.items() if "star_rating" in why}
    assert {b"five", b"", b"0", b"6", b"7"} <= stars


def test_non_utf8_lines_are_valid_rows(written: tuple[WriteInfo, list[bytes]]) -> None:
    info, lines = written
    bad_utf8 = set()
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad_utf8.add(number)
    assert bad_utf8 == set(info.non_utf8_line_numbers)
    assert not bad_utf8 & set(info.malformed_line_numbers)
    for number in bad_utf8:
        assert _line_problem(lines[number - 1]) is None


def test_valid_lines_round_trip(written: tuple[WriteInfo, list[bytes]], tiny: pd.DataFrame) -> None:
    info, lines = written
    valid = [line for n, line in enumerate(lines[1:], start=2) if n not in info.malformed_line_numbers]
    text = b"\n".join([lines[0], *valid]).decode("utf-8", errors="replace")
    back = pd.read_csv(
        io.StringIO(text), sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False
    )
    assert list(back.columns) == list(AMAZON_COLUMNS)
    assert len(back) == len(tiny)
    line_of_row = [n for n in range(2, len(lines) + 1) if n not in info.malformed_line_numbers]
    body_changed = np.isin(line_of_row, info.non_utf8_line_numbers)
    for col in AMAZON_COLUMNS:
        expected = tiny[col].astype(str).where(tiny[col].notna(), "").to_numpy()
        got = back[col].to_numpy()
        if col == "review_body":
            assert (got[~body_changed] == expected[~body_changed]).all()
            assert all(g.startswith(e) and g != e for g, e in zip(got[body_changed], expected[body_changed], strict=True))
        else:
            assert (got == expected).all(), col


def test_default_number_of_injected_lines(tmp_path: Path, tiny: pd.DataFrame) -> None:
    info = write_reviews_tsv(tiny, tmp_path / "r.tsv")
    assert len(info.malformed_line_numbers) == 5
    assert len(info.non_utf8_line_numbers) == 3


def test_clean_write_is_header_plus_rows(tmp_path: Path, tiny: pd.DataFrame) -> None:
    info = write_reviews_tsv(tiny.head(50), tmp_path / "r.tsv", malformed=0, non_utf8=0)
    lines = (tmp_path / "r.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    assert len(lines) - 2 == info.n_lines == info.valid_rows == 50
    first = tiny.iloc[0]
    expected = "\t".join("" if pd.isna(v) else str(v) for v in first.to_list())
    assert lines[1] == expected


def test_gzip_round_trip_and_stable_header(tmp_path: Path, tiny: pd.DataFrame) -> None:
    plain = write_reviews_tsv(tiny, tmp_path / "r.tsv", seed=4)
    packed = write_reviews_tsv(tiny, tmp_path / "r.tsv.gz", seed=4)
    raw = packed.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[3] & 0x08 == 0  # no file name stored
    assert raw[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    with gzip.open(packed.path, "rb") as fh:
        assert fh.read() == plain.path.read_bytes()
    assert packed.malformed_line_numbers == plain.malformed_line_numbers


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path, tiny: pd.DataFrame) -> None:
    write_reviews_tsv(tiny, tmp_path / "r.tsv.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["r.tsv.gz"]


def test_field_with_tab_is_rejected_and_nothing_is_written(tmp_path: Path, tiny: pd.DataFrame) -> None:
    bad = tiny.head(20).copy()
    bad.loc[bad.index[3], "product_title"] = "Tab\there"
    with pytest.raises(DataError, match="tab or newline"):
        write_reviews_tsv(bad, tmp_path / "r.tsv")
    assert list(tmp_path.iterdir()) == []


def test_wrong_columns_are_rejected(tmp_path: Path, tiny: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="15 Amazon review columns"):
        write_reviews_tsv(tiny.drop(columns="vine"), tmp_path / "r.tsv")
    with pytest.raises(ConfigError):
        write_reviews_tsv(tiny, tmp_path / "r.tsv", malformed=-1)


def test_line_numbers_are_one_based_with_header_first(tmp_path: Path, tiny: pd.DataFrame) -> None:
    info = write_reviews_tsv(tiny.head(30), tmp_path / "r.tsv", malformed=30, non_utf8=2, seed=1)
    assert min(info.malformed_line_numbers) >= 2
    assert max(info.malformed_line_numbers) <= info.n_lines + 1
    lines = (tmp_path / "r.tsv").read_bytes().split(b"\n")
    for number in info.malformed_line_numbers:
        assert _line_problem(lines[number - 1]) == info.malformed_line_numbers[number]
    assert re.match(rb"^marketplace\t", lines[0])
