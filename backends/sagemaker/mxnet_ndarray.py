"""Read and write MXNet's NDArray list files (what ``mx.nd.save`` writes) with numpy only.

SageMaker's built-in algorithms store their learned parameters in this format; reading it here
spares an MXNet install (unmaintained, needs numpy < 1.24).

The layout, checked against MXNet's ``src/ndarray/ndarray.cc`` (``NDArray::Save``,
``NDArray::Load``), ``include/mxnet/tuple.h`` (``Tuple::Save``), ``include/mxnet/base.h``
(``Context::Save``) and files written by MXNet 1.9.1 (``tests/fixtures/mxnet/``). Everything is
little-endian, with no padding::

    u64 0x112 (list magic)   u64 0 (reserved)
    u64 count, then count arrays:
        u32 magic            0xF993FAC9 = v2, 0xF993FACA = v3 (v2 saved under numpy-shape
                             semantics); MXNet 1.x writes only these two
        i32 storage type     0 dense (1 row_sparse, 2 csr: refused)
        shape                i32 ndim + ndim * i64 dims
        -- here the array ends if it is "none": ndim == 0 (v2) or the shape is unknown, i.e.
           ndim == -1 or a dim == -1 (v3). In v3 ndim == 0 is a 0-d scalar. --
        i32 dev_type, i32 dev_id     the context it was saved from (1 cpu, 2 gpu, ...)
        i32 dtype flag               0 f32, 1 f64, 2 f16, 3 u8, 4 i32, 5 i8, 6 i64, 7 bool,
                                     8 i16, 9 u16, 10 u32, 11 u64, 12 bf16
        data                         C order
    u64 name count (0 for a list, else == count), then per name: u64 length + UTF-8 bytes

Only dense arrays are read: the v1 and pre-v1 layouts (MXNet < 1.0), sparse storage and
bfloat16 raise :class:`recsys.errors.ModelFormatError` naming what was found, as does corrupt
or truncated input (never ``struct.error`` or ``IndexError``).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ModelFormatError

logger = logging.getLogger("recsys")

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

#: mshadow type flags (mshadow/base.h ``enum TypeFlag``) -> little-endian numpy dtype; 12 is bfloat16.
_DTYPES = {flag: np.dtype(code) for flag, code in enumerate(
    ["<f4", "<f8", "<f2", "u1", "<i4", "i1", "<i8", "?", "<i2", "<u2", "<u4", "<u8"])}  # fmt: skip
_FLAGS = {(dt.kind, dt.itemsize): flag for flag, dt in _DTYPES.items()}
_STORAGE = {0: "dense", 1: "row_sparse", 2: "csr"}  # NDArray storage types (only 0 is read)
_MAX_NDIM = 32  # also: a pre-v1 file's first u32 is its ndim, so at most this
_MAX_DIM = 1 << 48  # larger dimensions are corruption, not data
_DEV_TYPES = range(1, 7)  # Context::kMaxDevType == 6 (1 cpu, 2 gpu, 3 cpu_pinned, 5 cpu_shared)
_ONLY_DENSE = ("only dense MXNet v2/v3 NDArray files (what SageMaker's Factorization Machines "
               "writes) are read")


class _Reader:
    """Bounds-checked little-endian reads from a buffer; every failure is a ModelFormatError."""

    def __init__(self, data: bytes | bytearray | memoryview, source: str) -> None:
        self.buf, self.pos, self.source = memoryview(data).cast("B"), 0, source

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.source}: {message}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated or corrupt MXNet NDArray file: {what} needs {n} bytes at offset "
                            f"{self.pos}, but only {self.remaining} remain")  # fmt: skip
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def shape(self, what: str) -> tuple[int, ...] | None:
        """A shape; ``None`` when ndim is -1 (unknown, only valid in v3)."""
        ndim = self.unpack("<i", f"{what} ndim")
        if ndim == -1:
            return None
        if not 0 <= ndim <= _MAX_NDIM:
            raise self.fail(f"{what} has ndim {ndim} at offset {self.pos - 4}; expected 0..{_MAX_NDIM}")
        dims = struct.unpack(f"<{ndim}q", self.take(8 * ndim, f"{what} dims"))
        if any(d > _MAX_DIM for d in dims):
            raise self.fail(f"{what} has an implausible dimension in {dims}; the file is corrupt")
        return tuple(int(d) for d in dims)

    def dtype_flag(self, what: str) -> int:
        flag = self.unpack("<i", f"{what} dtype flag")
        if flag == 12:
            raise self.fail(f"{what} has dtype bfloat16 (flag 12), which numpy cannot represent")
        if flag not in _DTYPES:
            raise self.fail(
                f"{what} has unknown dtype flag {flag} at offset {self.pos - 4}; expected one of "
                f"{sorted(_DTYPES)} (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, ...)"
            )
        return flag

    def values(self, flag: int, shape: tuple[int, ...], what: str) -> np.ndarray:
        dtype, n = _DTYPES[flag], math.prod(shape)
        raw = self.take(n * dtype.itemsize, f"{what} data ({n} x {dtype.name})")
        arr = np.frombuffer(raw, dtype=dtype, count=n).astype(dtype.newbyteorder("="), copy=True)
        try:
            return arr.reshape(shape)
        except ValueError as exc:  # e.g. a zero-size shape whose other dims overflow
            raise self.fail(f"{what} has an unusable shape {shape}: {exc}") from exc


def _read_one(r: _Reader, index: int) -> np.ndarray:
    what = f"array #{index}"
    start = r.pos
    magic = r.unpack("<I", f"{what} magic")
    if magic == NDARRAY_V1_MAGIC or magic <= _MAX_NDIM:  # what MXNet < 1.0 wrote
        layout = "v1" if magic == NDARRAY_V1_MAGIC else f"pre-v1 legacy (magic {magic} is the ndim)"
        raise r.fail(f"{what} at offset {start} is in MXNet's {layout} NDArray layout; {_ONLY_DENSE}")
    if magic not in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        raise r.fail(f"{what} at offset {start} starts with unknown magic 0x{magic:08X}; expected "
                     f"0x{NDARRAY_V2_MAGIC:08X} (v2) or 0x{NDARRAY_V3_MAGIC:08X} (v3)")  # fmt: skip
    v3 = magic == NDARRAY_V3_MAGIC
    stype = r.unpack("<i", f"{what} storage type")
    if stype not in _STORAGE:
        raise r.fail(f"{what} has unknown storage type {stype} at offset {r.pos - 4}; expected 0 (dense), "
                     "1 (row_sparse) or 2 (csr)")  # fmt: skip
    if stype:
        raise r.fail(f"{what} has sparse storage ({_STORAGE[stype]}, type {stype}); {_ONLY_DENSE}")
    shape = r.shape(f"{what} shape")
    # "none" arrays: nothing but the header was written (NDArray::Save returns after the shape).
    if shape is None and not v3:
        raise r.fail(f"{what} has ndim -1, which only the v3 format allows")
    if (v3 and (shape is None or any(d < 0 for d in shape))) or (not v3 and len(shape) == 0):
        return np.empty((0,), dtype=np.float32)
    if any(d < 0 for d in shape):
        raise r.fail(f"{what} has a negative dimension in its shape {shape}")

    dev_type = r.unpack("<i", f"{what} device type")
    r.unpack("<i", f"{what} device id")
    if dev_type not in _DEV_TYPES:
        raise r.fail(f"{what} has invalid device type {dev_type} at offset {r.pos - 8}; expected 1..6")
    return r.values(r.dtype_flag(what), shape, what)


def read_ndarray_list(
    data: bytes | bytearray | memoryview | str | os.PathLike, *, source: str | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Decode an MXNet NDArray list file (``mx.nd.save`` output): its bytes or a path.

    ``source`` names the data in error messages. Returns the arrays in file order (native byte
    order, writable copies; an MXNet "none" array is an empty float32 array of shape (0,)) and
    the names (empty when the file was saved from a list).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        buf, default_source = data, "NDArray data"
    else:
        try:
            buf, default_source = Path(data).read_bytes(), str(Path(data))
        except OSError as exc:
            raise ModelFormatError(f"cannot read MXNet NDArray file {Path(data)}: {exc}") from exc
    r = _Reader(buf, source or default_source)
    if r.remaining < 24:
        raise r.fail(f"too short for an MXNet NDArray file ({r.remaining} bytes; the header alone is 24)")
    header = r.unpack("<Q", "list magic")
    if header != LIST_MAGIC:
        raise r.fail(f"not an MXNet NDArray file: header 0x{header:016X}, expected 0x{LIST_MAGIC:X} "
                     "(the first 8 bytes of mx.nd.save output)")  # fmt: skip
    r.unpack("<Q", "reserved field")
    count = r.unpack("<Q", "array count")
    if count > r.remaining // 4:  # each array needs at least its 4-byte magic
        raise r.fail(f"array count {count} is impossible for the {r.remaining} bytes that follow")
    arrays = [_read_one(r, i) for i in range(count)]
    n_names = r.unpack("<Q", "name count")
    if n_names not in (0, count):
        raise r.fail(f"the file has {count} arrays but {n_names} names; expected 0 or {count}")
    names = []
    for i in range(n_names):
        raw = r.take(r.unpack("<Q", f"name #{i} length"), f"name #{i}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise r.fail(f"name #{i} is not valid UTF-8: {exc}") from exc
    if r.remaining:
        logger.warning("%s: ignoring %d trailing bytes after the NDArray list", r.source, r.remaining)
    return arrays, names


def read_ndarray_dict(
    data: bytes | bytearray | memoryview | str | os.PathLike, *, source: str | None = None
) -> dict[str, np.ndarray]:
    """:func:`read_ndarray_list` of a file saved from a dict (``mx.nd.save(f, {name: array})``);
    a file without names or with duplicate names raises :class:`ModelFormatError`."""
    arrays, names = read_ndarray_list(data, source=source)
    where = source or (str(data) if isinstance(data, (str, os.PathLike)) else "NDArray data")
    if arrays and not names:
        raise ModelFormatError(f"{where}: the NDArray file has {len(arrays)} arrays but no names (it was saved "
                               "from a list); use read_ndarray_list")  # fmt: skip
    if len(set(names)) != len(names):
        raise ModelFormatError(f"{where}: duplicate array names {sorted({n for n in names if names.count(n) > 1})}")
    return dict(zip(names, arrays, strict=True))


def write_ndarray_list(arrays: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Encode dense arrays exactly as ``mx.nd.save`` (MXNet 1.x) does: a mapping with its names in
    order, a sequence without names. v2 records (dense, context cpu(0)), byte-identical to MXNet
    1.9.1's output. A 0-d array (v2 reads ndim 0 as "no array") or a dtype MXNet cannot store
    raises :class:`ModelFormatError`."""
    if isinstance(arrays, Mapping):
        names, values = list(arrays.keys()), list(arrays.values())
        bad = next((n for n in names if not isinstance(n, str)), None)
        if bad is not None:
            raise ModelFormatError(f"NDArray names must be str, got {type(bad).__name__}: {bad!r}")
    elif isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence):
        raise ModelFormatError(f"expected a mapping or a sequence of arrays, got {type(arrays).__name__}")
    else:
        names, values = [], list(arrays)
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(values))]
    for i, value in enumerate(values):
        label = repr(names[i]) if names else f"#{i}"
        arr = np.asarray(value)
        flag = _FLAGS.get((arr.dtype.kind, arr.dtype.itemsize))
        if flag is None:
            raise ModelFormatError(f"array {label} has dtype {arr.dtype}, which MXNet cannot store; use float32, "
                                   "float64, float16, (u)int8/16/32/64 or bool")  # fmt: skip
        if arr.ndim == 0:
            raise ModelFormatError(
                f"array {label} is 0-d; MXNet's v2 format reads ndim 0 as 'no array'. Reshape it to (1,)"
            )
        if arr.ndim > _MAX_NDIM:
            raise ModelFormatError(f"array {label} has {arr.ndim} dimensions; at most {_MAX_NDIM} are supported")
        parts += [struct.pack(f"<Iii{arr.ndim}q", NDARRAY_V2_MAGIC, 0, arr.ndim, *arr.shape),
                  struct.pack("<iii", 1, 0, flag), np.ascontiguousarray(arr, dtype=_DTYPES[flag]).tobytes()]  # fmt: skip
    parts.append(struct.pack("<Q", len(names)))
    for name in names:
        parts += [struct.pack("<Q", len(name.encode("utf-8"))), name.encode("utf-8")]
    return b"".join(parts)
