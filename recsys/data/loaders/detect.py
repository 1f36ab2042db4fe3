"""Which loader reads a file: format detection from the content, and dispatch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ...errors import ConfigError, DataError
from ..schema import REQUIRED_COLUMNS
from .amazon import load_amazon_reviews
from .movielens import load_movielens
from .report import LoadReport
from .table import (
    OPTIONS,
    PARQUET_MAGIC,
    SEPARATORS,
    csv_header,
    load_table,
    parquet_error,
    sniff_sep,
)
from .text import check_file, describe_columns, first_line, head, starts_with

#: Formats understood by :func:`load_ratings`.
FORMATS: tuple[str, ...] = ("amazon", "movielens", "csv", "parquet")
_NUMBER = re.compile(r"[0-9.]+")
_CANONICAL = {option: column for column, option in OPTIONS.items()}  # "user" -> "customer_id"
_TABLE_OPTIONS = {*_CANONICAL, "sep"}
_PASS = f"Pass the format explicitly: --format {'|'.join(FORMATS)}."


def detect_format(path: str | Path) -> str:
    """Guess the format of a ratings file from its content (and name); gzip is looked into.

    ``"parquet"`` (``PAR1`` magic), ``"amazon"`` (a tab-separated header with at least
    ``customer_id``, ``product_id``, ``star_rating``), ``"movielens"`` (header
    ``userId,movieId,rating``, ``::``-separated numbers, or ``u.data``-style tab-separated
    numbers) or ``"csv"`` (any other delimited text with a header). A missing or empty file, or
    content that is none of these, is a :class:`DataError` (suggesting ``--format``).
    """
    p = check_file(path)
    if starts_with(p, PARQUET_MAGIC):
        return "parquet"
    start = head(p)
    if not start.strip():
        raise DataError(f"{p} is empty; cannot detect its format.")
    if b"\x00" in start[:4096]:
        raise DataError(
            f"cannot detect the format of {p}: it looks binary (not text, Parquet or gzip). {_PASS}"
        )
    text = first_line(start).decode("utf-8", errors="replace")
    fields = [f.strip() for f in text.split("\t")]
    if all(c in fields for c in REQUIRED_COLUMNS):
        return "amazon"
    if (
        text.lower().replace(" ", "").startswith("userid,movieid,rating")
        or _four_numbers(text.split("::"))  # ratings.dat
        or (_four_numbers(fields) and (p.name.startswith("u.") or p.suffix in (".data", "")))
    ):
        return "movielens"
    if any(s in text for s in SEPARATORS):
        return "csv"
    raise DataError(
        f"cannot detect the format of {p}: its first line is none of an Amazon reviews header, "
        f"MovieLens ratings or delimited text with a header. {_PASS}"
    )


def _four_numbers(fields: list[str]) -> bool:
    return len(fields) == 4 and all(_NUMBER.fullmatch(x) for x in fields)


def load_ratings(
    path: str | Path, format: str | None = None, **options: Any
) -> tuple[pd.DataFrame, LoadReport]:
    """Load any supported ratings source: dispatch on ``format`` (default: :func:`detect_format`).

    ``options`` go to the loader (:func:`load_amazon_reviews`, :func:`load_movielens` or
    :func:`load_table`). For CSV/Parquet, a column mapping that is not given defaults to the
    canonical column names (``customer_id``, ``product_id``, ``star_rating`` and, when
    present, ``review_date``/``product_title``), so a saved ratings frame loads back.
    """
    fmt = format if format is not None else detect_format(path)
    mapping = sorted(set(options) & _TABLE_OPTIONS)
    if fmt in ("amazon", "movielens") and mapping:
        raise ConfigError(
            f"{path} is {fmt} data: the option(s) {mapping} apply to csv/parquet only. Drop them, "
            f"or pass --format csv to read the file as a table."
        )
    if fmt in ("amazon", "movielens", "csv") and starts_with(check_file(path), PARQUET_MAGIC):
        raise DataError(f"{path} is a Parquet file, not {fmt}: use --format parquet.")
    if fmt == "amazon":
        return load_amazon_reviews(path, **options)
    if fmt == "movielens":
        return load_movielens(path, **options)
    if fmt in ("csv", "parquet"):
        return load_table(path, format=fmt, **_default_mapping(Path(path), fmt, options))
    raise DataError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}.")


def _default_mapping(path: Path, fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    if all(options.get(k) for k in ("user", "item", "rating")):
        return options
    columns = _columns(check_file(path), fmt, options.get("sep"))
    out = {key: col for key, col in _CANONICAL.items() if col in columns} | options
    still = [k for k in ("user", "item", "rating") if not out.get(k)]
    if still:
        raise DataError(
            f"{path} is {fmt}: name its columns with {', '.join(f'{k}=...' for k in still)} "
            f"(e.g. --user-col/--item-col/--rating-col). The file has {describe_columns(columns)}."
        )
    return out


def _columns(path: Path, fmt: str, sep: str | None) -> list[str]:
    """The column names of a CSV header or a Parquet schema."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise parquet_error(path) from exc
    start = head(path).decode("utf-8", errors="replace").lstrip("\ufeff")
    first = start.splitlines()[0] if start.strip() else ""
    return csv_header(first, sep or sniff_sep(start), path)
