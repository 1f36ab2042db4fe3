"""ctypes binding of the local backend's native kernels (``_fmkernel.c``): the fused FM
training step and epoch, and top-k with exclusion for exact inner-product k-NN.

:func:`load` returns the library, or ``None`` when it was not built (no C compiler at install
time) or is switched off with ``RECSYS_NATIVE=off``; the callers then use their PyTorch / FAISS
paths, which compute the same results (to float32 rounding for training).
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

KERNEL_ENV = "RECSYS_NATIVE"
#: must equal ``fm_kernel_abi()`` in _fmkernel.c
KERNEL_ABI = 7

_F = ctypes.c_void_p  # pointers are passed as integers (tensor.data_ptr())


#: The builds, best first: the AVX2 one is used only on a CPU that has AVX2.
BUILDS = ("_fmkernel_avx2", "_fmkernel")


def _cpu_has_avx2() -> bool:
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    except Exception:  # pragma: no cover - older torch
        return False


@functools.cache
def _library(build: str | None = None) -> ctypes.CDLL | None:
    """The first usable build (or exactly ``build``), with its argument types declared."""
    names = (
        (build,) if build else tuple(b for b in BUILDS if b != "_fmkernel_avx2" or _cpu_has_avx2())
    )
    for name in names:
        spec = importlib.util.find_spec(f"backends.local.{name}")
        if spec is None or not spec.origin:
            continue
        try:
            lib = ctypes.CDLL(spec.origin)
        except OSError as exc:  # pragma: no cover - a broken build
            log.warning("could not load the native kernels %s (%s)", spec.origin, exc)
            continue
        abi = getattr(lib, "fm_kernel_abi", None)
        if abi is None or abi() != KERNEL_ABI:
            log.warning(
                "the native kernels at %s were built from other sources; not using them "
                "(rebuild: pip install -e .)",
                spec.origin,
            )
            continue
        lib.build_name = name
        return _declare(lib)
    log.debug("native kernels not built; using the PyTorch / FAISS paths")
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, f32, i32 = ctypes.c_int64, ctypes.c_float, ctypes.c_int
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
    fn = lib.topk_ip_excluding
    fn.restype = ctypes.c_int
    fn.argtypes = [
        _F, i64, _F, i64, i64, i64,  # queries, nq, items transposed, n, n_pad, d
        _F, _F, i64,  # excl_indptr, excl_indices, k
        _F, _F, _F, _F,  # out_ids, out_scores, mark, rows
    ]  # fmt: skip
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel library, or None (not built, or ``RECSYS_NATIVE=off``)."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower()
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"{KERNEL_ENV} must be 'auto', 'on' or 'off', got {choice!r}")
    if choice == "off":
        return None
    lib = _library()
    if lib is None and choice == "on":
        raise RuntimeError(
            f"{KERNEL_ENV}=on but the native kernels are not built; reinstall recsys with a C "
            "compiler available (pip install -e .) or unset it"
        )
    return lib


def ptr(t: torch.Tensor | None) -> int | None:
    """Address of a contiguous CPU tensor's data (None stays None)."""
    return None if t is None else t.data_ptr()
