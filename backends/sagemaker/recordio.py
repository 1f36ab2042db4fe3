"""Decode RecordIO-protobuf, the input format of SageMaker's built-in algorithms, with numpy.

Two layers:

* **RecordIO framing** (MXNet / dmlc-core ``recordio.cc``): each record is
  ``u32 magic 0xCED7230A``, ``u32 lrecord`` (upper 3 bits a continuation flag, lower 29 bits the
  length), the payload, then zero padding to a multiple of 4 bytes. Flag 0 is a whole record;
  dmlc-core's writer splits a payload that contains the magic at a 4-byte-aligned offset into
  parts flagged 1 (first), 2 (middle), 3 (last), and the reader joins them with the magic in
  between. The SageMaker SDK's ``_write_recordio`` only ever writes flag 0.
* **protobuf** ``aialgs.data.Record`` (the SDK's ``sagemaker/amazon/record.proto``):
  ``features`` and ``label`` are ``map<string, Value>``; a ``Value`` holds one of
  ``Float32Tensor`` (field 2), ``Float64Tensor`` (3), ``Int32Tensor`` (7) or ``Bytes`` (9); a
  tensor has ``values`` (1), ``keys`` (2, uint64; present = sparse) and ``shape`` (3, uint64).
  The SDK writes one record per matrix row, the row under ``features["values"]`` (for sparse
  rows with ``keys`` = column indices and ``shape = [n_columns]``) and the row's label under
  ``label["values"]``.

Why a hand-written decoder rather than the SDK's generated ``record_pb2``: it needs only numpy
(readers of training data and batch-transform output should not require the SDK and its exact
protobuf runtime), packed arrays decode with vectorised numpy instead of per-element Python
objects, and the wire format involved is tiny and frozen (proto2, five field numbers). The
tests cross-check it against the SDK's writers and its protobuf parser.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.errors import ModelFormatError

__all__ = [
    "RECORDIO_MAGIC",
    "Tensor",
    "BytesValue",
    "Record",
    "iter_recordio",
    "parse_record",
    "read_records",
    "read_recordio_protobuf",
]

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_MAX_FEATURES = 1 << 40  # wider rows are corruption (scipy's int64 indices allow far more)

# protobuf wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Value.oneof field number -> (tensor kind, dtype of `values`, wire type of one unpacked value)
_TENSOR_FIELDS = {
    2: ("float32", np.dtype("<f4"), _I32),
    3: ("float64", np.dtype("<f8"), _I64),
    7: ("int32", np.dtype("<i4"), _VARINT),
}
_BYTES_FIELD = 9


@dataclass(frozen=True)
class Tensor:
    """One decoded ``Float32Tensor`` / ``Float64Tensor`` / ``Int32Tensor``.

    Attributes
    ----------
    kind : {"float32", "float64", "int32"}
    values : ndarray
        float32, float64 or int32, 1-D.
    keys : ndarray of uint64 or None
        Positions of ``values`` in the flattened tensor when sparse; ``None`` when absent.
    shape : tuple of int
        Empty when the record gave no shape.
    """

    kind: str
    values: np.ndarray
    keys: np.ndarray | None = None
    shape: tuple[int, ...] = ()

    @property
    def is_sparse(self) -> bool:
        """Sparse if it has keys, or if it has a non-empty shape but no values (an empty row)."""
        if self.keys is not None and self.keys.size:
            return True
        return self.values.size == 0 and bool(self.shape) and math.prod(self.shape) > 0


@dataclass(frozen=True)
class BytesValue:
    """A decoded ``Bytes`` value (raw payloads, e.g. images)."""

    values: list[bytes]
    content_type: str | None = None


@dataclass
class Record:
    """One decoded ``aialgs.data.Record``."""

    features: dict[str, Tensor | BytesValue] = field(default_factory=dict)
    label: dict[str, Tensor | BytesValue] = field(default_factory=dict)
    uid: str | None = None
    metadata: str | None = None
    configuration: str | None = None


# ---- RecordIO framing ------------------------------------------------------------------------
def _as_bytes(data: bytes | bytearray | memoryview | str | os.PathLike) -> memoryview:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).cast("B")
    path = Path(data)
    try:
        return memoryview(path.read_bytes())
    except OSError as exc:
        raise ModelFormatError(f"cannot read RecordIO file {path}: {exc}") from exc


def iter_recordio(data: bytes | bytearray | memoryview | str | os.PathLike) -> Iterator[bytes]:
    """Yield the payload of each RecordIO record, continuation parts joined.

    Parameters
    ----------
    data : bytes-like or path

    Raises
    ------
    ModelFormatError
        On a wrong magic, a truncated header or payload, or a broken continuation sequence.
    """
    buf = _as_bytes(data)
    pos, n = 0, len(buf)
    parts: list[bytes] = []  # pending continuation parts
    part_start = 0
    while pos < n:
        if n - pos < 8:
            raise ModelFormatError(
                f"truncated RecordIO: {n - pos} stray bytes at offset {pos}, a record header needs 8"
            )
        magic, lrec = struct.unpack_from("<II", buf, pos)
        if magic != RECORDIO_MAGIC:
            raise ModelFormatError(
                f"bad RecordIO magic 0x{magic:08x} at offset {pos}; expected 0x{RECORDIO_MAGIC:08x} "
                "(is this RecordIO-protobuf data?)"
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        start = pos + 8
        if length > n - start:
            raise ModelFormatError(
                f"truncated RecordIO: the record at offset {pos} declares {length} bytes but only "
                f"{n - start} remain"
            )
        payload = bytes(buf[start : start + length])
        # padding to 4 bytes; tolerate a missing pad at the very end of the data
        pos = min(n, start + ((length + 3) & ~3))
        if cflag == 0:
            if parts:
                raise ModelFormatError(
                    f"broken RecordIO continuation: a whole record at offset {start - 8} interrupts "
                    f"the multi-part record started at offset {part_start}"
                )
            yield payload
        elif cflag == 1:
            if parts:
                raise ModelFormatError(
                    f"broken RecordIO continuation: a new multi-part record at offset {start - 8} "
                    f"before the one at offset {part_start} ended"
                )
            parts, part_start = [payload], start - 8
        elif cflag in (2, 3):
            if not parts:
                raise ModelFormatError(
                    f"broken RecordIO continuation: part with flag {cflag} at offset {start - 8} "
                    "without a first part"
                )
            parts.append(payload)
            if cflag == 3:
                yield _MAGIC_BYTES.join(parts)
                parts = []
        else:
            raise ModelFormatError(
                f"invalid RecordIO continuation flag {cflag} at offset {start - 8}"
            )
    if parts:
        raise ModelFormatError(
            f"truncated RecordIO: the multi-part record started at offset {part_start} has no last part"
        )


# ---- protobuf wire format --------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ModelFormatError("corrupt protobuf: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise ModelFormatError("corrupt protobuf: varint longer than 10 bytes")


def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field_number, wire_type, value)``; value is an int (varint) or bytes."""
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ModelFormatError(f"corrupt protobuf in {what}: field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > n:
                raise ModelFormatError(
                    f"corrupt protobuf in {what}: truncated fixed-width field {number}"
                )
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > n:
                raise ModelFormatError(
                    f"corrupt protobuf in {what}: field {number} declares {size} bytes, {n - pos} remain"
                )
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ModelFormatError(
                f"corrupt protobuf in {what}: unsupported wire type {wire} (field {number})"
            )
        yield number, wire, value


def _decode_varints(buf: bytes) -> np.ndarray:
    """All varints of a packed field, vectorised; returns uint64."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.empty(0, dtype=np.uint64)
    if b[-1] & 0x80:
        raise ModelFormatError("corrupt protobuf: packed varints end mid-value")
    ends = np.flatnonzero(b < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ModelFormatError("corrupt protobuf: varint longer than 10 bytes")
    shift = (7 * (np.arange(b.size) - np.repeat(starts, lengths))).astype(np.uint64)
    parts = (b & 0x7F).astype(np.uint64) << shift
    return np.bitwise_or.reduceat(parts, starts)


def _repeated(chunks: list[tuple[int, Any]], dtype: np.dtype | None, what: str) -> np.ndarray:
    """Concatenate the packed and unpacked occurrences of one repeated scalar field.

    ``dtype`` is the fixed-width dtype, or ``None`` for varints (returned as uint64).
    """
    out = []
    for wire, value in chunks:
        if dtype is None:
            if wire == _LEN:
                out.append(_decode_varints(value))
            elif wire == _VARINT:
                out.append(np.array([value], dtype=np.uint64))
            else:
                raise ModelFormatError(
                    f"corrupt protobuf: {what} has wire type {wire}, expected varint"
                )
        else:
            if wire not in (_LEN, _I32 if dtype.itemsize == 4 else _I64):
                raise ModelFormatError(
                    f"corrupt protobuf: {what} has wire type {wire} for {dtype.name} values"
                )
            if len(value) % dtype.itemsize:
                raise ModelFormatError(
                    f"corrupt protobuf: packed {what} is {len(value)} bytes, not a multiple of {dtype.itemsize}"
                )
            out.append(np.frombuffer(value, dtype=dtype))
    if not out:
        return np.empty(0, dtype=np.uint64 if dtype is None else dtype)
    return np.concatenate(out) if len(out) > 1 else out[0].copy()


def _parse_tensor(buf: bytes, number: int, what: str) -> Tensor:
    kind, dtype, _ = _TENSOR_FIELDS[number]
    chunks: dict[int, list[tuple[int, Any]]] = {1: [], 2: [], 3: []}
    for fnum, wire, value in _fields(buf, what):
        if fnum in chunks:
            chunks[fnum].append((wire, value))
    if kind == "int32":
        raw = _repeated(chunks[1], None, f"{what} values")
        values = (raw & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)
    else:
        values = _repeated(chunks[1], dtype, f"{what} values").astype(
            dtype.newbyteorder("="), copy=False
        )
    keys = _repeated(chunks[2], None, f"{what} keys") if chunks[2] else None
    shape = tuple(int(s) for s in _repeated(chunks[3], None, f"{what} shape"))
    return Tensor(kind=kind, values=values, keys=keys, shape=shape)


def _parse_bytes_value(buf: bytes, what: str) -> BytesValue:
    values, content_type = [], None
    for fnum, wire, value in _fields(buf, what):
        if fnum == 1 and wire == _LEN:
            values.append(bytes(value))
        elif fnum == 2 and wire == _LEN:
            content_type = bytes(value).decode("utf-8", errors="replace")
    return BytesValue(values=values, content_type=content_type)


def _parse_value(buf: bytes, what: str) -> Tensor | BytesValue | None:
    result: Tensor | BytesValue | None = None
    for fnum, wire, value in _fields(buf, what):
        if wire != _LEN:
            continue
        if fnum in _TENSOR_FIELDS:
            result = _parse_tensor(value, fnum, what)  # oneof: the last one wins
        elif fnum == _BYTES_FIELD:
            result = _parse_bytes_value(value, what)
    return result


def _parse_map_entry(buf: bytes, what: str) -> tuple[str, Tensor | BytesValue | None]:
    key, value = "", None
    for fnum, wire, raw in _fields(buf, what):
        if fnum == 1 and wire == _LEN:
            try:
                key = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ModelFormatError(f"corrupt protobuf in {what}: map key is not UTF-8") from exc
        elif fnum == 2 and wire == _LEN:
            value = _parse_value(raw, f"{what}[{key!r}]")
    return key, value


def parse_record(payload: bytes) -> Record:
    """Decode one serialized ``aialgs.data.Record``.

    Raises
    ------
    ModelFormatError
        If the payload is not a valid protobuf message.
    """
    record = Record()
    for fnum, wire, value in _fields(payload, "Record"):
        if fnum in (1, 2) and wire == _LEN:
            name = "features" if fnum == 1 else "label"
            key, parsed = _parse_map_entry(value, name)
            if parsed is not None:
                getattr(record, name)[key] = parsed
        elif fnum in (3, 4, 5) and wire == _LEN:
            text = bytes(value).decode("utf-8", errors="replace")
            setattr(record, {3: "uid", 4: "metadata", 5: "configuration"}[fnum], text)
    return record


def read_records(data: bytes | bytearray | memoryview | str | os.PathLike) -> list[Record]:
    """Decode every record of RecordIO-protobuf data (bytes or a path)."""
    records = []
    for i, payload in enumerate(iter_recordio(data)):
        try:
            records.append(parse_record(payload))
        except ModelFormatError as exc:
            raise ModelFormatError(f"record {i}: {exc}") from exc
    return records


# ---- records -> matrix -----------------------------------------------------------------------
def _tensor(record: Record, mapping: str, name: str, index: int) -> Tensor | None:
    values = getattr(record, mapping)
    if name not in values:
        return None
    tensor = values[name]
    if not isinstance(tensor, Tensor):
        raise ModelFormatError(
            f"record {index}: {mapping}[{name!r}] holds raw bytes, not a numeric tensor"
        )
    return tensor


def read_recordio_protobuf(
    data: bytes | bytearray | memoryview | str | os.PathLike,
    *,
    dense: bool | None = None,
    feature_name: str = "values",
    label_name: str = "values",
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray | None]:
    """Decode RecordIO-protobuf rows (e.g. the SDK's ``write_spmatrix_to_sparse_tensor`` or
    ``write_numpy_to_dense_tensor`` output) back into a matrix and labels.

    Parameters
    ----------
    data : bytes-like or path
    dense : bool, optional
        ``None`` (default): a ``scipy.sparse.csr_matrix`` if any record is sparse (has keys),
        else a dense ndarray. ``True``/``False`` force a dense ndarray / a CSR matrix.
    feature_name, label_name : str
        The map keys to read (the SDK and the built-in algorithms use ``"values"``).

    Returns
    -------
    X : ndarray or csr_matrix of shape (n_records, n_features)
        dtype float32 / float64 / int32 as stored (the common type if records differ). For a
        sparse record the width is its ``shape`` (the product, for a rank > 1 shape); if no
        record gives a shape, the largest key + 1.
    y : ndarray or None
        ``None`` if no record has a label; shape (n_records,) for scalar labels, else
        (n_records, label_size).

    Raises
    ------
    ModelFormatError
        Corrupt framing or protobuf, a record without ``features[feature_name]``, rows of
        different widths, keys out of range, or labels on only some records.
    """
    records = read_records(data)
    n = len(records)
    tensors: list[Tensor] = []
    for i, rec in enumerate(records):
        t = _tensor(rec, "features", feature_name, i)
        if t is None:
            raise ModelFormatError(
                f"record {i} has no features[{feature_name!r}]; its feature keys are {sorted(rec.features)}"
            )
        tensors.append(t)
    if not tensors:
        X0 = np.empty((0, 0), dtype=np.float32)
        return (sp.csr_matrix(X0) if dense is False else X0), None

    dtype = np.result_type(*[t.values.dtype for t in tensors])
    widths = []
    for i, t in enumerate(tensors):
        if t.shape:
            width = math.prod(t.shape)
            if not t.is_sparse and t.values.size != width:
                raise ModelFormatError(
                    f"record {i}: dense tensor has {t.values.size} values but shape {t.shape}"
                )
        elif t.is_sparse:
            width = None
        else:
            width = int(t.values.size)
        widths.append(width)
    known = {w for w in widths if w is not None}
    if len(known) > 1:
        first = next(i for i, w in enumerate(widths) if w is not None)
        other = next(i for i, w in enumerate(widths) if w is not None and w != widths[first])
        raise ModelFormatError(
            f"records have different feature widths: record {first} has {widths[first]}, "
            f"record {other} has {widths[other]}"
        )
    if any(w is not None and w > _MAX_FEATURES for w in widths):
        raise ModelFormatError(
            f"implausible feature width {max(w for w in widths if w is not None)}"
        )
    any_sparse = any(t.is_sparse for t in tensors)
    if known:
        n_features = known.pop()
    else:  # only sparse records without shape
        n_features = int(
            max(
                (int(t.keys.max()) + 1 for t in tensors if t.keys is not None and t.keys.size),
                default=0,
            )
        )
        if n_features > _MAX_FEATURES:
            raise ModelFormatError(
                f"implausible sparse key {n_features - 1} (no record gives a shape)"
            )

    if any_sparse or dense is False:
        data_parts, index_parts, counts = [], [], np.empty(n, dtype=np.int64)
        for i, t in enumerate(tensors):
            if t.is_sparse or (t.keys is not None):
                keys = t.keys if t.keys is not None else np.empty(0, dtype=np.uint64)
                if keys.size != t.values.size:
                    raise ModelFormatError(
                        f"record {i}: sparse tensor has {keys.size} keys but {t.values.size} values"
                    )
                if keys.size and int(keys.max()) >= n_features:
                    raise ModelFormatError(
                        f"record {i}: key {int(keys.max())} is out of range for {n_features} features"
                    )
                index_parts.append(keys.astype(np.int64))
                data_parts.append(t.values)
            else:
                nz = np.flatnonzero(t.values)
                index_parts.append(nz.astype(np.int64))
                data_parts.append(t.values[nz])
            counts[i] = index_parts[-1].size
        indptr = np.concatenate(([0], np.cumsum(counts)))
        X: np.ndarray | sp.csr_matrix = sp.csr_matrix(
            (np.concatenate(data_parts).astype(dtype), np.concatenate(index_parts), indptr),
            shape=(n, n_features),
        )
        if dense:
            X = X.toarray()
    else:
        X = np.vstack([t.values.astype(dtype, copy=False) for t in tensors]).reshape(n, n_features)

    labels = [_tensor(rec, "label", label_name, i) for i, rec in enumerate(records)]
    have = [t is not None for t in labels]
    if not any(have):
        return X, None
    if not all(have):
        missing = have.index(False)
        raise ModelFormatError(
            f"only {sum(have)} of {n} records have label[{label_name!r}] (record {missing} has none)"
        )
    sizes = {t.values.size for t in labels if t is not None}
    if len(sizes) != 1:
        raise ModelFormatError(f"label sizes differ between records: {sorted(sizes)}")
    if any(t is not None and t.keys is not None and t.keys.size for t in labels):
        raise ModelFormatError("sparse labels (label tensors with keys) are not supported")
    ldtype = np.result_type(*[t.values.dtype for t in labels if t is not None])
    y = np.vstack([t.values.astype(ldtype, copy=False) for t in labels if t is not None])
    return X, (y[:, 0] if y.shape[1] == 1 else y)
