"""Any CSV or Parquet file, with its user, item and rating columns named by the caller."""

from __future__ import annotations

import csv
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from ..schema import CUSTOMER, DATE, PRODUCT, RATING, TITLE
from . import columns as C
from .report import LoadReport, finish
from .text import (
    Block,
    Tally,
    check_file,
    describe_columns,
    head,
    parse,
    split_header,
    starts_with,
)

PARQUET_MAGIC = b"PAR1"
SEPARATORS = (",", ";", "\t", "|")
_REASONS = ["missing user/item id", "non-numeric rating", "negative or infinite rating"]
#: The option of :func:`load_table` that names the source column of each ratings column.
OPTIONS = {CUSTOMER: "user", PRODUCT: "item", RATING: "rating", DATE: "timestamp", TITLE: "title"}


def sniff_sep(text: str) -> str:
    """The delimiter among , ; TAB | that splits the first lines most consistently."""
    lines = [ln for ln in text[:8192].splitlines()[:20] if ln.strip()]
    if not lines:
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters="".join(SEPARATORS)).delimiter
    except csv.Error:  # the separator in the first line that most lines have as often
        n = {sep: lines[0].count(sep) for sep in SEPARATORS if sep in lines[0]}
        score = {sep: (sum(ln.count(sep) == k for ln in lines), k) for sep, k in n.items()}
        return max(score, key=score.__getitem__) if score else ","


def csv_header(line: str, sep: str, path: Path) -> list[str]:
    """Column names of a CSV header line (quoted names allowed)."""
    try:
        return next(csv.reader([line], delimiter=sep), [])
    except csv.Error as exc:
        raise DataError(f"{path}: line 1 is not a CSV header with sep={sep!r}.") from exc


def parquet_error(path: Path) -> DataError:
    return DataError(
        f"cannot read {path} as Parquet: not a Parquet file, or damaged. Check --format."
    )


def _check_mapping(mapping: dict[str, str], available: list[str], path: Path) -> None:
    repeated = sorted({v for v in mapping.values() if available.count(v) > 1})
    if repeated:
        raise DataError(f"{path}: the column(s) {repeated} appear more than once in the file.")
    missing = {k: v for k, v in mapping.items() if v not in available}
    if missing:
        named = ", ".join(f"{OPTIONS[k]}={v!r}" for k, v in missing.items())
        raise DataError(
            f"{path}: mapped column(s) not found: {named}. The file has "
            f"{describe_columns(available)}. Fix: pass the source's own column names "
            f"(--user-col/--item-col/--rating-col/--timestamp-col/--title-col)."
        )


def _blank(col: pa.ChunkedArray, nan: bool = False) -> pa.ChunkedArray:
    """Which values are missing: null, empty text or (``nan``) NaN."""
    blank = pc.is_null(col, nan_is_null=nan)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        blank = pc.or_(blank, pc.fill_null(pc.equal(col, ""), True))
    return blank


def _float(text: str) -> tuple[float, int]:
    try:
        return float(text), 0
    except ValueError:
        return math.nan, 0


def _ratings(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 ratings, codes): 0 valid, 2 non-numeric or missing, 3 negative or infinite."""
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        vals = pc.cast(col, pa.float64()).to_numpy()  # nulls are NaN
    else:
        try:
            text = col if pa.types.is_string(t) else pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. bytes that are not text
            text = pa.chunked_array([pa.nulls(len(col), pa.string())])
        try:
            vals = pc.cast(text, pa.float64()).to_numpy()
        except pa.ArrowInvalid:  # Python's float() allows spaces, "1_000", ...
            vals = C.Lookup(_float, np.float64, (math.nan, 0))(text)[0]
    codes = np.where(np.isnan(vals), 2, np.where(np.isinf(vals) | (vals < 0), 3, 0))
    return vals.astype(np.float32), codes.astype(np.int8)


def _unix_to_us(vals: np.ndarray) -> np.ndarray:
    """Unix seconds (or milliseconds, when some value exceeds 1e11) to int64 microseconds; NaT
    for NaN and for dates outside the supported range."""
    finite = np.isfinite(vals)
    scale = 1_000 if finite.any() and np.abs(vals[finite]).max() > 1e11 else 1_000_000
    return np.round(C.in_range(vals * scale)).astype(np.int64)


def _parse_texts(texts: pd.Series) -> np.ndarray:
    """int64 microseconds (NaT when unparseable) of distinct date texts: unix numbers, else
    ISO 8601, else any format pandas recognises."""
    out = np.full(len(texts), C.NAT, dtype=np.int64)
    nums = pd.to_numeric(texts, errors="coerce").to_numpy(dtype=np.float64)
    numeric = ~np.isnan(nums)
    out[numeric] = _unix_to_us(nums[numeric])
    rest = texts[~numeric]
    if len(rest):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Could not infer format ...": we count failures
            try:
                parsed = pd.to_datetime(rest, errors="coerce", utc=True, format="ISO8601")
                retry = parsed.isna()
                if retry.any():
                    parsed[retry] = pd.to_datetime(
                        rest[retry], errors="coerce", utc=True, format="mixed"
                    )
            except (ValueError, OverflowError, TypeError):  # pandas refuses the whole column
                parsed = pd.Series(pd.NaT, index=rest.index, dtype="datetime64[us, UTC]")
        us = parsed.dt.tz_localize(None).to_numpy().astype(C.DATE_DTYPE).view(np.int64)
        out[~numeric] = C.in_range(us)
    return out


def _dates(col: pa.ChunkedArray, what: str) -> tuple[np.ndarray, int]:
    """(int64 us with NaT, number of present-but-unparseable values) of a timestamp column."""
    arr = C.plain(col.combine_chunks())
    t = arr.type
    present = np.asarray(pc.is_valid(arr))
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if pa.types.is_timestamp(t):  # dropping the time zone keeps the UTC values
            arr = pc.cast(arr, pa.timestamp(t.unit))
        s = pd.to_datetime(pd.Series(arr.to_pandas()))
        us = C.in_range(s.to_numpy().astype(C.DATE_DTYPE).view(np.int64))
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        us = _unix_to_us(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False))
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        enc = arr.dictionary_encode()
        parsed = _parse_texts(pd.Series(enc.dictionary.to_pylist(), dtype=object))
        us = np.append(parsed, C.NAT)[np.asarray(pc.fill_null(enc.indices, len(parsed)))]
    else:
        raise DataError(
            f"{what} has type {t}; expected dates, timestamps, unix seconds or date text."
        )
    return us, int(np.count_nonzero(present & (us == C.NAT)))


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
    max_examples: int = 10,
) -> tuple[pd.DataFrame, LoadReport]:
    """Load any CSV or Parquet file, naming its ``user``, ``item`` and ``rating`` columns (and
    optionally ``timestamp`` and ``title``): the sources of ``customer_id``, ``product_id``,
    ``star_rating``, ``review_date`` and ``product_title``.

    ``format`` ("csv" or "parquet") is by content unless given (Parquet: the ``PAR1`` magic).
    CSV (plain or gzip, read whole into memory): the separator is detected among ``, ; TAB |``
    unless ``sep`` (one character) is given; the first line is the header; fields may be quoted
    (``"a, b"``). Rows are skipped as described in :mod:`recsys.data.loaders`;
    ``report.location == "row"`` (1-based row numbers) for Parquet or a CSV whose quoted fields
    span lines. **A valid rating is a finite number >= 0** (any scale): empty, text and NaN are
    "non-numeric rating", -3 or inf "negative or infinite rating" (shift a scale with negative
    values, e.g. -10..10, before loading). Integral float ids (``3.0``) count as integers; a
    column of lists or structs is refused. Timestamps: numbers are unix seconds, or milliseconds
    when some value exceeds 1e11; text is unix seconds or a date (ISO 8601, else any format
    pandas recognises); time zones are converted to UTC and dropped; outside 1677-2262 is NaT.
    ``report.null_counts`` covers all source columns.
    """
    t0 = time.perf_counter()
    p = check_file(path)
    if format not in (None, "csv", "parquet"):
        raise DataError(f"load_table reads 'csv' or 'parquet'; got format={format!r}.")
    if format is None:
        format = "parquet" if starts_with(p, PARQUET_MAGIC) else "csv"
    sources = (user, item, rating, timestamp, title)  # in the order of OPTIONS
    mapping = {k: v for k, v in zip(OPTIONS, sources, strict=True) if v is not None}
    report = LoadReport(source=str(path), format=format)
    if format == "parquet":
        block = _read_parquet(p, mapping, report)
    else:
        block = _read_csv(p, mapping, sep, report)
    tbl = block.table
    ratings, codes = _ratings(tbl.column(mapping[RATING]))
    user, item = (np.asarray(_blank(tbl.column(mapping[k]), nan=True)) for k in (CUSTOMER, PRODUCT))
    codes[user | item] = 1
    tally = Tally(report.columns, _REASONS, max_examples)
    keep = tally.add(block, codes)
    tally.fill(report, 2, p)

    kept = {k: tbl.column(v).filter(pa.array(keep)) for k, v in mapping.items()}
    where = {k: f"{p}: column {v!r}" for k, v in mapping.items()}
    dates, report.bad_dates = _dates(kept[DATE], where[DATE]) if DATE in kept else (None, 0)
    customer = C.ids_from_arrow(kept[CUSTOMER], where[CUSTOMER])
    product = C.ids_from_arrow(kept[PRODUCT], where[PRODUCT])
    title = C.titles_from_arrow(kept[TITLE], where[TITLE]) if TITLE in kept else None
    frame = C.frame(customer, product, title, ratings[keep], dates)
    finish(report, t0)
    return frame, report


def _read_csv(path: Path, mapping: dict[str, str], sep: str | None, report: LoadReport) -> Block:
    """Parse the whole CSV (every column as text) as one block."""
    data = head(path, None)
    if not data.strip():
        raise DataError(f"{path} is empty; expected a CSV with a header line.")
    header, rest = split_header(data + b"\n" if not data.endswith(b"\n") else data)
    if sep is None:
        sep = sniff_sep(data[: 1 << 16].decode("utf-8", errors="replace"))
    if len(sep) != 1 or sep in '"\r\n':
        raise DataError(
            f"sep must be a single character other than a quote or newline; got {sep!r}."
        )
    names = report.columns = csv_header(header, sep, path)
    _check_mapping(mapping, names, path)
    if len(set(names)) < len(names):
        raise DataError(f"{path}: the header (line 1) has a column name more than once.")
    try:
        return parse(rest, names, sep, quote=True)
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot parse {path} as CSV with sep={sep!r}.") from exc


def _read_parquet(path: Path, mapping: dict[str, str], report: LoadReport) -> Block:
    """Read the mapped columns of a Parquet file, and which rows are null (or empty text) in
    every column, one column at a time (memory stays bounded); rows are numbered, not lines."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        report.columns = list(pf.schema_arrow.names)
        _check_mapping(mapping, report.columns, path)
        tbl = pf.read(columns=list(dict.fromkeys(mapping.values())))
        nulls = {name: _blank(pf.read(columns=[name]).column(0)) for name in report.columns}
    except (pa.ArrowException, OSError) as exc:
        raise parquet_error(path) from exc
    for name in mapping.values():
        t = tbl.schema.field(name).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if pa.types.is_nested(t):  # lists, structs, maps, unions
            raise DataError(
                f"{path}: column {name!r} holds values of type {t}; expected one scalar per row "
                f"(a number, text or a date). Flatten it or map another column."
            )
    none = np.empty(0, np.int64)
    return Block(tbl, None, none, none, tbl.num_rows, nulls)
