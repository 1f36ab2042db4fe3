"""The exploration stage: what is in a ratings frame before anything is dropped or encoded.

:func:`explore` computes the lab's statistics, vectorised (no Python loop over rows): shape,
missing values, exact duplicate rows and re-reviews (as :func:`recsys.data.prepare.drop_duplicates`
counts them), the star ratings, seasonality, and reviews per customer and per product. The result
is an :class:`Exploration`, a small JSON-friendly record; the per-customer and per-product counts
behind its quantiles (millions of entries) come from :func:`review_counts` when a plot needs them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from .prepare import count_duplicates
from .schema import CUSTOMER, DATE, PRODUCT, RATING, REQUIRED_COLUMNS

__all__ = ["QUANTILES", "Exploration", "explore", "review_counts"]

logger = logging.getLogger(__name__)

#: Quantile levels reported for the reviews-per-customer and reviews-per-product counts.
QUANTILES: tuple[float, ...] = (
    0, .01, .02, .03, .04, .05, .1, .25, .5, .75, .9, .95, .96, .97, .98, .99, .995, .999, 1,
)  # fmt: skip

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SUMMARY_QUANTILES = {0.5: "median", 0.9: "p90", 0.99: "p99", 1.0: "max"}


@dataclass
class Exploration:
    """Exploration statistics of a ratings frame.

    The table shape (``n_rows``, ``n_columns``, ``nulls``) is the source file's when a load
    report was given (``rows_read``, its columns and ``null_counts``), else the frame's. The
    date statistics leave out rows without a date; on ties the earliest month or year is
    reported, and the first and last years are often partial.
    """

    n_rows: int
    n_columns: int
    nulls: dict[str, int]  # missing values per column
    # exact duplicate rows and re-reviews as recsys.data.prepare.drop_duplicates defines them
    # (preparation removes both, keeping each customer's latest review of a video)
    exact_duplicate_rows: int
    rereviews: int
    rating_counts: dict[float, int]  # star -> rows, sorted by star (missing ratings left out)
    rating_shares: dict[float, float]  # star -> share of the rated rows (sums to 1)
    reviews_by_month: dict[int, int]  # month of the year (1..12, all present) -> dated reviews
    # "YYYY-MM" -> reviews, every month from the first to the last dated review (gaps: 0)
    reviews_by_year_month: dict[str, int]
    reviews_by_year: dict[int, int]  # year -> reviews, every year from first to last (gaps: 0)
    busiest_month: int | None  # month of the year (1..12); None without dates
    busiest_year_month: str | None  # "YYYY-MM"
    busiest_year: int | None
    quietest_year: int | None  # among years with at least one review (a gap is not "quietest")
    n_customers: int  # distinct non-missing ids in the frame (unused categories not counted)
    n_products: int
    # quantiles (levels QUANTILES, linear interpolation as np.quantile and pandas) of the
    # number of reviews per customer / per product
    reviews_per_customer_quantiles: dict[float, float]
    reviews_per_product_quantiles: dict[float, float]
    date_min: str | None  # first and last review date, "YYYY-MM-DD"; None without dates
    date_max: str | None
    n_ratings: int  # rows of the frame (below n_rows when the loader dropped lines)
    missing_dates: int  # frame rows without a review date (NaT)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: every mapping has string keys, values are plain Python."""
        return {
            name: {str(k): v for k, v in value.items()} if isinstance(value, dict) else value
            for name, value in asdict(self).items()
        }

    def summary_lines(self) -> list[str]:
        """A short human-readable summary, one statement per line."""
        missing = ", ".join(f"{k} {v:,}" for k, v in self.nulls.items() if v) or "none"
        lines = [
            f"rows: {self.n_rows:,} x {self.n_columns} columns ({self.n_ratings:,} ratings)",
            f"missing values: {missing}",
            f"exact duplicate rows: {self.exact_duplicate_rows:,}; re-reviews (same customer "
            f"and video again): {self.rereviews:,}",
        ]
        if self.rating_counts:
            shares = (f"{star:g}: {self.rating_shares[star]:.1%}" for star in self.rating_counts)
            lines.append("ratings: " + ", ".join(shares))
        lines.append(f"customers: {self.n_customers:,}; products: {self.n_products:,}")
        for label, q in (("customer", self.reviews_per_customer_quantiles),
                         ("product", self.reviews_per_product_quantiles)):  # fmt: skip
            if q:
                values = (f"{name} {q[p]:,.4g}" for p, name in _SUMMARY_QUANTILES.items())
                lines.append(f"reviews per {label}: " + ", ".join(values))
        if self.date_min is None:
            lines.append("dates: none")
        else:
            undated = f" ({self.missing_dates:,} undated)" if self.missing_dates else ""
            lines.append(f"dates: {self.date_min} to {self.date_max}{undated}")
            lines.append(
                f"busiest month of the year: {_MONTH_NAMES[self.busiest_month - 1]}; "
                f"busiest month: {self.busiest_year_month}; busiest year: {self.busiest_year}; "
                f"quietest year: {self.quietest_year}"
            )
        return lines


def explore(frame: pd.DataFrame, report: Any = None) -> Exploration:
    """Compute the exploration statistics of a ratings frame.

    ``frame`` needs ``customer_id``, ``product_id`` and ``star_rating`` (ids may be integers,
    strings or categoricals) and uses ``product_title`` and ``review_date`` when present.
    ``report``, the loader's report, is read by attribute (``columns``, ``rows_read``,
    ``null_counts``); a missing one is taken from the frame. Raises :class:`DataError` if the
    frame is empty, lacks a required column, or ``star_rating``/``review_date`` have the wrong
    type.
    """
    start = time.perf_counter()
    _validate(frame)
    per_customer, per_product = review_counts(frame)
    columns = getattr(report, "columns", None)  # getattr(None, ...) is None: no report
    rows_read = getattr(report, "rows_read", None)
    null_counts = getattr(report, "null_counts", None)
    if null_counts is None:
        null_counts = {col: frame[col].isna().sum() for col in frame.columns}
    ratings = _rating_distribution(frame[RATING])  # both check their column's dtype first
    dates = _date_stats(frame[DATE] if DATE in frame.columns else None, len(frame))
    exact, rereviews = count_duplicates(frame)
    result = Exploration(
        n_rows=len(frame) if rows_read is None else int(rows_read),
        n_columns=len(frame.columns if columns is None else list(columns)),
        nulls={str(col): int(v) for col, v in dict(null_counts).items()},
        exact_duplicate_rows=exact,
        rereviews=rereviews,
        **ratings,
        n_customers=len(per_customer),
        n_products=len(per_product),
        reviews_per_customer_quantiles=_quantiles(per_customer),
        reviews_per_product_quantiles=_quantiles(per_product),
        n_ratings=len(frame),
        **dates,
    )
    logger.info(
        "explored %s rows (%s customers, %s products) in %.2fs",
        f"{len(frame):,}", f"{result.n_customers:,}", f"{result.n_products:,}",
        time.perf_counter() - start,
    )  # fmt: skip
    return result


def review_counts(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Number of reviews of every customer and of every product (int64 arrays, in no particular
    order, one entry per distinct non-missing id occurring in the frame; unused categories are
    skipped): inputs for distribution plots and quantiles."""
    _validate(frame, required=(CUSTOMER, PRODUCT))
    counts = (frame[col].value_counts().to_numpy() for col in (CUSTOMER, PRODUCT))
    return tuple(c[c > 0].astype(np.int64) for c in counts)


def _validate(frame: pd.DataFrame, required: Sequence[str] = REQUIRED_COLUMNS) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame of ratings, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"the ratings frame lacks column(s) {missing}; it has {list(frame.columns)}. "
            "Load data with a recsys loader or rename the columns to the names in "
            "recsys.data.schema."
        )
    if len(frame) == 0:
        raise DataError(
            "the ratings frame is empty (0 rows): nothing to explore. Check the input file "
            "and the loader's filters."
        )


def _quantiles(counts: np.ndarray) -> dict[float, float]:
    if len(counts) == 0:
        return {}
    levels = np.asarray(QUANTILES, dtype=np.float64)
    values = np.quantile(counts, levels)  # method="linear", pandas' default too
    return {float(p): float(v) for p, v in zip(levels, values, strict=True)}


def _rating_distribution(ratings: pd.Series) -> dict[str, dict]:
    if not pd.api.types.is_numeric_dtype(ratings) or pd.api.types.is_bool_dtype(ratings):
        raise DataError(
            f"star_rating must be numeric (float32 in a ratings frame), got dtype "
            f"{ratings.dtype}; convert it with pd.to_numeric."
        )
    counts = ratings.value_counts(dropna=True, sort=False).sort_index()
    total = int(counts.sum())
    rating_counts = {float(k): int(v) for k, v in counts.items()}
    return {"rating_counts": rating_counts, "rating_shares": {k: v / total for k, v in rating_counts.items()}}


def _date_stats(dates: pd.Series | None, n_rows: int) -> dict[str, Any]:
    """Date-based fields of :class:`Exploration` (NaT rows are left out)."""
    empty: dict[str, Any] = {
        "reviews_by_month": dict.fromkeys(range(1, 13), 0), "reviews_by_year_month": {}, "reviews_by_year": {},
        "missing_dates": n_rows,
        **dict.fromkeys(("busiest_month", "busiest_year_month", "busiest_year", "quietest_year", "date_min", "date_max")),
    }  # fmt: skip
    if dates is None:
        return empty
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        dates = dates.dt.tz_localize(None)  # local wall-clock dates
    if not pd.api.types.is_datetime64_dtype(dates.dtype):
        raise DataError(
            f"review_date must be datetime64 (NaT when missing), got dtype {dates.dtype}; "
            "convert it with pd.to_datetime(..., errors='coerce')."
        )
    values = dates.to_numpy()
    values = values[~np.isnat(values)]
    if len(values) == 0:
        return empty

    months = values.astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    first, last = int(months.min()), int(months.max())
    by_year_month = np.bincount(months - first, minlength=last - first + 1)
    by_month = np.bincount(months % 12, minlength=12)  # 0 = January (1970-01 is a January)
    first_year, last_year = first // 12, last // 12  # years since 1970
    by_year = np.bincount(months // 12 - first_year, minlength=last_year - first_year + 1)

    year_month_labels = [f"{1970 + m // 12:04d}-{m % 12 + 1:02d}" for m in range(first, last + 1)]
    years = np.arange(first_year, last_year + 1) + 1970
    nonzero = np.flatnonzero(by_year)
    # argmax/argmin return the first extreme, i.e. the earliest month/year on ties.
    return {
        "reviews_by_month": {m + 1: int(c) for m, c in enumerate(by_month)},
        "reviews_by_year_month": dict(zip(year_month_labels, map(int, by_year_month), strict=True)),
        "reviews_by_year": {int(y): int(c) for y, c in zip(years, by_year, strict=True)},
        "busiest_month": int(np.argmax(by_month)) + 1,
        "busiest_year_month": year_month_labels[int(np.argmax(by_year_month))],
        "busiest_year": int(years[np.argmax(by_year)]),
        "quietest_year": int(years[nonzero[np.argmin(by_year[nonzero])]]),
        "date_min": str(values.min().astype("datetime64[D]")),
        "date_max": str(values.max().astype("datetime64[D]")),
        "missing_dates": n_rows - len(values),
    }
