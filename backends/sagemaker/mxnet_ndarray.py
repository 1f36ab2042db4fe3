"""Read and write MXNet's NDArray list files (what ``mx.nd.save`` writes) with numpy only.

SageMaker's built-in algorithms (FM, linear learner, PCA, k-means, ...) store their learned
parameters in this format, so reading it is all recsys needs to turn a SageMaker model artifact
into arrays -- no MXNet install (which is unmaintained and needs numpy < 1.24) required.

The layout, checked against MXNet's ``src/ndarray/ndarray.cc`` (``NDArray::Save``,
``NDArray::Load``, ``LegacyLoad``), ``include/mxnet/tuple.h`` (``Tuple::Save``),
``include/mxnet/base.h`` (``Context::Save``) and files written by MXNet 1.9.1
(``tests/fixtures/mxnet/``). Everything is little-endian, with no padding::

    u64 0x112 (list magic)   u64 0 (reserved)
    u64 count, then count arrays:
        u32 magic            0xF993FAC9 = v2 (storage type),
                             0xF993FACA = v3 (v2 saved under numpy-shape semantics),
                             0xF993FAC8 = v1 (no storage type),
                             anything else = pre-v1 "legacy": the u32 is the ndim itself
        [v2/v3] i32 storage type     0 dense, 1 row_sparse, 2 csr
        [sparse] storage shape       (a shape, as below)
        shape                        i32 ndim + ndim * i64 dims  (legacy: u32 dims, no i32)
        -- here the array ends if it is "none": ndim == 0 (v1/v2/legacy) or the shape is
           unknown, i.e. ndim == -1 or a dim == -1 (v3). In v3 ndim == 0 is a 0-d scalar. --
        i32 dev_type, i32 dev_id     the context it was saved from (1 cpu, 2 gpu, ...)
        i32 dtype flag               0 f32, 1 f64, 2 f16, 3 u8, 4 i32, 5 i8, 6 i64, 7 bool,
                                     8 i16, 9 u16, 10 u32, 11 u64, 12 bf16
        [sparse] per aux array: i32 aux dtype flag + aux shape
                 (row_sparse: the row indices; csr: indptr, then column indices)
        data                         C order; for sparse the storage-shape values
        [sparse] aux data            per aux array
    u64 name count (0 for a list, else == count), then per name: u64 length + UTF-8 bytes

Dense arrays of every dtype numpy has are read; sparse arrays are rejected by default and can
be densified (``sparse="dense"``); bfloat16 is rejected. Corrupt or truncated input raises
:class:`recsys.errors.ModelFormatError`, never ``struct.error`` or ``IndexError``.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recsys.errors import ModelFormatError

__all__ = [
    "LIST_MAGIC",
    "NDARRAY_V1_MAGIC",
    "NDARRAY_V2_MAGIC",
    "NDARRAY_V3_MAGIC",
    "read_ndarray_list",
    "read_ndarray_dict",
    "write_ndarray_list",
]

logger = logging.getLogger("recsys")

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

#: mshadow type flags (mshadow/base.h ``enum TypeFlag``) -> little-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_UNSUPPORTED_DTYPES = {12: "bfloat16"}
_FLAGS: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): flag for flag, dt in _DTYPES.items()}
_STORAGE = {0: "dense", 1: "row_sparse", 2: "csr"}
_NUM_AUX = {0: 0, 1: 1, 2: 2}
_MAX_NDIM = 32
_MAX_DIM = 1 << 48  # larger dimensions are corruption, not data
#: Largest dense array a sparse one is expanded into (``sparse="dense"``).
MAX_DENSE_BYTES = 1 << 32
_MAX_LEGACY_NDIM = 32  # a legacy file's first u32 is its ndim; larger values are a bad magic
_DEV_TYPES = range(1, 7)  # Context::kMaxDevType == 6 (1 cpu, 2 gpu, 3 cpu_pinned, 5 cpu_shared)

SparseMode = Literal["error", "dense"]


class _Reader:
    """Bounds-checked little-endian reads from a buffer; every failure is a ModelFormatError."""

    def __init__(self, data: bytes | bytearray | memoryview, source: str) -> None:
        self.buf = memoryview(data).cast("B")
        self.pos = 0
        self.source = source

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.source}: {message}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise self.fail(
                f"truncated or corrupt MXNet NDArray file: {what} needs {n} bytes at offset "
                f"{self.pos}, but only {self.remaining} remain"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def shape(self, what: str, *, legacy_ndim: int | None = None) -> tuple[int, ...] | None:
        """A shape; ``None`` when ndim is -1 (unknown, only valid in v3)."""
        if legacy_ndim is not None:
            ndim, fmt = legacy_ndim, "<{}I"
        else:
            ndim, fmt = self.unpack("<i", f"{what} ndim"), "<{}q"
            if ndim == -1:
                return None
        if not 0 <= ndim <= _MAX_NDIM:
            raise self.fail(
                f"{what} has ndim {ndim} at offset {self.pos - 4}; expected 0..{_MAX_NDIM}"
            )
        size = 4 if legacy_ndim is not None else 8
        dims = struct.unpack(fmt.format(ndim), self.take(size * ndim, f"{what} dims"))
        if any(d > _MAX_DIM for d in dims):
            raise self.fail(f"{what} has an implausible dimension in {dims}; the file is corrupt")
        return tuple(int(d) for d in dims)


def _nelem(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Sparse:
    """A sparse array read from the file, kept apart until its name is known."""

    def __init__(self, stype: int, shape: tuple[int, ...], data: np.ndarray, aux: list[np.ndarray]):
        self.stype, self.shape, self.data, self.aux = stype, shape, data, aux

    def densify(self, where: str) -> np.ndarray:
        nbytes = _nelem(self.shape) * self.data.dtype.itemsize
        if nbytes > MAX_DENSE_BYTES:
            raise ModelFormatError(
                f"{where}: densifying the {_STORAGE[self.stype]} array of shape {self.shape} would "
                f"take {nbytes} bytes, more than MAX_DENSE_BYTES ({MAX_DENSE_BYTES})"
            )
        try:
            out = np.zeros(self.shape, dtype=self.data.dtype)
        except (MemoryError, ValueError) as exc:
            raise ModelFormatError(f"{where}: cannot allocate shape {self.shape}: {exc}") from exc
        try:
            if self.stype == 1:  # row_sparse: data (nnz_rows, *shape[1:]), aux[0] row ids
                rows = self.aux[0].astype(np.int64)
                if self.shape and rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
                    raise ValueError(f"row index out of range [0, {self.shape[0]})")
                out[rows] = self.data.reshape((rows.size, *self.shape[1:]))
            else:  # csr: aux[0] indptr (rows + 1), aux[1] column indices
                if len(self.shape) != 2:
                    raise ValueError(f"a CSR array must be 2-D, shape is {self.shape}")
                indptr, indices = self.aux[0].astype(np.int64), self.aux[1].astype(np.int64)
                n_rows, n_cols = self.shape
                if indptr.size != n_rows + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
                    raise ValueError("invalid indptr")
                if indptr[-1] != indices.size or indices.size != self.data.size:
                    raise ValueError("indptr, indices and data lengths disagree")
                if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
                    raise ValueError(f"column index out of range [0, {n_cols})")
                rows = np.repeat(np.arange(n_rows), np.diff(indptr))
                np.add.at(out, (rows, indices), self.data.reshape(-1))
        except ValueError as exc:
            raise ModelFormatError(
                f"{where}: inconsistent {_STORAGE[self.stype]} array: {exc}"
            ) from exc
        return out


def _read_values(r: _Reader, flag: int, shape: tuple[int, ...], what: str) -> np.ndarray:
    dtype = _DTYPES[flag]
    n = _nelem(shape)
    raw = r.take(n * dtype.itemsize, f"{what} data ({n} x {dtype.name})")
    arr = np.frombuffer(raw, dtype=dtype, count=n).astype(dtype.newbyteorder("="), copy=True)
    try:
        return arr.reshape(shape)
    except ValueError as exc:  # e.g. a zero-size shape whose other dims overflow
        raise r.fail(f"{what} has an unusable shape {shape}: {exc}") from exc


def _dtype_flag(r: _Reader, what: str) -> int:
    flag = r.unpack("<i", f"{what} dtype flag")
    if flag in _UNSUPPORTED_DTYPES:
        raise r.fail(
            f"{what} has dtype {_UNSUPPORTED_DTYPES[flag]} (flag {flag}), which numpy cannot represent"
        )
    if flag not in _DTYPES:
        raise r.fail(
            f"{what} has unknown dtype flag {flag} at offset {r.pos - 4}; expected one of "
            f"{sorted(_DTYPES)} (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, ...)"
        )
    return flag


def _read_one(r: _Reader, index: int) -> np.ndarray | _Sparse:
    what = f"array #{index}"
    start = r.pos
    magic = r.unpack("<I", f"{what} magic")
    v3 = magic == NDARRAY_V3_MAGIC
    stype, sshape = 0, None
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        stype = r.unpack("<i", f"{what} storage type")
        if stype not in _STORAGE:
            raise r.fail(
                f"{what} has unknown storage type {stype} at offset {r.pos - 4}; expected 0 (dense), "
                "1 (row_sparse) or 2 (csr)"
            )
        if stype and v3:
            raise r.fail(
                f"{what}: a v3 (numpy-shape) array must be dense, found storage type {stype}"
            )
        if stype:
            sshape = r.shape(f"{what} storage shape")
            if sshape is None or any(d < 0 for d in sshape):
                raise r.fail(f"{what} has an invalid storage shape {sshape}")
        shape = r.shape(f"{what} shape")
    elif magic == NDARRAY_V1_MAGIC:
        shape = r.shape(f"{what} shape")
    elif magic <= _MAX_LEGACY_NDIM:
        shape = r.shape(f"{what} shape", legacy_ndim=magic)
    else:
        raise r.fail(
            f"{what} at offset {start} starts with unknown magic 0x{magic:08X}; expected "
            f"0x{NDARRAY_V2_MAGIC:08X} (v2), 0x{NDARRAY_V3_MAGIC:08X} (v3) or 0x{NDARRAY_V1_MAGIC:08X} (v1)"
        )

    # "none" arrays: nothing but the header was written (NDArray::Save returns after the shape).
    if v3:
        if shape is None or any(d < 0 for d in shape):
            return np.empty((0,), dtype=np.float32)
    else:
        if shape is None:
            raise r.fail(f"{what} has ndim -1, which only the v3 format allows")
        if len(shape) == 0:
            return np.empty((0,), dtype=np.float32)
        if any(d < 0 for d in shape):
            raise r.fail(f"{what} has a negative dimension in its shape {shape}")

    dev_type = r.unpack("<i", f"{what} device type")
    r.unpack("<i", f"{what} device id")
    if dev_type not in _DEV_TYPES:
        raise r.fail(
            f"{what} has invalid device type {dev_type} at offset {r.pos - 8}; expected 1..6"
        )
    flag = _dtype_flag(r, what)
    if not stype:
        return _read_values(r, flag, shape, what)

    aux_meta = []
    for j in range(_NUM_AUX[stype]):
        aux_flag = _dtype_flag(r, f"{what} aux #{j}")
        aux_shape = r.shape(f"{what} aux #{j} shape")
        if aux_shape is None or any(d < 0 for d in aux_shape):
            raise r.fail(f"{what} aux #{j} has an invalid shape {aux_shape}")
        aux_meta.append((aux_flag, aux_shape))
    data = _read_values(r, flag, sshape or (), what)
    aux = [_read_values(r, f, s, f"{what} aux #{j}") for j, (f, s) in enumerate(aux_meta)]
    return _Sparse(stype, shape, data, aux)


def _as_buffer(data: bytes | bytearray | memoryview | str | os.PathLike) -> tuple[Any, str]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data, "NDArray data"
    path = Path(data)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ModelFormatError(f"cannot read MXNet NDArray file {path}: {exc}") from exc


def read_ndarray_list(
    data: bytes | bytearray | memoryview | str | os.PathLike,
    *,
    sparse: SparseMode = "error",
    source: str | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """Decode an MXNet NDArray list file (``mx.nd.save`` output).

    Parameters
    ----------
    data : bytes-like or path
        The file's bytes, or a path to read them from.
    sparse : {"error", "dense"}
        What to do with row_sparse / CSR arrays: raise :class:`ModelFormatError` naming them
        (default), or convert them to dense numpy arrays.
    source : str, optional
        A name for the data used in error messages (defaults to the path, if one was given).

    Returns
    -------
    arrays : list of ndarray
        In file order; native byte order, writable copies. An MXNet "none" array (saved without
        a shape) comes back as an empty float32 array of shape (0,).
    names : list of str
        Empty when the file was saved from a list, else one name per array.

    Raises
    ------
    ModelFormatError
        Bad magic, unknown storage type or dtype, truncated data, inconsistent name count, or
        sparse arrays with ``sparse="error"``.
    """
    if sparse not in ("error", "dense"):
        raise ValueError(f"sparse must be 'error' or 'dense', got {sparse!r}")
    buf, default_source = _as_buffer(data)
    r = _Reader(buf, source or default_source)
    if r.remaining < 24:
        raise r.fail(
            f"too short for an MXNet NDArray file ({r.remaining} bytes; the header alone is 24)"
        )
    header = r.unpack("<Q", "list magic")
    if header != LIST_MAGIC:
        raise r.fail(
            f"not an MXNet NDArray file: header 0x{header:016X}, expected 0x{LIST_MAGIC:X} "
            "(the first 8 bytes of mx.nd.save output)"
        )
    r.unpack("<Q", "reserved field")
    count = r.unpack("<Q", "array count")
    if count > r.remaining // 4:  # each array needs at least its 4-byte magic
        raise r.fail(f"array count {count} is impossible for the {r.remaining} bytes that follow")
    items = [_read_one(r, i) for i in range(count)]
    n_names = r.unpack("<Q", "name count")
    if n_names not in (0, count):
        raise r.fail(f"the file has {count} arrays but {n_names} names; expected 0 or {count}")
    names = []
    for i in range(n_names):
        length = r.unpack("<Q", f"name #{i} length")
        raw = r.take(length, f"name #{i}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise r.fail(f"name #{i} is not valid UTF-8: {exc}") from exc
    if r.remaining:
        logger.warning(
            "%s: ignoring %d trailing bytes after the NDArray list", r.source, r.remaining
        )

    arrays: list[np.ndarray] = []
    sparse_found = []
    for i, item in enumerate(items):
        label = repr(names[i]) if names else f"#{i}"
        if isinstance(item, _Sparse):
            if sparse == "error":
                sparse_found.append(f"{label} ({_STORAGE[item.stype]}, shape {item.shape})")
                continue
            item = item.densify(f"{r.source}: array {label}")
        arrays.append(item)
    if sparse_found:
        raise r.fail(
            f"sparse arrays are not supported here: {', '.join(sparse_found)}; only dense storage "
            "(type 0) is read unless sparse='dense' is passed"
        )
    return arrays, names


def read_ndarray_dict(
    data: bytes | bytearray | memoryview | str | os.PathLike,
    *,
    sparse: SparseMode = "error",
    source: str | None = None,
) -> dict[str, np.ndarray]:
    """Decode an NDArray file saved from a dict (``mx.nd.save(f, {name: array})``).

    Parameters and errors are those of :func:`read_ndarray_list`; in addition a file without
    names (saved from a list) or with duplicate names raises :class:`ModelFormatError`.
    """
    arrays, names = read_ndarray_list(data, sparse=sparse, source=source)
    where = source or (str(data) if isinstance(data, (str, os.PathLike)) else "NDArray data")
    if arrays and not names:
        raise ModelFormatError(
            f"{where}: the NDArray file has {len(arrays)} arrays but no names (it was saved from a "
            "list); use read_ndarray_list"
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ModelFormatError(f"{where}: duplicate array names {dupes}")
    return dict(zip(names, arrays, strict=True))


def _shape_bytes(shape: tuple[int, ...]) -> bytes:
    return struct.pack(f"<i{len(shape)}q", len(shape), *shape)


def write_ndarray_list(arrays: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Encode dense arrays exactly as ``mx.nd.save`` (MXNet 1.x, default semantics) does.

    Parameters
    ----------
    arrays : mapping of str to array-like, or sequence of array-like
        A mapping is saved with its names in iteration order (as ``mx.nd.save`` of a dict);
        a sequence without names (as ``mx.nd.save`` of a list).

    Returns
    -------
    bytes
        v2 records (magic 0xF993FAC9, dense storage, context cpu(0)); for the same arrays and
        names this is byte-identical to MXNet 1.9.1's output (see ``tests/fixtures/mxnet``).

    Raises
    ------
    ModelFormatError
        For a 0-d array (the v2 format reads ndim 0 as "no array"; reshape to (1,)), or a dtype
        MXNet cannot store (complex, object, strings, ...).
    """
    if isinstance(arrays, Mapping):
        names = list(arrays.keys())
        values = list(arrays.values())
        for name in names:
            if not isinstance(name, str):
                raise ModelFormatError(
                    f"NDArray names must be str, got {type(name).__name__}: {name!r}"
                )
    elif isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence):
        raise ModelFormatError(
            f"expected a mapping or a sequence of arrays, got {type(arrays).__name__}"
        )
    else:
        names, values = [], list(arrays)

    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(values))]
    for i, value in enumerate(values):
        label = repr(names[i]) if names else f"#{i}"
        arr = np.asarray(value)
        flag = _FLAGS.get((arr.dtype.kind, arr.dtype.itemsize))
        if flag is None:
            raise ModelFormatError(
                f"array {label} has dtype {arr.dtype}, which MXNet cannot store; use float32, "
                "float64, float16, (u)int8/16/32/64 or bool"
            )
        if arr.ndim == 0:
            raise ModelFormatError(
                f"array {label} is 0-d; MXNet's v2 format reads ndim 0 as 'no array'. Reshape it to (1,)"
            )
        if arr.ndim > _MAX_NDIM:
            raise ModelFormatError(
                f"array {label} has {arr.ndim} dimensions; at most {_MAX_NDIM} are supported"
            )
        data = np.ascontiguousarray(arr, dtype=_DTYPES[flag]).tobytes()
        parts += [
            struct.pack("<Ii", NDARRAY_V2_MAGIC, 0),
            _shape_bytes(arr.shape),
            struct.pack("<iii", 1, 0, flag),
            data,
        ]
    parts.append(struct.pack("<Q", len(names)))
    for name in names:
        encoded = name.encode("utf-8")
        parts += [struct.pack("<Q", len(encoded)), encoded]
    return b"".join(parts)
