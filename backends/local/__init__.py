"""The local backend: a pure-PyTorch factorization machine and FAISS k-NN."""

from __future__ import annotations

from .backend import TorchBackend

__all__ = ["TorchBackend"]
