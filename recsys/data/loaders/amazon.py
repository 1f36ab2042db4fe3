"""The Amazon Customer Reviews TSV (the lab's ``Digital_Video_Download`` file), streamed."""

from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ...errors import DataError
from ..schema import AMAZON_COLUMNS, CUSTOMER, DATE, PRODUCT, RATING, REQUIRED_COLUMNS, TITLE
from . import columns as C
from .report import LoadReport, finish
from .text import (
    DEFAULT_BLOCK_SIZE,
    Tally,
    check_file,
    describe_columns,
    lines_of,
    parse,
    parse_blocks,
)

_REASONS = [
    "missing customer_id/product_id",
    "non-numeric star_rating",
    "non-integer star_rating",
    "star_rating outside 1-5",
]
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _star(text: str) -> tuple[float, int]:
    """Amazon star rating: an integer 1..5, surrounding spaces allowed, ``5.0`` counts as 5."""
    x = C.number(text)
    if x is None:
        return math.nan, 2
    if x != int(x):
        return math.nan, 3
    if not 1 <= x <= 5:
        return math.nan, 4
    return x, 0


def _day(text: str) -> tuple[int, int]:
    """(microseconds since epoch, 0) of a ``YYYY-MM-DD`` date (spaces allowed), else (NaT, 1)."""
    s = text.strip()
    if _ISO_DAY.fullmatch(s):
        try:
            us = int(np.datetime64(s, "D").astype(np.int64)) * 86_400_000_000
        except ValueError:  # e.g. 2015-02-30
            us = C.NAT
        if C.MIN_US <= us <= C.MAX_US:
            return us, 0
    return C.NAT, 1


def _check_header(names: list[str], path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path} lacks the required column(s) {missing} in its header (line 1), which has "
            f"{describe_columns(names)}. Expected a tab-separated Amazon reviews header with at "
            f"least {list(REQUIRED_COLUMNS)} (normally all of {list(AMAZON_COLUMNS)}). For "
            f"another layout use load_table(path, user=..., item=..., rating=...) / --format csv."
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: the header (line 1) repeats the column(s) {dupes}.")


def load_amazon_reviews(
    path: str | Path, *, max_examples: int = 10, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[pd.DataFrame, LoadReport]:
    """Load an Amazon Customer Reviews TSV (plain or gzip, detected by its magic bytes).

    A header of tab-separated column names (normally the 15
    :data:`~recsys.data.schema.AMAZON_COLUMNS`, in any order; ``product_title`` and
    ``review_date`` may be absent), then one review per line, unquoted (``"`` and HTML are
    literal); LF or CRLF, a lone CR inside a field becomes a space. It is streamed in blocks of
    ``block_size`` bytes parsed by ``pyarrow.csv`` (the next block is read and parsed while one
    is processed); review text never becomes Python objects. Skipped lines (the first
    ``max_examples`` recorded) follow the rules of :mod:`recsys.data.loaders`; the
    ``star_rating`` reasons: empty or ``five`` is "non-numeric star_rating", ``4.5``
    "non-integer star_rating", ``0`` or ``6`` "star_rating outside 1-5" (surrounding spaces are
    allowed, ``5.0`` counts as 5). A ``review_date`` that is not a valid ``YYYY-MM-DD`` (spaces
    allowed) becomes NaT. A missing required column is a
    :class:`DataError`.
    """
    t0 = time.perf_counter()
    p = check_file(path)
    report = LoadReport(source=str(path), format="amazon")
    stars = C.Lookup(_star, np.float32, (math.nan, 2))
    days = C.Lookup(_day, np.int64, (C.NAT, 0))
    with lines_of(p, block_size, header=True) as (header, blocks):
        if header is None:
            raise DataError(
                f"{p} is empty; expected an Amazon reviews TSV starting with the header "
                f"{chr(9).join(AMAZON_COLUMNS)!r}."
            )
        names = report.columns = header.split("\t")
        _check_header(names, p)
        # customer ids are mostly distinct: plain strings; the other columns repeat values
        kept = (CUSTOMER, PRODUCT, TITLE, RATING, DATE)
        used = {k: pa.string() if k == CUSTOMER else C.DICT for k in kept if k in names}
        fmt = functools.partial(parse, names=names, sep="\t", types=used, keep=tuple(used))
        tally = Tally(names, _REASONS, max_examples)
        tables, ratings = [], []
        for block in parse_blocks(blocks, fmt):
            t = block.table
            star, codes = stars(t.column(RATING))
            customer, product = (np.asarray(t.column(k).is_null()) for k in (CUSTOMER, PRODUCT))
            codes[customer | product] = 1
            keep = tally.add(block, codes)
            tables.append(t.filter(pa.array(keep)))
            ratings.append(star[keep])
    tally.fill(report, 2, p)
    t = pa.concat_tables(tables)
    dates, bad = days(t[DATE]) if DATE in names else (None, 0)
    report.bad_dates = int(np.count_nonzero(bad))
    frame = C.frame(
        C.ids_from_strings(t[CUSTOMER]),
        C.ids_from_strings(t[PRODUCT]),
        C.categorical(t[TITLE]) if TITLE in names else None,
        np.concatenate(ratings),
        dates,
    )
    finish(report, t0)
    return frame, report
