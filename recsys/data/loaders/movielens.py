"""MovieLens ratings: ml-100k ``u.data``, ml-1m/10m ``ratings.dat``, ``ratings.csv`` (+ titles)."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from . import columns as C
from .report import LoadReport, finish
from .text import (
    DEFAULT_BLOCK_SIZE,
    Block,
    Tally,
    check_file,
    describe_columns,
    first_line,
    head,
    is_utf8,
    lines_of,
    parse,
    parse_blocks,
)

logger = logging.getLogger("recsys")

_REASONS = [
    "missing user/item id",
    "non-integer user/item id",
    "non-numeric rating",
    "rating outside 0.5-5",
]
_VARIANTS = {
    # variant: (source columns, separator as it is in the file, header?, sibling titles file)
    "u.data": (["user_id", "item_id", "rating", "timestamp"], b"\t", False, "u.item"),
    "ratings.dat": (["UserID", "MovieID", "Rating", "Timestamp"], b"::", False, "movies.dat"),
    "ratings.csv": (["userId", "movieId", "rating", "timestamp"], b",", True, "movies.csv"),
}
_ID = re.compile(r"-?[0-9]{1,18}")


def _rating(text: str) -> tuple[float, int]:
    x = C.number(text)
    if x is None:
        return math.nan, 3
    if not 0.5 <= x <= 5:
        return math.nan, 4
    return x, 0


def _int_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, ok mask) of a string or int64 column; null -> not ok, value 0."""
    if pa.types.is_integer(col.type):
        ok = np.asarray(pc.is_valid(col))
        return np.asarray(pc.fill_null(col, 0).to_numpy(), dtype=np.int64), ok
    trimmed = pc.utf8_trim_whitespace(col)
    ok = np.asarray(pc.fill_null(pc.match_substring_regex(trimmed, r"^-?[0-9]{1,18}$"), False))
    values = pc.if_else(pa.array(ok), trimmed, "0")
    return np.asarray(pc.cast(values, pa.int64()).to_numpy(), dtype=np.int64), ok


def _variant(head_bytes: bytes, path: Path) -> tuple[list[str], bytes, bool, str]:
    """The entry of :data:`_VARIANTS` for a file starting with ``head_bytes``."""
    first = first_line(head_bytes)
    if first.lower().startswith(b"userid,movieid,rating"):
        return _VARIANTS["ratings.csv"]
    if b"::" in first:
        return _VARIANTS["ratings.dat"]
    if b"\t" in first:
        return _VARIANTS["u.data"]
    for name, variant in _VARIANTS.items():
        if path.name.startswith(name):
            return variant
    raise DataError(
        f"{path} does not look like a MovieLens ratings file: its first line has neither a "
        f"ratings.csv header, '::' separators nor tabs. Expected u.data "
        f"(user<TAB>item<TAB>rating<TAB>timestamp), ratings.dat (user::item::rating::timestamp) "
        f"or ratings.csv (header userId,movieId,rating,timestamp)."
    )


def load_movielens(
    path: str | Path,
    *,
    titles: str | Path | None | bool = True,
    max_examples: int = 10,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[pd.DataFrame, LoadReport]:
    """Load MovieLens ratings (ml-100k ``u.data``, ml-1m/10m ``ratings.dat``, ``ratings.csv``).

    The variant is recognised from the content (header ``userId,movieId,rating``, ``::``
    separators, tabs); the file may be gzip. Ratings must be numbers from 0.5 to 5, user and
    movie ids integers; timestamps are unix seconds. ``max_examples`` and ``block_size`` work as
    for :func:`load_amazon_reviews`.

    ``titles``: True reads titles from the sibling file (``u.item`` -- ``|``-separated latin-1;
    ``movies.dat`` -- ``id::title::genres``; ``movies.csv`` -- a real CSV with quoted titles), if
    it exists; False/None: no titles; a path: titles from that file (same three formats,
    recognised by content; a missing file is a :class:`DataError`).
    """
    t0 = time.perf_counter()
    p = check_file(path)
    names, sep, has_header, sibling = _variant(head(p), p)
    report = LoadReport(source=str(path), format="movielens", columns=list(names))
    ratings = C.Lookup(_rating, np.float32, (math.nan, 3))
    parts = []  # per block: the valid rows' users, items, ratings and dates (us)
    with lines_of(p, block_size, header=has_header) as (header, blocks):
        if header is not None:
            report.columns = header.split(",")
            if [n.strip() for n in report.columns] != names:
                raise DataError(
                    f"{p}: expected the MovieLens ratings.csv header {','.join(names)} on "
                    f"line 1; found {describe_columns(report.columns)}. For another layout use "
                    f"load_table(path, user=..., item=..., rating=..., timestamp=...)."
                )
        # "::" is two bytes: blocks of ratings.dat get it replaced by the ASCII unit separator.
        delimiter = "\x1f" if len(sep) > 1 else sep.decode()
        c = report.columns
        typed = {c[0]: pa.int64(), c[1]: pa.int64(), c[2]: C.DICT, c[3]: pa.int64()}

        def parse_block(buf: bytes) -> Block:
            buf = buf.replace(sep, b"\x1f") if len(sep) > 1 else buf
            try:
                return parse(buf, c, delimiter, types=typed)
            except pa.ArrowInvalid:  # a non-integer somewhere: parse as text and sort it out
                return parse(buf, c, delimiter, types={c[2]: C.DICT})

        tally = Tally(report.columns, _REASONS, max_examples)
        for block in parse_blocks(blocks, parse_block):
            t = block.table
            user, user_ok = _int_column(t.column(0))
            item, item_ok = _int_column(t.column(1))
            rating, codes = ratings(t.column(2))
            codes[~(user_ok & item_ok)] = 2
            codes[np.asarray(t.column(0).is_null()) | np.asarray(t.column(1).is_null())] = 1
            ts, ts_ok = _int_column(t.column(3))
            keep = tally.add(block, codes)
            present = np.asarray(t.column(3).is_valid())
            report.bad_dates += int(np.count_nonzero(present & ~ts_ok & keep))
            date = np.where(ts_ok, ts * 1_000_000, C.NAT)
            parts.append([values[keep] for values in (user, item, rating, date)])
    tally.fill(report, 2 if has_header else 1, p)
    user, item, rating, date = (np.concatenate(values) for values in zip(*parts, strict=True))
    frame = C.frame(user, item, _titles(item, p, sibling, titles), rating, date)
    finish(report, t0)
    return frame, report


def _read_titles_file(path: Path) -> dict[int, str]:
    """Movie id -> title from ``u.item``, ``movies.dat`` or ``movies.csv`` (by content)."""
    data = head(path, None)
    text = data.decode("utf-8" if is_utf8(data) else "latin-1").lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    if first.lower().startswith("movieid,title"):
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))[1:]
        except csv.Error as exc:
            raise DataError(f"{path} is not a readable movies.csv titles file.") from exc
    else:
        sep = "::" if "::" in first else "|"
        rows = [line.split(sep) for line in text.splitlines()]
        if sep == "::":  # id::title::genres, and a title may hold "::"
            rows = [[r[0], sep.join(r[1:-1]) or r[1]] if len(r) >= 2 else r for r in rows]
    return {int(r[0]): r[1] for r in rows if len(r) >= 2 and _ID.fullmatch(r[0].strip())}


def _titles(
    item: np.ndarray, ratings_path: Path, sibling: str, titles: str | Path | None | bool
) -> pd.Categorical | None:
    """The title of every movie in ``item`` (see ``titles`` of :func:`load_movielens`)."""
    title_map: dict[int, str] = {}
    if titles is True and not ratings_path.with_name(sibling).is_file():
        logger.info("no %s next to %s: loading without titles", sibling, ratings_path)
    elif titles is True:
        title_map = _read_titles_file(ratings_path.with_name(sibling))
    elif titles is not None and titles is not False:
        title_map = _read_titles_file(check_file(titles))
    if not title_map:
        return None
    enc = pa.array(list(title_map.values()), pa.string()).dictionary_encode()  # titles may repeat
    codes = np.append(np.asarray(enc.indices, dtype=np.int64), -1)  # get_indexer's -1: no title
    codes = codes[pd.Index(list(title_map)).get_indexer(item)]
    return C.categorical(pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), enc.dictionary))
