"""Loaders: turn a ratings source into a *ratings frame* plus a :class:`LoadReport`.

Every loader returns a :class:`pandas.DataFrame` with exactly the columns
:data:`~recsys.data.schema.RATINGS_COLUMNS`, in file order, with these dtypes:

=================  ===========================================================================
``customer_id``    ``int64`` when every id is a plain decimal integer (``"0"`` or no leading
                   zero, no sign other than ``-``, no spaces, fits in int64), else ``category``
                   of strings
``product_id``     same rule as ``customer_id`` (Amazon ASINs -> ``category``; MovieLens movie
                   ids -> ``int64``)
``product_title``  ``category`` (NaN when missing; all NaN when the source has no titles)
``star_rating``    ``float32``
``review_date``    ``datetime64[us]`` (the pandas 3 default unit), NaT when missing or invalid
=================  ===========================================================================

Categories are sorted (as :class:`pandas.Categorical` sorts them by default) and hold only
values that occur in the returned rows, so the result does not depend on how the file was
read (block size, skipped lines).

Which rows are kept
-------------------
A line is *malformed* -- skipped, counted by reason in :attr:`LoadReport.skip_reasons` and
its line number recorded -- when its number of fields differs from the header's (blank lines
included), when an id is empty, or when its rating is not valid for the format. Malformed
lines are never fatal unless nothing valid remains; they are logged once at WARNING level on
the ``"recsys"`` logger. Invalid dates are not malformed: the row is kept with NaT and counted
in :attr:`LoadReport.bad_dates`.

The three entry points are :func:`load_amazon_reviews` (streaming, the fast path for the
multi-GB Amazon Customer Reviews TSVs), :func:`load_movielens` (``u.data``, ``ratings.dat``,
``ratings.csv``) and :func:`load_table` (any CSV or Parquet with a column mapping);
:func:`load_ratings` dispatches on :func:`detect_format`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ..errors import DataError
from .schema import (
    AMAZON_COLUMNS,
    CUSTOMER,
    DATE,
    PRODUCT,
    RATING,
    RATINGS_COLUMNS,
    REQUIRED_COLUMNS,
    TITLE,
)

__all__ = [
    "DATE_DTYPE",
    "FORMATS",
    "LoadReport",
    "detect_format",
    "load_amazon_reviews",
    "load_movielens",
    "load_ratings",
    "load_table",
]

logger = logging.getLogger("recsys")

#: dtype of ``review_date`` in every ratings frame.
DATE_DTYPE = "datetime64[us]"
#: Formats understood by :func:`load_ratings`.
FORMATS: tuple[str, ...] = ("amazon", "movielens", "csv", "parquet")

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_NAT = np.iinfo(np.int64).min  # the int64 pattern of NaT
_DICT = pa.dictionary(pa.int32(), pa.string())
_WRONG_FIELDS = "wrong field count"
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_US_PER_DAY = 86_400_000_000


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a loader read, kept and skipped.

    Attributes
    ----------
    source : str
        The path as given.
    format : str
        ``"amazon"``, ``"movielens"``, ``"csv"`` or ``"parquet"``.
    columns : list of str
        The source's columns (Amazon: all header names, loaded or not).
    lines_read : int
        Data lines (Parquet: rows) seen, excluding the header. A trailing final newline does
        not create a line; an empty line before it does (and is malformed).
    rows_read : int
        Valid rows returned.
    rows_skipped : int
        Malformed lines skipped; ``lines_read == rows_read + rows_skipped``.
    skip_reasons : dict of str to int
        Skipped lines per reason, e.g. ``{"wrong field count": 3}``.
    skipped_lines : list of (int, str)
        The first ``max_examples`` skipped lines as ``(number, reason)``; the number is the
        1-based line number in the file where the header is line 1 (``location == "row"``:
        the 1-based row number, for Parquet).
    null_counts : dict of str to int
        Per source column (all of them), the number of empty/null values among valid rows.
    invalid_utf8_lines : int
        Valid lines whose bytes were not UTF-8; they were decoded with U+FFFD replacement.
    seconds : float
        Wall-clock time of the load.
    bad_dates : int
        Valid rows whose date was present but could not be parsed (kept, with NaT).
    location : str
        ``"line"`` (text formats) or ``"row"`` (Parquet): what the numbers in
        ``skipped_lines`` count.
    """

    source: str
    format: str
    columns: list[str] = field(default_factory=list)
    lines_read: int = 0
    rows_read: int = 0
    rows_skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)
    null_counts: dict[str, int] = field(default_factory=dict)
    invalid_utf8_lines: int = 0
    seconds: float = 0.0
    bad_dates: int = 0
    location: str = "line"

    def _skip_text(self) -> str:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in self.skip_reasons.items())
        where = ", ".join(str(n) for n, _ in self.skipped_lines)
        more = ", ..." if self.rows_skipped > len(self.skipped_lines) else ""
        plural = "s" if self.rows_skipped != 1 else ""
        noun = "row" if self.location == "row" else "line"
        return (
            f"{self.rows_skipped:,} malformed {noun}{plural} ({reasons}; "
            f"first at {noun}s {where}{more})"
        )

    def summary(self) -> str:
        """One to three human-readable lines describing the load."""
        noun = "rows" if self.location == "row" else "lines"
        out = [
            f"read {self.rows_read:,} rows from {self.source} ({self.format}, {self.seconds:.1f} s)"
        ]
        out[0] += f"; skipped {self._skip_text()}" if self.rows_skipped else f"; all {noun} valid"
        extra = []
        if self.invalid_utf8_lines:
            extra.append(
                f"{self.invalid_utf8_lines:,} lines with invalid UTF-8 (decoded with U+FFFD)"
            )
        if self.bad_dates:
            extra.append(f"{self.bad_dates:,} unparseable dates (set to NaT)")
        if extra:
            out.append("; ".join(extra))
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        d = asdict(self)
        d["skipped_lines"] = [[int(n), str(r)] for n, r in self.skipped_lines]
        d["skip_reasons"] = {str(k): int(v) for k, v in self.skip_reasons.items()}
        d["null_counts"] = {str(k): int(v) for k, v in self.null_counts.items()}
        return d


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {str(path)!r}. Check the path (relative to {Path.cwd()}).")
    if p.is_dir():
        raise DataError(
            f"{str(path)!r} is a directory, expected a ratings file "
            f"(e.g. an Amazon reviews .tsv/.tsv.gz, a MovieLens ratings file, a CSV or Parquet)."
        )
    return p


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing gzip (detected by magic bytes)."""
    if _is_gzip(path):
        # Arrow's C++ gzip stream is ~20% faster than the gzip module and releases the GIL.
        return pa.input_stream(str(path), compression="gzip")  # type: ignore[return-value]
    return open(path, "rb")


def _read_all(path: Path) -> bytes:
    with _open_binary(path) as fh:
        return fh.read()


def _head(path: Path, n: int = 1 << 16) -> bytes:
    """The first ``n`` (decompressed) bytes of ``path``."""
    if _is_gzip(path):
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        except (OSError, EOFError) as exc:
            raise DataError(
                f"{path} starts like a gzip file but cannot be decompressed: {exc}"
            ) from exc
    with open(path, "rb") as fh:
        return fh.read(n)


def _iter_blocks(fh: BinaryIO, block_size: int) -> Iterator[bytes]:
    """Yield runs of whole lines of about ``block_size`` bytes, each ending with ``\\n``.

    A final line without newline gets one. The next block is read in a background thread
    while the caller processes the current one (file reads and decompression release the GIL).
    """
    block_size = max(int(block_size), 1)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-read") as pool:
        pending = pool.submit(fh.read, block_size)
        carry: list[bytes] = []  # pieces of an unfinished line
        while True:
            chunk = pending.result()
            if not chunk:
                break
            pending = pool.submit(fh.read, block_size)
            cut = chunk.rfind(b"\n")
            if cut < 0:
                carry.append(chunk)
                continue
            data = b"".join([*carry, chunk]) if carry else chunk
            cut += len(data) - len(chunk)
            carry = [data[cut + 1 :]] if cut < len(data) - 1 else []
            yield data if cut == len(data) - 1 else data[: cut + 1]
        if carry:
            yield b"".join([*carry, b"\n"])


# --------------------------------------------------------------------------------------------
# Byte-level scanning of delimited text without quoting
# --------------------------------------------------------------------------------------------


def _is_utf8(buf: bytes) -> bool:
    """True when ``buf`` is valid UTF-8 (Arrow's SIMD validator, no decoding)."""
    offsets = pa.py_buffer(np.array([0, len(buf)], dtype=np.int64))
    arr = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(buf)])
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _normalise(buf: bytes) -> tuple[bytes, np.ndarray]:
    """Strip CR of CRLF, blank out lone CRs, repair invalid UTF-8.

    Returns the new buffer (same lines, same order) and the 0-based indices of the lines
    that were not valid UTF-8.
    """
    if buf.find(b"\r") >= 0:
        buf = buf.replace(b"\r\n", b"\n")
        # A lone CR inside a field would end a row for Arrow's CSV parser; it is not a line
        # break in these formats, so it becomes a space.
        if buf.find(b"\r") >= 0:
            buf = buf.replace(b"\r", b" ")
    if _is_utf8(buf):
        return buf, np.empty(0, dtype=np.int64)
    lines = buf.split(b"\n")
    bad = []
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            lines[i] = line.decode("utf-8", errors="replace").encode("utf-8")
    return b"\n".join(lines), np.asarray(bad, dtype=np.int64)


class _Scan:
    """Lines and fields of a block of whole lines (``buf`` ends with ``\\n``), found with numpy.

    Nothing is decoded. Per line: its newline position and field count; per *good* line (the
    field count matches ``n_fields``): the separator positions and which fields are empty.
    """

    def __init__(self, buf: bytes, n_fields: int, sep: int) -> None:
        arr = np.frombuffer(buf, dtype=np.uint8)
        nl = np.nonzero(arr == 10)[0]
        seps = np.nonzero(arr == sep)[0]
        nsep = np.diff(np.searchsorted(seps, nl), prepend=0)
        good = nsep == n_fields - 1
        self.buf, self.arr, self.nl, self.good = buf, arr, nl, good
        self.n_lines, self.n_fields = len(nl), n_fields
        self.good_idx = np.nonzero(good)[0]
        n_good = len(self.good_idx)
        # (n_good, n_fields - 1) separator positions of the good lines
        self.seps = seps[np.repeat(good, nsep)].reshape(n_good, n_fields - 1)
        self.line_end = nl[good]
        self.line_start = np.concatenate(([0], nl[:-1] + 1))[good] if n_good else nl[good]

    def field(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) byte offsets of field ``j`` of each good line."""
        start = self.line_start if j == 0 else self.seps[:, j - 1] + 1
        end = self.line_end if j == self.n_fields - 1 else self.seps[:, j]
        return start, end

    def empty(self) -> np.ndarray:
        """(n_good, n_fields) bool: which fields of the good lines are empty."""
        n_good = len(self.good_idx)
        out = np.empty((n_good, self.n_fields), dtype=bool)
        if n_good:
            out[:, 0] = self.seps[:, 0] == self.line_start
            out[:, 1:-1] = np.diff(self.seps, axis=1) == 1
            out[:, -1] = self.line_end == self.seps[:, -1] + 1
        return out

    def lines(self, which: np.ndarray) -> bytes:
        """The bytes of the lines ``which`` (sorted indices), concatenated with their newlines."""
        if len(which) == self.n_lines:
            return self.buf
        if len(which) == 0:
            return b""
        mask = np.zeros(self.n_lines, dtype=bool)
        mask[which] = True
        return self.arr[np.repeat(mask, np.diff(self.nl, prepend=-1))].tobytes()


_Validate = Callable[["_Scan"], tuple[np.ndarray, dict[str, np.ndarray]]]
_Parse = Callable[[bytes, int], tuple["np.ndarray | None", dict[str, Any]]]


class _Collector:
    """Accumulates per-block results of a line-oriented loader into one report.

    Use as a context manager: it owns a worker thread that parses a block with Arrow (which
    releases the GIL).
    """

    def __init__(self, n_fields: int, reasons: list[str], max_examples: int) -> None:
        self.reasons = [_WRONG_FIELDS, *reasons]  # code 0 = valid; code k -> reasons[k - 1]
        self.counts = np.zeros(len(self.reasons) + 1, dtype=np.int64)
        self.max_examples = max(int(max_examples), 0)
        self.examples: list[tuple[int, str]] = []
        self.n_fields = n_fields
        self.nulls = np.zeros(n_fields, dtype=np.int64)
        self.lines = 0
        self.invalid_utf8 = 0
        self.columns: dict[str, list[Any]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-parse")

    def __enter__(self) -> _Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def add_block(
        self,
        buf: bytes,
        first_line: int,
        sep: int,
        parse: _Parse,
        validate: _Validate | None = None,
    ) -> int:
        """Scan, validate and parse one block of whole lines starting at line ``first_line``.

        Reason codes: 0 valid, k means ``reasons[k - 1]`` (1 = wrong field count).
        ``validate(scan)`` (optional, vectorised on the bytes) returns a code per good line
        (in ``reasons`` numbering minus one, i.e. 1 = the loader's first reason) and numpy
        columns, one value per good line. ``parse(lines, n)`` gets the good lines that passed
        ``validate`` and returns codes for them (or None: all valid) and its columns.
        Returns the number of lines in the block.
        """
        buf, bad_utf8 = _normalise(buf)
        scan = _Scan(buf, self.n_fields, sep)
        n, good_idx = scan.n_lines, scan.good_idx
        pre_codes, pre_cols = (
            validate(scan) if validate is not None else (np.zeros(len(good_idx), np.int8), {})
        )
        passed = pre_codes == 0
        parse_idx = good_idx[passed]
        parsed = None
        if len(parse_idx):
            parsed = self._pool.submit(parse, scan.lines(parse_idx), len(parse_idx))
        good_codes = pre_codes.astype(np.int8) + np.int8(1)
        good_codes[passed] = 0
        post_cols: dict[str, Any] = {}
        post_valid = None
        if parsed is not None:
            post_codes, post_cols = parsed.result()
            if post_codes is not None:
                good_codes[passed] = np.where(post_codes == 0, 0, post_codes + 1)
                post_valid = post_codes == 0
        codes = np.ones(n, dtype=np.int8)
        codes[good_idx] = good_codes
        valid = codes == 0
        valid_good = good_codes == 0
        for name, col in pre_cols.items():
            self.columns.setdefault(name, []).append(col[valid_good])
        for name, col in post_cols.items():
            if col is None:
                continue
            if post_valid is not None and not post_valid.all():
                col = (
                    col[post_valid]
                    if isinstance(col, np.ndarray)
                    else col.filter(pa.array(post_valid))
                )
            self.columns.setdefault(name, []).append(col)
        self.nulls += scan.empty()[valid_good].sum(axis=0)
        self.lines += n
        self.counts += np.bincount(codes, minlength=len(self.counts))
        if len(bad_utf8):
            self.invalid_utf8 += int(valid[bad_utf8[bad_utf8 < n]].sum())
        room = self.max_examples - len(self.examples)
        if room > 0 and not valid.all():
            where = np.nonzero(~valid)[0][:room]
            self.examples.extend((first_line + int(i), self.reasons[codes[i] - 1]) for i in where)
        return n

    def fill(self, report: LoadReport, source_columns: list[str]) -> None:
        """Copy the counts into ``report``."""
        report.lines_read = self.lines
        report.rows_read = int(self.counts[0])
        report.rows_skipped = self.lines - report.rows_read
        report.skip_reasons = {
            r: int(c) for r, c in zip(self.reasons, self.counts[1:], strict=True) if c
        }
        report.skipped_lines = self.examples
        report.null_counts = {c: int(k) for c, k in zip(source_columns, self.nulls, strict=True)}
        report.invalid_utf8_lines = self.invalid_utf8


def _nothing_valid(report: LoadReport, path: Path) -> DataError:
    if report.lines_read == 0:
        return DataError(
            f"nothing valid remains in {path}: the file has no data lines "
            f"(empty or header only). Expected at least one rating."
        )
    return DataError(
        f"nothing valid remains in {path}: 0 of {report.lines_read:,} "
        f"{'rows' if report.location == 'row' else 'lines'} valid; {report._skip_text()}. "
        f"Check the format (--format) and the column mapping."
    )


def _finish_report(report: LoadReport, path: Path, t0: float) -> None:
    report.seconds = time.perf_counter() - t0
    if report.rows_read == 0:
        raise _nothing_valid(report, path)
    if report.rows_skipped:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())


# --------------------------------------------------------------------------------------------
# Turning values into the frame's dtypes
# --------------------------------------------------------------------------------------------


def _empty_categorical(n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(
        np.full(n, -1, dtype=np.int8), categories=pd.Index([], dtype="str")
    )


def _categorical(dictionary: pa.Array, indices: np.ndarray) -> pd.Categorical:
    """A Categorical with sorted, used-only categories from a dictionary and codes (-1 = NaN)."""
    used = np.bincount(indices[indices >= 0], minlength=len(dictionary)) > 0
    used_idx = np.nonzero(used)[0]
    values = dictionary.take(pa.array(used_idx)) if len(used_idx) < len(dictionary) else dictionary
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    order = np.asarray(pc.array_sort_indices(values))
    remap = np.full(len(dictionary) + 1, -1, dtype=np.int64)  # last slot: -1 stays -1
    remap[used_idx[order]] = np.arange(len(order))
    codes = remap[indices]
    categories = pd.Index(values.take(pa.array(order)).to_pandas(), dtype="str")
    return pd.Categorical.from_codes(codes, categories=categories, validate=False)


def _canonical_ints(values: pa.Array) -> np.ndarray | None:
    """``values`` (strings) as int64 when every one is a plain decimal integer, else None."""
    try:
        ints = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not pc.all(pc.equal(pc.cast(ints, pa.string()), values)).as_py():
        return None  # leading zeros, '+', spaces: not lossless as integers
    return np.asarray(ints.to_numpy(zero_copy_only=False), dtype=np.int64)


def _dict_parts(chunks: list[pa.Array]) -> tuple[pa.Array, np.ndarray]:
    """Unify dictionary chunks: (dictionary, int64 indices with -1 for null)."""
    ca = pa.chunked_array(chunks, type=_DICT).unify_dictionaries()
    dictionary = ca.chunk(0).dictionary if ca.num_chunks else pa.array([], pa.string())
    indices = [np.asarray(pc.fill_null(c.indices, -1)) for c in ca.chunks]
    idx = np.concatenate(indices).astype(np.int64) if indices else np.empty(0, np.int64)
    return dictionary, idx


def _ids_from_dict(chunks: list[pa.Array]) -> np.ndarray | pd.Categorical:
    """Id column from dictionary chunks: int64 if all used ids are integers, else category."""
    dictionary, idx = _dict_parts(chunks)
    cat = _categorical(dictionary, idx)
    ints = _canonical_ints(pa.array(cat.categories.to_numpy(dtype=object), pa.string()))
    if ints is not None:
        return ints[cat.codes]
    return cat


def _ids_from_strings(chunks: list[pa.ChunkedArray | pa.Array]) -> np.ndarray | pd.Categorical:
    """Id column from plain string chunks: int64 if every id is an integer, else category."""
    flat: list[pa.Array] = []
    for c in chunks:
        flat.extend(c.chunks if isinstance(c, pa.ChunkedArray) else [c])
    arr = pa.chunked_array(flat, type=pa.string()).combine_chunks()
    ints = _canonical_ints(arr)
    if ints is not None:
        return ints
    enc = arr.dictionary_encode()
    return _categorical(enc.dictionary, np.asarray(pc.fill_null(enc.indices, -1), dtype=np.int64))


def _ids_from_arrow(arr: pa.ChunkedArray | pa.Array) -> np.ndarray | pd.Categorical:
    """Id column from any Arrow column without nulls (integers, floats, strings, ...)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = pc.cast(arr, arr.type.value_type)
    t = arr.type
    if pa.types.is_integer(t):
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    if pa.types.is_floating(t):
        vals = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        if len(vals) and np.all(vals == np.round(vals)) and np.abs(vals).max() < 2**53:
            return vals.astype(np.int64)
    if not pa.types.is_string(t):
        arr = pc.cast(arr, pa.string())
    return _ids_from_strings([arr])


def _frame(
    customer: np.ndarray | pd.Categorical,
    product: np.ndarray | pd.Categorical,
    title: pd.Categorical,
    rating: np.ndarray,
    date_us: np.ndarray,
) -> pd.DataFrame:
    """Assemble the ratings frame (columns in :data:`RATINGS_COLUMNS` order)."""
    data = {
        CUSTOMER: customer,
        PRODUCT: product,
        TITLE: title,
        RATING: np.asarray(rating, dtype=np.float32),
        DATE: np.asarray(date_us, dtype=np.int64).view(DATE_DTYPE),
    }
    df = pd.DataFrame(data, columns=list(RATINGS_COLUMNS), copy=False)
    return df


def _parse_day(text: str) -> int:
    """Microseconds since epoch of a ``YYYY-MM-DD`` date (spaces allowed), or NaT."""
    s = text.strip()
    if not _ISO_DAY.fullmatch(s):
        return _NAT
    try:
        return int(np.datetime64(s, "D").astype(np.int64)) * _US_PER_DAY
    except ValueError:
        return _NAT


def _classify_cache(
    classify: Callable[[str], tuple[float, int]],
) -> Callable[[pa.ChunkedArray, int], tuple[np.ndarray, np.ndarray]]:
    """Vectorise ``classify(text) -> (value, code)`` over dictionary chunks, with a cache."""
    cache: dict[str, tuple[float, int]] = {}

    def run(col: pa.ChunkedArray, null_code: int) -> tuple[np.ndarray, np.ndarray]:
        vals, codes = [], []
        for ch in col.chunks:
            if not pa.types.is_dictionary(ch.type):
                ch = ch.dictionary_encode()
            pairs = []
            for s in ch.dictionary.to_pylist():
                hit = cache.get(s)
                if hit is None:
                    hit = cache[s] = classify(s)
                pairs.append(hit)
            pairs.append((math.nan, null_code))
            v = np.array([p[0] for p in pairs], dtype=np.float32)
            c = np.array([p[1] for p in pairs], dtype=np.int8)
            idx = np.asarray(pc.fill_null(ch.indices, len(pairs) - 1))
            vals.append(v[idx])
            codes.append(c[idx])
        if not vals:
            return np.empty(0, np.float32), np.empty(0, np.int8)
        return np.concatenate(vals), np.concatenate(codes)

    return run


def _number(text: str) -> float | None:
    try:
        x = float(text.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# Amazon reviews TSV
# --------------------------------------------------------------------------------------------

_AMAZON_REASONS = [
    "missing customer_id/product_id",
    "non-numeric star_rating",
    "non-integer star_rating",
    "star_rating outside 1-5",
]


def _classify_star(text: str) -> tuple[float, int]:
    """Amazon star rating: an integer 1..5, surrounding spaces allowed, ``5.0`` counts as 5."""
    x = _number(text)
    if x is None:
        return math.nan, 2
    if x != int(x):
        return math.nan, 3
    if not 1 <= x <= 5:
        return math.nan, 4
    return x, 0


def _stars(
    scan: _Scan, j: int, cache: dict[bytes, tuple[float, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 stars, code) of field ``j``: one digit 1-5 vectorised, the rest in Python."""
    start, end = scan.field(j)
    first = scan.arr[np.minimum(start, len(scan.arr) - 1)]
    fast = (end - start == 1) & (first >= 49) & (first <= 53)  # b"1".."5"
    values = (first.astype(np.float32) - 48).astype(np.float32)
    codes = np.zeros(len(start), dtype=np.int8)
    for i in np.nonzero(~fast)[0]:
        raw = scan.buf[start[i] : end[i]]
        hit = cache.get(raw)
        if hit is None:
            hit = cache[raw] = _classify_star(raw.decode("utf-8", errors="replace"))
        values[i], codes[i] = hit
    return values, codes


_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _iso_dates(scan: _Scan, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 microseconds with NaT, unparseable flag) of ``YYYY-MM-DD`` field ``j``.

    Ten-byte fields are parsed vectorised; other non-empty ones (e.g. with spaces) in Python.
    """
    start, end = scan.field(j)
    length = end - start
    out = np.full(len(start), _NAT, dtype=np.int64)
    ten = np.nonzero(length == 10)[0]
    if len(ten):
        b = scan.arr[start[ten, None] + np.arange(10)].astype(np.int64) - 48  # b"0" -> 0
        digits = b[:, [0, 1, 2, 3, 5, 6, 8, 9]]
        ok = ((digits >= 0) & (digits <= 9)).all(axis=1) & (b[:, 4] == -3) & (b[:, 7] == -3)
        y = b[:, 0] * 1000 + b[:, 1] * 100 + b[:, 2] * 10 + b[:, 3]
        m = b[:, 5] * 10 + b[:, 6]
        d = b[:, 8] * 10 + b[:, 9]
        ok &= (m >= 1) & (m <= 12)
        m = np.where(ok, m, 1)
        leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
        ok &= (d >= 1) & (d <= _MONTH_DAYS[m - 1] + ((m == 2) & leap))
        days = _days_from_civil(y[ok], m[ok], d[ok])
        out[ten[ok]] = days * _US_PER_DAY
    for i in np.nonzero((length > 0) & (length != 10))[0]:
        out[i] = _parse_day(scan.buf[start[i] : end[i]].decode("utf-8", errors="replace"))
    return out, (length > 0) & (out == _NAT)


def _arrow_options(
    n_fields: int, sep: str, types: dict[int, pa.DataType]
) -> tuple[pcsv.ReadOptions, pcsv.ParseOptions, pcsv.ConvertOptions]:
    """Arrow CSV options for unquoted delimited text with ``n_fields`` fields, reading ``types``."""
    names = [f"f{i}" for i in range(n_fields)]
    read = pcsv.ReadOptions(column_names=names, use_threads=True, block_size=1 << 20)
    parse = pcsv.ParseOptions(
        delimiter=sep, quote_char=False, escape_char=False, newlines_in_values=False
    )
    convert = pcsv.ConvertOptions(
        include_columns=[f"f{i}" for i in sorted(types)],
        column_types={f"f{i}": t for i, t in types.items()},
        strings_can_be_null=True,
        null_values=[""],
        true_values=[],
        false_values=[],
    )
    return read, parse, convert


def _read_csv(clean: bytes, n_rows: int, options: tuple[Any, Any, Any]) -> pa.Table:
    tbl = pcsv.read_csv(
        pa.py_buffer(clean),
        read_options=options[0],
        parse_options=options[1],
        convert_options=options[2],
    )
    if tbl.num_rows != n_rows:  # pragma: no cover - the scan guarantees this
        raise RuntimeError(f"internal error: parsed {tbl.num_rows} rows, expected {n_rows}")
    return tbl


def _read_header(blocks: Iterator[bytes]) -> tuple[str | None, bytes]:
    """Split the header line off the first block; (None, b"") for an empty file."""
    first = next(blocks, b"")
    if not first:
        return None, b""
    cut = first.find(b"\n")
    header = first[:cut].rstrip(b"\r")
    if header.startswith(b"\xef\xbb\xbf"):
        header = header[3:]
    return header.decode("utf-8", errors="replace"), first[cut + 1 :]


#: Default bytes per block. Blocks above glibc's 32 MiB mmap threshold are returned to the OS
#: after each block and page-faulted in again, which costs more than it saves here.
DEFAULT_BLOCK_SIZE = 16 << 20


def load_amazon_reviews(
    path: str | Path, *, max_examples: int = 10, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[pd.DataFrame, LoadReport]:
    """Load an Amazon Customer Reviews TSV (plain or gzip) as a ratings frame.

    The file is a header line of tab-separated column names (normally the 15
    :data:`~recsys.data.schema.AMAZON_COLUMNS`, in any order; ``product_title`` and
    ``review_date`` may be absent) followed by one review per line. There is no quoting or
    escaping: ``"`` and HTML in the text are literal. LF or CRLF line endings; a lone CR
    inside a field becomes a space. The file is streamed in blocks, and only the five
    needed columns are materialised (review text never becomes Python objects).

    Malformed lines are skipped and reported: a field count different from the header's
    (blank lines too), an empty ``customer_id``/``product_id`` ("missing
    customer_id/product_id"), or a ``star_rating`` that is not an integer from 1 to 5:
    empty or ``five`` is "non-numeric star_rating", ``4.5`` "non-integer star_rating", ``0``
    or ``6`` "star_rating outside 1-5" (surrounding spaces are allowed and ``5.0`` counts as
    5). A ``review_date`` that is not a valid ``YYYY-MM-DD`` (spaces allowed) becomes NaT,
    counted in ``bad_dates``; the row is kept. Lines that are not valid UTF-8 are decoded
    with U+FFFD replacement and kept (``invalid_utf8_lines``).

    Parameters
    ----------
    path : str or Path
        The ``.tsv`` or ``.tsv.gz`` file (gzip is detected by its magic bytes).
    max_examples : int, default 10
        How many skipped lines to record (line number and reason) in the report.
    block_size : int, default 16 MiB
        Bytes read per block (the next block is read while one is processed).

    Returns
    -------
    frame : pandas.DataFrame
        The ratings frame (see the module docstring for the dtypes), in file order.
    report : LoadReport
        Counts of lines read, kept and skipped, null counts for every header column.

    Raises
    ------
    DataError
        The file is missing, is a directory, lacks a required column in its header, or has
        no valid line.
    """
    t0 = time.perf_counter()
    p = _check_file(path)
    report = LoadReport(source=str(path), format="amazon")
    with _open_binary(p) as fh, contextlib.closing(_iter_blocks(fh, block_size)) as blocks:
        header, rest = _read_header(blocks)
        if header is None:
            raise DataError(
                f"{p} is empty; expected an Amazon reviews TSV starting with the header "
                f"{chr(9).join(AMAZON_COLUMNS)!r}."
            )
        names = header.split("\t")
        report.columns = names
        _check_columns(names, p)
        pos = {name: i for i, name in enumerate(names)}
        n_fields = len(names)
        types = {pos[CUSTOMER]: pa.string(), pos[PRODUCT]: _DICT}
        if TITLE in pos:
            types[pos[TITLE]] = _DICT
        options = _arrow_options(n_fields, "\t", types)
        star_cache: dict[bytes, tuple[float, int]] = {}

        def validate(scan: _Scan) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            stars, codes = _stars(scan, pos[RATING], star_cache)
            missing = np.zeros(len(codes), dtype=bool)
            for name in (CUSTOMER, PRODUCT):
                start, end = scan.field(pos[name])
                missing |= start == end
            codes[missing] = 1
            cols = {RATING: stars}
            if DATE in pos:
                cols[DATE], cols["bad_date"] = _iso_dates(scan, pos[DATE])
            return codes, cols

        def parse(clean: bytes, n_rows: int) -> tuple[None, dict[str, Any]]:
            tbl = _read_csv(clean, n_rows, options)
            return None, {
                name: tbl.column(f"f{pos[name]}")
                for name in (CUSTOMER, PRODUCT, TITLE)
                if name in pos
            }

        with _Collector(n_fields, _AMAZON_REASONS, max_examples) as collector:
            line_no = 2
            for buf in _chain_first(rest, blocks):
                line_no += collector.add_block(buf, line_no, 9, parse, validate)
    collector.fill(report, names)
    _finish_report(report, p, t0)

    cols = collector.columns
    n = report.rows_read
    customer = _ids_from_strings(cols[CUSTOMER])
    product = _ids_from_dict(_flatten(cols[PRODUCT]))
    if TITLE in pos:
        title = _categorical(*_dict_parts(_flatten(cols[TITLE])))
    else:
        title = _empty_categorical(n)
    if DATE in pos:
        dates = np.concatenate(cols[DATE])
        report.bad_dates = int(sum(int(b.sum()) for b in cols["bad_date"]))
    else:
        dates = np.full(n, _NAT, dtype=np.int64)
    frame = _frame(customer, product, title, np.concatenate(cols[RATING]), dates)
    report.seconds = time.perf_counter() - t0
    return frame, report


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _flatten(cols: list[pa.ChunkedArray]) -> list[pa.Array]:
    return [chunk for c in cols for chunk in c.chunks]


def _check_columns(names: list[str], path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path} lacks the required column(s) {missing} in its header; found {names}. "
            f"Expected a tab-separated Amazon reviews header with at least "
            f"{list(REQUIRED_COLUMNS)} (normally all of {list(AMAZON_COLUMNS)}). For another "
            f"layout use load_table(path, user=..., item=..., rating=...) / --format csv."
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes} in the header {names}.")


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------

_ML_REASONS = [
    "missing user/item id",
    "non-integer user/item id",
    "non-numeric rating",
    "rating outside 0.5-5",
]
_ML_VARIANTS = {
    # variant: (source columns, separator as it is in the file, header?, sibling titles file)
    "u.data": (["user_id", "item_id", "rating", "timestamp"], b"\t", False, "u.item"),
    "ratings.dat": (["UserID", "MovieID", "Rating", "Timestamp"], b"::", False, "movies.dat"),
    "ratings.csv": (["userId", "movieId", "rating", "timestamp"], b",", True, "movies.csv"),
}


def _classify_ml_rating(text: str) -> tuple[float, int]:
    x = _number(text)
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


def _ml_variant(head: bytes, path: Path) -> str:
    first = head.split(b"\n", 1)[0].rstrip(b"\r").lstrip(b"\xef\xbb\xbf")
    if first.lower().startswith(b"userid,movieid,rating"):
        return "ratings.csv"
    if b"::" in first:
        return "ratings.dat"
    if b"\t" in first:
        return "u.data"
    for name in _ML_VARIANTS:
        if path.name.startswith(name):
            return name
    raise DataError(
        f"{path} does not look like a MovieLens ratings file: its first line is "
        f"{first[:80]!r}. Expected u.data (user<TAB>item<TAB>rating<TAB>timestamp), "
        f"ratings.dat (user::item::rating::timestamp) or ratings.csv (header "
        f"userId,movieId,rating,timestamp)."
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
    separators, tabs). Ratings must be numbers from 0.5 to 5; user and movie ids integers
    (so both id columns are ``int64``); timestamps are unix seconds (an unparseable one
    becomes NaT and is counted in ``bad_dates``). Malformed lines are skipped and reported
    as for :func:`load_amazon_reviews`.

    Parameters
    ----------
    path : str or Path
        The ratings file (plain or gzip).
    titles : bool, str, Path or None, default True
        True: read titles from the sibling file (``u.item`` -- ``|``-separated latin-1;
        ``movies.dat`` -- ``id::title::genres``; ``movies.csv`` -- a real CSV with quoted
        titles), if it exists. False/None: no titles. A path: read titles from that file
        (same three formats, recognised by content).
    max_examples, block_size
        As for :func:`load_amazon_reviews`.

    Returns
    -------
    frame : pandas.DataFrame
        The ratings frame; ``product_id`` is the movie id (int64).
    report : LoadReport

    Raises
    ------
    DataError
        Missing file, unrecognised content, missing titles file given by path, or no valid
        line.
    """
    t0 = time.perf_counter()
    p = _check_file(path)
    variant = _ml_variant(_head(p), p)
    names, sep, has_header, sibling = _ML_VARIANTS[variant]
    report = LoadReport(source=str(path), format="movielens", columns=list(names))
    # "::" is two bytes; blocks of ratings.dat get it replaced by the ASCII unit separator.
    sep_byte = sep[0] if len(sep) == 1 else 0x1F
    delimiter = chr(sep_byte)
    options = _arrow_options(4, delimiter, {0: pa.int64(), 1: pa.int64(), 2: _DICT, 3: pa.int64()})
    string_options = _arrow_options(
        4, delimiter, {0: pa.string(), 1: pa.string(), 2: _DICT, 3: pa.string()}
    )
    ratings = _classify_cache(_classify_ml_rating)
    bad_ts = [0]

    def parse(clean: bytes, n_rows: int) -> tuple[np.ndarray, dict[str, Any]]:
        buffer = pa.py_buffer(clean)
        try:
            tbl = pcsv.read_csv(
                buffer,
                read_options=options[0],
                parse_options=options[1],
                convert_options=options[2],
            )
        except pa.ArrowInvalid:  # a non-integer somewhere: parse as text and sort it out
            tbl = pcsv.read_csv(
                buffer,
                read_options=string_options[0],
                parse_options=string_options[1],
                convert_options=string_options[2],
            )
        user, user_ok = _int_column(tbl.column("f0"))
        item, item_ok = _int_column(tbl.column("f1"))
        rating, codes = ratings(tbl.column("f2"), null_code=3)
        missing = np.asarray(pc.or_(pc.is_null(tbl.column("f0")), pc.is_null(tbl.column("f1"))))
        codes = np.where(~(user_ok & item_ok), np.int8(2), codes)
        codes = np.where(missing, np.int8(1), codes)
        ts_col = tbl.column("f3")
        ts, ts_ok = _int_column(ts_col)
        present = np.asarray(pc.is_valid(ts_col))
        us = np.where(ts_ok, ts * 1_000_000, _NAT)
        bad_ts[0] += int((present & ~ts_ok & (codes == 0)).sum())
        return codes, {"user": user, "item": item, RATING: rating, DATE: us}

    with (
        _Collector(4, _ML_REASONS, max_examples) as collector,
        _open_binary(p) as fh,
        contextlib.closing(_iter_blocks(fh, block_size)) as file_blocks,
    ):
        blocks: Iterator[bytes] = file_blocks
        line_no = 1
        if has_header:
            header, rest = _read_header(blocks)
            if header is not None:
                report.columns = header.split(",")
                _check_ml_header(report.columns, p)
            line_no = 2
            blocks = _chain_first(rest, blocks)
        for buf in blocks:
            if len(sep) > 1:
                buf = buf.replace(sep, b"\x1f")
            line_no += collector.add_block(buf, line_no, sep_byte, parse)
    collector.fill(report, report.columns if has_header else names)
    report.bad_dates = bad_ts[0]
    _finish_report(report, p, t0)

    cols = collector.columns
    user = np.concatenate(cols["user"])
    item = np.concatenate(cols["item"])
    rating = np.concatenate(cols[RATING])
    dates = np.concatenate(cols[DATE])
    title_map = _movielens_titles(p, sibling, titles)
    title = _titles_for(item, title_map)
    frame = _frame(user, item, title, rating, dates)
    report.seconds = time.perf_counter() - t0
    return frame, report


def _check_ml_header(names: list[str], path: Path) -> None:
    expected = ["userId", "movieId", "rating", "timestamp"]
    if [n.strip() for n in names] != expected:
        raise DataError(
            f"{path}: expected the MovieLens ratings.csv header {','.join(expected)}; found "
            f"{','.join(names)}. For another layout use load_table(path, user=..., item=..., "
            f"rating=..., timestamp=...)."
        )


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_titles_file(path: Path) -> dict[int, str]:
    """Movie id -> title from ``u.item``, ``movies.dat`` or ``movies.csv`` (by content)."""
    text = _decode_text(_read_all(path)).lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    out: dict[int, str] = {}
    if first.lower().startswith("movieid,title"):
        reader = csv.reader(io.StringIO(text, newline=""))
        next(reader, None)
        for row in reader:
            if len(row) >= 2 and row[0].strip().lstrip("-").isdigit():
                out[int(row[0])] = row[1]
        return out
    sep = "::" if "::" in first else "|"
    for line in text.splitlines():
        parts = line.split(sep)
        if len(parts) >= 2 and parts[0].strip().isdigit():
            out[int(parts[0])] = parts[1] if sep == "|" else sep.join(parts[1:-1]) or parts[1]
    return out


def _movielens_titles(
    ratings_path: Path, sibling: str, titles: str | Path | None | bool
) -> dict[int, str]:
    if titles is None or titles is False:
        return {}
    if titles is True:
        candidate = ratings_path.with_name(sibling)
        if not candidate.is_file():
            logger.info("no %s next to %s: loading without titles", sibling, ratings_path)
            return {}
        return _read_titles_file(candidate)
    return _read_titles_file(_check_file(titles))


def _titles_for(item: np.ndarray, title_map: dict[int, str]) -> pd.Categorical:
    if not title_map:
        return _empty_categorical(len(item))
    ids = np.fromiter(title_map.keys(), dtype=np.int64, count=len(title_map))
    names = pa.array(list(title_map.values()), pa.string())
    pos = pd.Index(ids).get_indexer(item)
    enc = names.dictionary_encode()
    codes_of_id = np.asarray(enc.indices, dtype=np.int64)
    idx = np.where(pos >= 0, codes_of_id[pos], -1)
    return _categorical(enc.dictionary, idx)


# --------------------------------------------------------------------------------------------
# Any CSV / Parquet with a column mapping
# --------------------------------------------------------------------------------------------

_SEPARATORS = (",", ";", "\t", "|")


def _sniff_sep(text: str) -> str:
    """The delimiter among , ; TAB | that splits the first lines most consistently."""
    lines = [ln for ln in text.splitlines()[:50] if ln.strip()]
    if not lines:
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(lines[:20]), delimiters="".join(_SEPARATORS)).delimiter
    except csv.Error:
        pass
    best, best_score = ",", (-1, 0)
    for sep in _SEPARATORS:
        counts = [ln.count(sep) for ln in lines]
        if counts[0] == 0:
            continue
        score = (sum(c == counts[0] for c in counts), counts[0])
        if score > best_score:
            best, best_score = sep, score
    return best


def _table_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("csv", "parquet"):
            raise DataError(f"load_table reads 'csv' or 'parquet'; got format={format!r}.")
        return format
    with open(path, "rb") as fh:
        return "parquet" if fh.read(4) == _PARQUET_MAGIC else "csv"


def _mapping(
    user: str, item: str, rating: str, timestamp: str | None, title: str | None
) -> dict[str, str]:
    m = {CUSTOMER: user, PRODUCT: item, RATING: rating}
    if timestamp is not None:
        m[DATE] = timestamp
    if title is not None:
        m[TITLE] = title
    return m


def _check_mapping(mapping: dict[str, str], available: list[str], path: Path) -> None:
    missing = {k: v for k, v in mapping.items() if v not in available}
    if missing:
        arg = {
            CUSTOMER: "user",
            PRODUCT: "item",
            RATING: "rating",
            DATE: "timestamp",
            TITLE: "title",
        }
        named = ", ".join(f"{arg[k]}={v!r}" for k, v in missing.items())
        raise DataError(
            f"{path}: mapped column(s) not found: {named}. Available columns: {available}. "
            f"Fix: pass the source's own column names, e.g. "
            f"{arg[next(iter(missing))]}={available[0]!r}."
        )


def _ratings_from_arrow(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 ratings, code) for any column: 0 valid, 2 non-numeric or missing."""
    if (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_decimal(col.type)
    ):
        vals = np.asarray(
            pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
        vals = np.where(np.asarray(pc.is_valid(col)), vals, np.nan)
    else:
        text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
        try:
            vals = np.asarray(
                pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
            )
        except pa.ArrowInvalid:
            vals = np.array(
                [
                    math.nan if s is None else (_number(s) if _number(s) is not None else math.nan)
                    for s in text.to_pylist()
                ],
                dtype=np.float64,
            )
    ok = np.isfinite(vals)
    return vals.astype(np.float32), np.where(ok, 0, 2).astype(np.int8)


def _dates_from_arrow(col: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, int]:
    """(int64 us with NaT, number of present-but-unparseable values) for a timestamp column."""
    if col is None:
        return np.full(n, _NAT, dtype=np.int64), 0
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if pa.types.is_timestamp(t) and t.tz is not None:
            col = pc.cast(col, pa.timestamp(t.unit, tz="UTC"))
        s = pd.Series(col.to_pandas())
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return pd.to_datetime(s).to_numpy().astype(DATE_DTYPE).view(np.int64), 0
    present = np.asarray(pc.is_valid(col))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col.to_pandas()
        nums = pd.to_numeric(text, errors="coerce")
        if (nums.notna() == pd.Series(present)).all():
            return _unix_to_us(np.asarray(nums, dtype=np.float64)), 0
        parsed = pd.to_datetime(text, errors="coerce", utc=True)
        retry = parsed.isna() & pd.Series(present)
        if retry.any():
            parsed[retry] = pd.to_datetime(text[retry], errors="coerce", utc=True, format="mixed")
        us = parsed.dt.tz_localize(None).to_numpy().astype(DATE_DTYPE).view(np.int64)
        bad = int((present & (us == _NAT)).sum())
        return us, bad
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        vals = np.asarray(
            pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
        vals = np.where(present, vals, np.nan)
        return _unix_to_us(vals), 0
    raise DataError(f"cannot interpret a timestamp column of type {t}; expected numbers or dates.")


def _unix_to_us(vals: np.ndarray) -> np.ndarray:
    """Unix seconds (or milliseconds, when the values exceed 1e11) to int64 microseconds."""
    finite = np.isfinite(vals)
    scale = 1_000 if finite.any() and np.abs(vals[finite]).max() > 1e11 else 1_000_000
    out = np.full(len(vals), _NAT, dtype=np.int64)
    out[finite] = np.round(vals[finite] * scale).astype(np.int64)
    return out


def _is_blank(col: pa.ChunkedArray) -> np.ndarray:
    """Missing id: null, empty string or NaN."""
    blank = pc.is_null(col, nan_is_null=True)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        blank = pc.or_(blank, pc.fill_null(pc.equal(col, ""), True))
    return np.asarray(blank)


def _null_count(col: pa.ChunkedArray | pa.Array) -> int:
    """Nulls plus empty strings."""
    n = col.null_count
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        n += int(pc.sum(pc.equal(col, "")).as_py() or 0)
    return int(n)


_TABLE_REASONS = ["missing user/item id", "non-numeric rating"]


def load_table(
    path: str | Path,
    *,
    user: str,
    item: str,
    rating: str,
    timestamp: str | None = None,
    title: str | None = None,
    format: str | None = None,
    sep: str | None = None,
    titles_path: str | Path | None = None,
    max_examples: int = 10,
) -> tuple[pd.DataFrame, LoadReport]:
    """Load any CSV or Parquet file, naming its user, item and rating columns.

    CSV: the separator is detected among ``, ; TAB |`` unless ``sep`` is given; the first
    line is the header; fields may be quoted (``"a, b"``) but may not span lines; LF or CRLF.
    The whole file is read into memory (use :func:`load_amazon_reviews` for multi-GB review
    dumps). Parquet is recognised by its ``PAR1`` magic (or ``format="parquet"``).

    A row is skipped when its field count is wrong (CSV), its user or item is empty, or its
    rating is not a finite number -- reported with the CSV line number, or the 1-based
    Parquet row number (``report.location == "row"``). Ratings are not range-checked. Ids
    follow the rule of the module docstring (integral floats such as ``3.0`` count as
    integers). Timestamps: numbers are unix seconds, or milliseconds when some value exceeds
    1e11; text is parsed with :func:`pandas.to_datetime` (unparseable -> NaT, counted in
    ``bad_dates``); time zones are converted to UTC and dropped.

    Parameters
    ----------
    path : str or Path
        The CSV (plain or gzip) or Parquet file.
    user, item, rating : str
        Source column names for ``customer_id``, ``product_id`` and ``star_rating``.
    timestamp, title : str, optional
        Source column names for ``review_date`` and ``product_title``.
    format : {"csv", "parquet"}, optional
        Forces the format; by default, by content.
    sep : str, optional
        CSV separator (one character); detected when None.
    titles_path : None
        Reserved; titles from a separate file are not supported yet (give ``title=``).
    max_examples : int, default 10
        How many skipped lines/rows to record.

    Returns
    -------
    frame : pandas.DataFrame
    report : LoadReport
        ``null_counts`` covers all source columns.

    Raises
    ------
    DataError
        Missing file, a mapped column that does not exist (the message lists the available
        ones), an unreadable file, or no valid row.
    """
    t0 = time.perf_counter()
    p = _check_file(path)
    if titles_path is not None:
        raise DataError(
            "load_table(titles_path=...) is not supported; name the title column with "
            "title=... instead (or join titles onto the frame afterwards)."
        )
    fmt = _table_format(p, format)
    mapping = _mapping(user, item, rating, timestamp, title)
    report = LoadReport(source=str(path), format=fmt)
    if fmt == "parquet":
        source = _read_parquet(p, mapping, report)
    else:
        source = _read_csv_table(p, mapping, sep, report)
    tbl = source.table

    codes = np.where(
        _is_blank(tbl.column(mapping[CUSTOMER])) | _is_blank(tbl.column(mapping[PRODUCT])),
        np.int8(1),
        _ratings_from_arrow(tbl.column(mapping[RATING]))[1],
    )
    valid = codes == 0
    bad_rows = np.nonzero(~valid)[0]
    skipped = [(int(n), _WRONG_FIELDS) for n in source.wrong_fields]
    skipped += [(int(source.numbers[i]), _TABLE_REASONS[codes[i] - 1]) for i in bad_rows]
    skipped.sort()
    report.lines_read = tbl.num_rows + len(source.wrong_fields)
    report.rows_read = int(valid.sum())
    report.rows_skipped = len(skipped)
    for reason in (_WRONG_FIELDS, *_TABLE_REASONS):
        count = sum(1 for _, r in skipped if r == reason)
        if count:
            report.skip_reasons[reason] = count
    report.skipped_lines = skipped[: max(int(max_examples), 0)]
    keep = pa.array(valid)
    for name in report.columns:
        col = tbl.column(name) if name in tbl.column_names else source.column(name)
        report.null_counts[name] = _null_count(col.filter(keep))
    report.invalid_utf8_lines = int(np.isin(source.numbers[valid], source.bad_utf8).sum())
    _finish_report(report, p, t0)

    kept = {k: tbl.column(v).filter(keep) for k, v in mapping.items()}
    customer = _ids_from_arrow(kept[CUSTOMER])
    product = _ids_from_arrow(kept[PRODUCT])
    stars, _ = _ratings_from_arrow(kept[RATING])
    dates, report.bad_dates = _dates_from_arrow(kept.get(DATE), report.rows_read)
    if TITLE in kept:
        col = kept[TITLE].combine_chunks()
        col = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
        enc = col.dictionary_encode()
        title_cat = _categorical(
            enc.dictionary, np.asarray(pc.fill_null(enc.indices, -1), dtype=np.int64)
        )
        if "" in title_cat.categories:
            title_cat = title_cat.remove_categories([""])
    else:
        title_cat = _empty_categorical(report.rows_read)
    frame = _frame(customer, product, title_cat, stars, dates)
    report.seconds = time.perf_counter() - t0
    return frame, report


@dataclass
class _TableSource:
    table: pa.Table  # the mapped columns (CSV: all columns), one row per data row
    numbers: np.ndarray  # line (CSV) or row (Parquet) number of each table row
    wrong_fields: list[int]  # numbers of lines dropped for a wrong field count
    bad_utf8: np.ndarray  # numbers of lines that were not valid UTF-8
    column: Callable[[str], pa.ChunkedArray]  # reads any source column (Parquet)


def _read_csv_table(
    path: Path, mapping: dict[str, str], sep: str | None, report: LoadReport
) -> _TableSource:
    """Read a whole CSV, every column as strings."""
    data = _read_all(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    data, bad_utf8 = _normalise(data)
    if not data.strip():
        raise DataError(f"{path} is empty; expected a CSV with a header line.")
    if sep is None:
        sep = _sniff_sep(data[: 1 << 16].decode("utf-8", errors="replace"))
    if len(sep) != 1:
        raise DataError(f"sep must be a single character; got {sep!r}.")
    header_line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    names = next(csv.reader([header_line], delimiter=sep), [])
    report.columns = names
    _check_mapping(mapping, names, path)
    invalid: list[int | None] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row.number)
        return "skip"

    try:
        tbl = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(use_threads=False, block_size=16 << 20),
            parse_options=pcsv.ParseOptions(
                delimiter=sep,
                newlines_in_values=False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=True,
                null_values=[""],
                true_values=[],
                false_values=[],
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot parse {path} as CSV with sep={sep!r}: {exc}") from exc
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    n_lines = len(lines) - 1  # data lines, without the header
    if None in invalid or tbl.num_rows + len(invalid) != n_lines:
        # Cannot map rows to lines (e.g. a quoted field spanning lines): count rows instead.
        report.location = "row"
        numbers = np.arange(1, tbl.num_rows + 1)
        return _TableSource(tbl, numbers, [], np.empty(0, np.int64), tbl.column)
    wrong = sorted(int(n) for n in invalid)
    numbers = np.setdiff1d(np.arange(2, n_lines + 2), np.asarray(wrong, dtype=np.int64))
    # Arrow turns a blank line into an all-null row: it is a wrong field count.
    blank = np.fromiter((not lines[n - 1] for n in numbers), dtype=bool, count=len(numbers))
    if blank.any():
        wrong = sorted(wrong + numbers[blank].tolist())
        tbl = tbl.filter(pa.array(~blank))
        numbers = numbers[~blank]
    return _TableSource(tbl, numbers, wrong, bad_utf8 + 1, tbl.column)


def _read_parquet(path: Path, mapping: dict[str, str], report: LoadReport) -> _TableSource:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}") from exc
    report.columns = list(pf.schema_arrow.names)
    report.location = "row"
    _check_mapping(mapping, report.columns, path)

    def column(name: str) -> pa.ChunkedArray:
        return pf.read(columns=[name]).column(0)

    tbl = pf.read(columns=list(dict.fromkeys(mapping.values())))
    numbers = np.arange(1, tbl.num_rows + 1)
    return _TableSource(tbl, numbers, [], np.empty(0, np.int64), column)


# --------------------------------------------------------------------------------------------
# Detection and dispatch
# --------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Guess the format of a ratings file from its content (and name).

    Returns ``"parquet"`` (``PAR1`` magic), ``"amazon"`` (a tab-separated header with at
    least ``customer_id``, ``product_id``, ``star_rating``), ``"movielens"`` (header
    ``userId,movieId,rating``, ``::``-separated numbers, or ``u.data``-style tab-separated
    numbers) or ``"csv"`` (any other delimited text with a header). Gzip is looked into.

    Raises
    ------
    DataError
        Missing file, empty file, or content that is none of these (the message suggests
        ``--format``).
    """
    p = _check_file(path)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == _PARQUET_MAGIC:
        return "parquet"
    head = _head(p)
    if not head.strip():
        raise DataError(f"{p} is empty; cannot detect its format.")
    first = head.split(b"\n", 1)[0].rstrip(b"\r").lstrip(b"\xef\xbb\xbf")
    if b"\x00" in head[:4096]:
        raise DataError(
            f"cannot detect the format of {p}: it looks binary (not text, Parquet or gzip). "
            f"Pass the format explicitly: --format amazon|movielens|csv|parquet."
        )
    text = first.decode("utf-8", errors="replace")
    fields = [f.strip() for f in text.split("\t")]
    if all(c in fields for c in REQUIRED_COLUMNS):
        return "amazon"
    low = text.lower().replace(" ", "")
    if low.startswith("userid,movieid,rating"):
        return "movielens"
    numeric = re.compile(r"[0-9.]+")
    if (
        "::" in text
        and len(text.split("::")) == 4
        and all(numeric.fullmatch(x) for x in text.split("::"))
    ):
        return "movielens"
    if (
        len(fields) == 4
        and all(numeric.fullmatch(x) for x in fields)
        and (p.name.startswith("u.") or p.suffix in (".data", ""))
    ):
        return "movielens"
    if any(s in text for s in _SEPARATORS):
        return "csv"
    raise DataError(
        f"cannot detect the format of {p} from its first line {text[:80]!r}. "
        f"Pass the format explicitly: --format amazon|movielens|csv|parquet."
    )


_CANONICAL_MAPPING = {
    "user": CUSTOMER,
    "item": PRODUCT,
    "rating": RATING,
    "timestamp": DATE,
    "title": TITLE,
}


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
    if fmt == "amazon":
        return load_amazon_reviews(path, **options)
    if fmt == "movielens":
        return load_movielens(path, **options)
    if fmt in ("csv", "parquet"):
        return load_table(path, format=fmt, **_default_mapping(Path(path), fmt, options))
    raise DataError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}.")


def _default_mapping(path: Path, fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("user", "item", "rating") if not options.get(k)]
    if not missing:
        return options
    columns = _table_columns(_check_file(path), fmt, options.get("sep"))
    out = dict(options)
    for key, canonical in _CANONICAL_MAPPING.items():
        if key not in out and canonical in columns:
            out[key] = canonical
    still = [k for k in ("user", "item", "rating") if not out.get(k)]
    if still:
        raise DataError(
            f"{path} is {fmt}: name its columns with {', '.join(f'{k}=...' for k in still)} "
            f"(e.g. --user/--item/--rating). Available columns: {columns}."
        )
    return out


def _table_columns(path: Path, fmt: str, sep: str | None) -> list[str]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    head = _head(path).decode("utf-8", errors="replace").lstrip("\ufeff")
    sep = sep or _sniff_sep(head)
    first = head.splitlines()[0] if head else ""
    return next(csv.reader([first], delimiter=sep), [])
