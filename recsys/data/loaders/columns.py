"""Turning parsed values into the ratings frame's columns and dtypes (see :mod:`.loaders`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import DataError
from ..schema import CUSTOMER, DATE, PRODUCT, RATING, RATINGS_COLUMNS, TITLE

#: dtype of ``review_date`` in every ratings frame.
DATE_DTYPE = "datetime64[us]"
NAT = np.iinfo(np.int64).min  # the int64 pattern of NaT
DICT = pa.dictionary(pa.int32(), pa.string())
# Dates are kept within pandas' nanosecond range (1677-09-22 to 2262-04-11), so that later
# conversions to datetime64[ns] cannot overflow; others are unparseable (NaT).
MIN_US, MAX_US = pd.Timestamp.min.value // 1000 + 1, pd.Timestamp.max.value // 1000
Ids = np.ndarray | pd.Categorical  # an id column: int64 or category


def frame(
    customer: Ids,
    product: Ids,
    title: pd.Categorical | None,
    rating: np.ndarray,
    date_us: np.ndarray | None,
) -> pd.DataFrame:
    """Assemble the ratings frame (columns in :data:`RATINGS_COLUMNS` order); ``title`` None:
    all NaN, ``date_us`` (int64 microseconds) None: all NaT."""
    n = len(rating)
    if title is None:
        title = pd.Categorical.from_codes(np.full(n, -1, np.int8), pd.Index([], dtype="str"))
    date_us = np.full(n, NAT, dtype=np.int64) if date_us is None else date_us
    rating, date = np.asarray(rating, np.float32), np.asarray(date_us, np.int64).view(DATE_DTYPE)
    data = {CUSTOMER: customer, PRODUCT: product, TITLE: title, RATING: rating, DATE: date}
    return pd.DataFrame(data, columns=list(RATINGS_COLUMNS), copy=False)


def number(text: str) -> float | None:
    """``text`` as a finite float (surrounding spaces allowed), else None."""
    try:
        x = float(text.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def in_range(us: np.ndarray) -> np.ndarray:
    """``us`` (microseconds) with dates outside the supported range set to NaT."""
    return np.where((us >= MIN_US) & (us <= MAX_US), us, NAT)


class Lookup:
    """Map a text column through ``fn(text) -> (value, code)`` once per distinct text: stars or
    dates have few, so only the column's dictionary goes through Python (cached across blocks)."""

    def __init__(self, fn: Callable[[str], tuple], dtype: type, null: tuple[float, int]) -> None:
        self.fn, self.dtype, self.null = functools.cache(fn), dtype, null

    def __call__(self, col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """Values (``dtype``) and codes (int8) of every row; a null gets ``null``."""
        values, codes = [np.empty(0, self.dtype)], [np.empty(0, np.int8)]
        for ch in col.chunks:
            if not pa.types.is_dictionary(ch.type):
                ch = ch.dictionary_encode()
            pairs = [*map(self.fn, ch.dictionary.to_pylist()), self.null]
            idx = np.asarray(pc.fill_null(ch.indices, len(pairs) - 1))
            values.append(np.array([p[0] for p in pairs], dtype=self.dtype)[idx])
            codes.append(np.array([p[1] for p in pairs], dtype=np.int8)[idx])
        return np.concatenate(values), np.concatenate(codes)


def _canonical_ints(values: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """``values`` (strings) as int64 when every one is a plain decimal integer, else None."""
    try:
        ints = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not pc.all(pc.equal(pc.cast(ints, pa.string()), values)).as_py():
        return None  # leading zeros, '+', spaces: not lossless as integers
    return np.asarray(ints.to_numpy(zero_copy_only=False), dtype=np.int64)


def categorical(col: pa.Array | pa.ChunkedArray) -> pd.Categorical:
    """Strings (plain or dictionary-encoded; null = NaN) as a Categorical with sorted, used-only
    categories, worked out by Arrow on the distinct values (no Python string per row)."""
    col = pa.chunked_array([col]) if isinstance(col, pa.Array) else col
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    col = col.unify_dictionaries()
    dictionary = col.chunk(0).dictionary
    idx = pa.chunked_array([ch.indices for ch in col.chunks], col.type.index_type)
    indices = np.asarray(pc.fill_null(idx, -1), dtype=np.int64)
    used = np.flatnonzero(np.bincount(indices[indices >= 0], minlength=len(dictionary)))
    values = dictionary.take(pa.array(used)) if len(used) < len(dictionary) else dictionary
    order = np.asarray(pc.array_sort_indices(values))
    remap = np.full(len(dictionary) + 1, -1, dtype=np.int64)  # last slot: -1 stays -1
    remap[used[order]] = np.arange(len(order))
    categories = pd.Index(values.take(pa.array(order)).to_pandas(), dtype="str")
    return pd.Categorical.from_codes(remap[indices], categories=categories, validate=False)


def ids_from_strings(arr: pa.Array | pa.ChunkedArray) -> Ids:
    """Id column from strings, plain or dictionary-encoded: int64 if every id is an integer,
    else category (see :func:`categorical`)."""
    if not pa.types.is_dictionary(arr.type):
        ints = _canonical_ints(arr)
        return ints if ints is not None else categorical(arr)
    cat = categorical(arr)
    ints = _canonical_ints(pa.array(cat.categories.to_numpy(dtype=object), pa.string()))
    return ints[cat.codes] if ints is not None else cat


def plain(arr: pa.Array) -> pa.Array:
    """``arr`` without dictionary encoding."""
    return pc.cast(arr, arr.type.value_type) if pa.types.is_dictionary(arr.type) else arr


def _as_strings(arr: pa.Array, what: str) -> pa.Array:
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{what} of type {arr.type} cannot be read as text ids.") from exc


def ids_from_arrow(col: pa.ChunkedArray, what: str) -> Ids:
    """Id column from any scalar Arrow column without nulls (integers, floats, strings, ...)."""
    arr = plain(col.combine_chunks())
    if pa.types.is_integer(arr.type):
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    if pa.types.is_floating(arr.type):
        vals = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        if len(vals) and np.all(vals == np.round(vals)) and np.abs(vals).max() < 2**53:
            return vals.astype(np.int64)
    return ids_from_strings(_as_strings(arr, what))


def titles_from_arrow(col: pa.ChunkedArray, what: str) -> pd.Categorical:
    """Title column from any scalar Arrow column; empty titles are missing."""
    arr = _as_strings(plain(col.combine_chunks()), what)
    return categorical(pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr))
