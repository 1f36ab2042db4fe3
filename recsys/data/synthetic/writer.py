"""Write a reviews frame as an Amazon-style TSV, with the flaws a loader must cope with.

Malformed lines (wrong field count, bad ``star_rating``) and review bodies with non-UTF-8 bytes
are injected at seeded positions; :class:`WriteInfo` says where, so tests can check a loader
against it.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..._io import atomic_path
from ...errors import ConfigError, DataError
from ..schema import AMAZON_COLUMNS
from .model import GeneratorConfig, generate_reviews, review_ids

logger = logging.getLogger("recsys")

#: Reasons reported in :attr:`WriteInfo.malformed_line_numbers`.
MALFORMED_REASONS: tuple[str, ...] = (
    "too many fields",
    "too few fields",
    "non-numeric star_rating",
    "star_rating outside 1-5",
)


@dataclass(frozen=True)
class WriteInfo:
    """What :func:`write_reviews_tsv` wrote; line numbers are 1-based, the header is line 1."""

    path: Path
    n_lines: int  # data lines, excluding the header (valid rows plus malformed lines)
    malformed_line_numbers: dict[int, str]  # line number -> reason (in MALFORMED_REASONS)
    non_utf8_line_numbers: list[int]  # valid rows whose review_body has non-UTF-8 bytes
    valid_rows: int  # lines that are rows of the frame (n_lines - malformed lines)


# Appended to a few review bodies: bytes that are not UTF-8 (latin-1 and cp1252 text, 0xFF 0xFE).
_NON_UTF8_SNIPPETS = (b" \xff\xfe", b" The caf\xe9 scene was lovely.", b" Na\xefve but fun.",
                      b" \x96 great pacing.", b" Se\xf1or Ramos was the best part.")  # fmt: skip


def _column_text(values: pd.Series, name: str) -> pa.Array:
    """Column as Arrow strings, missing values as empty strings; rejects tabs and newlines."""
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):  # an Arrow-backed column of several chunks (pd.concat)
        arr = arr.combine_chunks()
    if pa.types.is_floating(arr.type):
        as_float = values.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = as_float[~np.isnan(as_float)]
        if np.all(finite == np.round(finite)):
            arr = pa.array(np.where(np.isnan(as_float), 0, as_float).astype(np.int64),
                           mask=np.isnan(as_float))  # fmt: skip
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        arr = pc.strftime(arr, format="%Y-%m-%d")
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    if pc.any(pc.match_substring_regex(arr, "[\t\n\r]")).as_py():
        raise DataError(
            f"column {name!r} contains a tab or newline; the TSV is written without quoting, "
            "so replace them first (e.g. df[col].str.replace(r'[\\t\\n\\r]', ' ', regex=True))"
        )
    return pc.fill_null(arr, "")


def _malformed_line(fields: list[str], kind: int, rng: np.random.Generator) -> tuple[str, str]:
    """Break a row's ``fields`` (in place) the ``kind``-th way (0..6); returns (line, reason)."""
    if kind == 0:
        pos = int(rng.integers(1, len(fields)))
        fields.insert(pos, ["Special Edition", "", "extra", "HD"][int(rng.integers(4))])
        return "\t".join(fields), MALFORMED_REASONS[0]
    if kind == 1:
        return "\t".join(fields[: int(rng.integers(3, 12))]), MALFORMED_REASONS[1]
    fields[AMAZON_COLUMNS.index("star_rating")] = ("five", "0", "", "6", "7")[kind - 2]
    return "\t".join(fields), MALFORMED_REASONS[2 if kind in (2, 4) else 3]


def write_reviews_tsv(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    malformed: int | None = None,
    non_utf8: int | None = None,
    seed: int = 0,
    compresslevel: int = 6,
    chunk_rows: int = 250_000,
) -> WriteInfo:
    """Write a reviews frame as an Amazon-style TSV, with a few malformed lines injected.

    ``df`` has exactly the 15 :data:`~recsys.data.schema.AMAZON_COLUMNS`, in order. The file
    has a header line (the column names), then one line per row: fields joined by tabs, no
    quoting or escaping (like the real file), ``"\\n"`` line ends, missing values as empty
    fields; a field with a tab or newline is a :class:`DataError`. A ``.gz`` suffix writes gzip
    (level ``compresslevel``) with a fixed header (no name, mtime 0), so the same frame and
    seed give the same bytes. The write is atomic (temporary file, then rename); ``chunk_rows``
    rows are formatted at a time.

    ``malformed`` (default ``max(5, len(df) // 200_000)``, 0 for an empty frame) *extra* lines
    are inserted at positions drawn from ``seed`` (every row of ``df`` is written once, in
    order), cycling through: too many fields, too few fields, star_rating "five", star_rating
    0, empty star_rating, star_rating 6, star_rating 7. Separately, the ``review_body`` of
    ``non_utf8`` rows (default ``max(3, len(df) // 500_000)``, at most ``len(df)``) gets
    non-UTF-8 bytes appended (e.g. latin-1 ``caf\\xe9``); those lines are valid rows. A
    negative count is a :class:`ConfigError`.
    """
    t0 = time.perf_counter()
    if tuple(df.columns) != AMAZON_COLUMNS:
        raise DataError(
            f"expected the 15 Amazon review columns in order {list(AMAZON_COLUMNS)}; "
            f"got {list(df.columns)}. Select them with df[list(AMAZON_COLUMNS)]"
        )
    n = len(df)
    for name, value in (("malformed", malformed), ("non_utf8", non_utf8)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer or None, got {value!r}")
    n_bad = (max(5, n // 200_000) if malformed is None else malformed) if n else 0
    n_non_utf8 = min(n, max(3, n // 500_000) if non_utf8 is None else non_utf8)
    rng = np.random.default_rng(seed)
    n_lines = n + n_bad
    bad_pos = np.sort(rng.permutation(n_lines)[:n_bad])  # 0-based data-line index
    row_line = np.setdiff1d(np.arange(n_lines), bad_pos)  # data-line index of every row
    body_null = df["review_body"].isna().to_numpy()
    candidates = np.flatnonzero(~body_null) if (~body_null).sum() >= n_non_utf8 else np.arange(n)
    non_utf8_rows = np.sort(rng.permutation(candidates)[:n_non_utf8])
    snippets = {int(r): _NON_UTF8_SNIPPETS[i % len(_NON_UTF8_SNIPPETS)]
                for i, r in enumerate(non_utf8_rows)}  # fmt: skip
    template_rows = rng.integers(0, max(n, 1), size=n_bad)
    fresh_ids = review_ids(rng, n_bad).to_pylist()

    # Malformed lines: copies of random rows with a fresh review id, broken in turn.
    templates = df.iloc[template_rows]
    texts = [_column_text(templates[col], col).to_pylist() for col in AMAZON_COLUMNS]
    reasons: dict[int, str] = {}  # data-line index -> reason
    before_row: dict[int, list[bytes]] = {}  # malformed lines written just before row k (n: last)
    for i, pos in enumerate(bad_pos.tolist()):
        fields = [col[i] for col in texts]
        fields[AMAZON_COLUMNS.index("review_id")] = fresh_ids[i]
        line, reasons[pos] = _malformed_line(fields, i % 7, rng)
        before_row.setdefault(pos - i, []).append(line.encode() + b"\n")

    path = Path(path)
    body_col = AMAZON_COLUMNS.index("review_body")
    tab, empty = pa.scalar(b"\t", pa.large_binary()), pa.scalar(b"", pa.large_binary())
    # rows written in segments of at most chunk_rows, cut where malformed lines go; a row whose
    # review_body gets non-UTF-8 bytes is a segment of its own
    cuts = sorted({*range(0, n, chunk_rows), *before_row, *snippets, *(r + 1 for r in snippets), n})
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel)
            if path.suffix == ".gz"
            else contextlib.nullcontext(raw)
        ) as out:
            out.write(("\t".join(AMAZON_COLUMNS) + "\n").encode())
            for lo, hi in itertools.pairwise(cuts):
                out.writelines(before_row.get(lo, ()))
                part = df.iloc[lo:hi]
                cols = [_column_text(part[c], c).cast(pa.large_binary()) for c in AMAZON_COLUMNS]
                if lo in snippets:
                    tail = pa.array([snippets[lo]], pa.large_binary())
                    cols[body_col] = pc.binary_join_element_wise(cols[body_col], tail, empty)
                out.write(b"\n".join(pc.binary_join_element_wise(*cols, tab).to_pylist()) + b"\n")
            out.writelines(before_row.get(n, ()))
        raw.flush()
        os.fsync(raw.fileno())

    info = WriteInfo(
        path=path,
        n_lines=n_lines,
        malformed_line_numbers={pos + 2: reason for pos, reason in reasons.items()},
        non_utf8_line_numbers=[int(row_line[r]) + 2 for r in non_utf8_rows],
        valid_rows=n,
    )
    logger.debug("wrote %d lines to %s in %.2fs", n_lines, path, time.perf_counter() - t0)
    return info


def write_preset(
    preset: str | GeneratorConfig, path: str | os.PathLike, seed: int = 0, **kw
) -> WriteInfo:
    """Generate ``preset`` with ``seed`` and write it with :func:`write_reviews_tsv` (``kw`` go
    there; ``seed`` is used for both).
    """
    return write_reviews_tsv(generate_reviews(preset, seed=seed), path, seed=seed, **kw)

