"""The local backend: the factorization machine in PyTorch (with an optional native training
kernel, ``_fmkernel.c``) and FAISS k-NN."""

from __future__ import annotations

from .backend import TorchBackend

__all__ = ["TorchBackend"]
