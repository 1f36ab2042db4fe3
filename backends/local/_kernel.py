"""ctypes binding of the fused FM training step (``_fmkernel.c``).

:func:`load` returns the kernel, or ``None`` when it was not built (no C compiler at install
time) or is switched off with ``RECSYS_FM_KERNEL=torch``; the trainer then uses its pure-PyTorch
step, which computes the same update.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os

import torch

log = logging.getLogger("recsys")

__all__ = ["load", "KERNEL_ENV", "KERNEL_ABI"]

KERNEL_ENV = "RECSYS_FM_KERNEL"
#: must equal ``fm_kernel_abi()`` in _fmkernel.c
KERNEL_ABI = 3

_F = ctypes.c_void_p  # pointers are passed as integers (tensor.data_ptr())


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("backends.local._fmkernel")
    if spec is None or not spec.origin:
        log.debug("fused FM kernel not built; using the PyTorch training step")
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as exc:  # pragma: no cover - a broken build
        log.warning("could not load the fused FM kernel (%s); using the PyTorch training step", exc)
        return None
    abi = getattr(lib, "fm_kernel_abi", None)
    if abi is None or abi() != KERNEL_ABI:
        log.warning(
            "the fused FM kernel at %s was built from other sources; using the PyTorch training "
            "step (rebuild it: pip install -e .)",
            spec.origin,
        )
        return None
    fn = lib.fm_train_step
    fn.restype = ctypes.c_double
    i64, f32, i32 = ctypes.c_int64, ctypes.c_float, ctypes.c_int
    fn.argtypes = [
        _F, _F, _F, i64, i64,  # P, s0, s1, feature_dim, k1
        _F, _F, _F,  # w0, w0_s0, w0_s1
        _F, _F, _F, i64, i64, _F, i32, f32,  # row, idx, val, nnz, n_rows, target, loss, scale
        _F, _F, f32, f32,  # lr, wd, bias_lr, bias_wd
        f32, i32, f32, f32,  # clip, optimizer, correction, eps
        _F, _F, _F,  # slot, fwork, iwork
    ]  # fmt: skip
    fn = lib.fm_train_epoch
    fn.restype = ctypes.c_double
    fn.argtypes = [
        _F, _F, _F, i64, i64,  # P, s0, s1, feature_dim, k1
        _F, _F, _F,  # w0, w0_s0, w0_s1
        _F, _F, _F, i64,  # indptr, idx, val, n
        _F, i64, i32, ctypes.c_double,  # target, batch_size, loss, rescale
        _F, _F, f32, f32,  # lr, wd, bias_lr, bias_wd
        f32, i32, ctypes.POINTER(i64), f32,  # clip, optimizer, step (in/out), eps
        _F, _F, _F,  # slot, fwork, iwork
    ]  # fmt: skip
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel library, or None (not built, or ``RECSYS_FM_KERNEL=torch``)."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower()
    if choice not in ("auto", "torch", "c"):
        raise ValueError(f"{KERNEL_ENV} must be 'auto', 'c' or 'torch', got {choice!r}")
    if choice == "torch":
        return None
    lib = _library()
    if lib is None and choice == "c":
        raise RuntimeError(
            f"{KERNEL_ENV}=c but the fused FM kernel is not built; reinstall recsys with a C "
            "compiler available (pip install -e .) or unset it"
        )
    return lib


def ptr(t: torch.Tensor | None) -> int | None:
    """Address of a contiguous CPU tensor's data (None stays None)."""
    return None if t is None else t.data_ptr()
