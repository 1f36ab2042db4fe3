"""ctypes binding of the local backend's native kernels (``_fmkernel.c``; the same library holds
the Gibbs kernel ``_mcmc.c``, opened by :mod:`._gibbs` through :func:`open_library`).
:func:`load` returns the library, or None when it was not built (no C compiler at install time)
or is switched off with ``RECSYS_NATIVE=off``; callers then use their PyTorch paths (equal to
float32 rounding).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from recsys.errors import ConfigError

log = logging.getLogger("recsys")

__all__ = ["load", "switched", "open_library", "ptr", "KERNEL_ENV", "KERNEL_ABI"]

KERNEL_ENV = "RECSYS_NATIVE"
#: must equal ``fm_kernel_abi()`` in _fmkernel.c
KERNEL_ABI = 12

_P = ctypes.c_void_p  # pointers are passed as integers (tensor.data_ptr())
_I64, _F32, _INT, _F64 = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_double
_STEP = ctypes.POINTER(ctypes.c_int64)

#: restype and argument types of every exported function (see _fmkernel.c for their meaning)
_SIGNATURES = {
    "fm_kernel_abi": (_INT, []),
    "fm_kernel_isa": (_INT, [_INT]),
    "fm_train_epoch": (_F64, [
        _P, _P, _P, _I64, _I64,  # P, s0, s1, feature_dim, k1
        _P, _P, _P,  # w0, w0_s0, w0_s1
        _P, _P, _P, _I64,  # indptr, idx, val, n
        _P, _I64, _INT, _F64,  # target, batch_size, loss, rescale
        _P, _P, _F32, _F32,  # lr, wd, bias_lr, bias_wd
        _F32, _INT, _STEP, _F32,  # clip, optimizer, step (in/out), eps
        _P, _P, _P,  # slot, fwork, iwork
    ]),
    "rank_gather": (_INT, [
        _P, _I64, _I64, _P, _P, _P,  # P, feature_dim, k1, user part indptr / idx / val
        _P, _I64, _I64, _P, _I64, _F32,  # items, item_offset, B, neg, S, log_q
        _P, _P, _P,  # U, Pi, Pn
    ]),
    "rank_softmax": (_F64, [
        _P, _P, _P, _I64, _P, _I64, _P, _I64,  # Sc, U, Pi, k1, users, B, neg, S
        _P, _P, _P, _F32, _P, _P, _P,  # seen indptr / idx, col_of, scale, g_pos, inv, Uext
    ]),
    "rank_update": (_INT, [
        _P, _P, _P, _I64, _P, _P, _P,  # P, s0, s1, k1, user part indptr / idx / val
        _P, _I64, _I64, _P, _I64,  # items, item_offset, B, neg, S
        _P, _P, _P, _P, _P, _P,  # U, Pi, gU, g_pos, inv, gN
        _P, _P, _F32, _INT, _STEP, _F32,  # lr, wd, clip, optimizer, step (in/out), eps
        _P, _P, _P, _P,  # slot, grows, uniq, gu
    ]),
    "rank_targets": (_INT, [_P, _I64, _I64, _P, _P, _P, _P, _P]),
}  # fmt: skip


def open_library(stem: str, abi: int, signatures: dict[str, tuple]) -> ctypes.CDLL | None:
    """The build ``stem`` next to this file whose ABI (its first exported function, first in
    ``signatures``) is ``abi``, its functions declared, or None; every suffix is tried, so a
    stale build left by an older install never hides the current one."""
    here = Path(__file__).resolve().parent
    stale = []
    abi_fn = next(iter(signatures))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{stem}{suffix}"
        if not path.is_file():
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:  # pragma: no cover - a broken build
            log.warning("could not load the native kernels %s (%s)", path, exc)
            continue
        check = getattr(lib, abi_fn, None)
        if check is not None:
            check.restype = signatures[abi_fn][0]
        if check is None or check() != abi:
            stale.append(path.name)
            continue
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        return lib
    if stale:
        log.warning("the native kernels %s were built from other sources; not using them (rebuild: pip install -e .)", ", ".join(stale))
    else:
        log.debug("native kernels %s not built; using the PyTorch / numpy paths", stem)
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = open_library("_fmkernel", KERNEL_ABI, _SIGNATURES)
    if lib is not None:
        log.debug("native kernels: %s (%s)", Path(lib._name).name, "AVX2" if lib.fm_kernel_isa(-1) else "baseline")
    return lib


def switched(library: Callable[[], ctypes.CDLL | None], what: str) -> ctypes.CDLL | None:
    """``library()``, or None with ``RECSYS_NATIVE=off``; ``on`` without a build is a
    :class:`ConfigError` saying that ``what`` is not built."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower()
    if choice not in ("auto", "on", "off"):
        raise ConfigError(f"{KERNEL_ENV} must be 'auto', 'on' or 'off', got {choice!r}")
    if choice == "off":
        return None
    lib = library()
    if lib is None and choice == "on":
        raise ConfigError(f"{KERNEL_ENV}=on but {what} not built; reinstall recsys with a C compiler available (pip install -e .) or unset it")
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel library, or None (not built, or ``RECSYS_NATIVE=off``)."""
    return switched(_library, "the native kernels are")


def ptr(t: torch.Tensor | None) -> int | None:
    """Address of a contiguous CPU tensor's data (None stays None)."""
    return None if t is None else t.data_ptr()
