"""The fitted factorization machine: a backend-neutral artifact.

Whichever backend trained it (the local PyTorch FM, the MCMC sampler or SageMaker's built-in
FM), a fitted FM is what SageMaker's FM model holds: three arrays (:class:`FittedFM`) plus the
predictor type and the configuration. k-NN, evaluation and serving consume it.

    y(x) = w0 + sum_i w_i x_i + 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

from ._io import atomic_dir, to_json
from .errors import DataError, ModelFormatError
from .params import PREDICTOR_TYPES

__all__ = ["FittedFM", "PosteriorSamples", "FM_FORMAT", "FM_FORMAT_VERSION", "sigmoid", "check_design", "target_range"]

FM_FORMAT = "recsys.fm"
#: 2 added posterior samples and the probit link; a model without them is still written as 1
FM_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
LINKS = ("logit", "probit")
_ROW_CHUNK = 65536


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def target_range(y: np.ndarray) -> list[float]:
    """``[min, max]`` of a regressor's training targets: the range its predictions are kept in."""
    return [float(np.min(y)), float(np.max(y))]


def check_design(
    X: Any, y: Any, what: str = "training data", *, feature_dim: int | None = None, classifier: bool = False
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Validate FM training data (for every backend): a non-empty 2-D design matrix of finite
    values and as many finite labels (0/1 for a classifier). Returns float32 canonical CSR (the
    caller's matrix is never modified) and float32 labels; raises :class:`DataError`."""
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise DataError(f"{what}: X must be a 2-D matrix (CSR or dense), got {X.ndim}-D")
        if not np.issubdtype(X.dtype, np.number):
            raise DataError(f"{what}: X must be numeric, got dtype {X.dtype}")
    X = sp.csr_matrix(X, dtype=np.float32)
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
        raise DataError(f"{what}: y must be numeric, got dtype {y.dtype}")
    y = y.astype(np.float32).reshape(-1)
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{what}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{what}: X is empty (shape {X.shape})")
    if feature_dim is not None and X.shape[1] != feature_dim:
        raise DataError(f"{what}: X has {X.shape[1]} columns but feature_dim is {feature_dim}")
    if not np.isfinite(X.data).all():
        raise DataError(f"{what}: X contains NaN or infinite values")
    if not np.isfinite(y).all():
        raise DataError(f"{what}: y contains NaN or infinite values")
    if classifier and not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"{what}: binary_classifier labels must be 0 or 1; found other values in y")
    return X, y


def _used_columns(X: sp.csr_matrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """The columns ``X`` uses and ``X`` restricted to them (same rows, same values)."""
    cols = np.unique(X.indices)
    return cols, sp.csr_matrix((X.data, np.searchsorted(cols, X.indices), X.indptr), shape=(X.shape[0], len(cols)))


@dataclass(eq=False)
class PosteriorSamples:
    """Parameter samples of a Bayesian FM: ``w0`` (S,), ``w`` (S, feature_dim), ``V`` (S,
    feature_dim, num_factors)."""

    w0: np.ndarray
    w: np.ndarray
    V: np.ndarray

    def __post_init__(self) -> None:
        self.w0 = np.asarray(self.w0, dtype=np.float64).reshape(-1)
        self.w = np.ascontiguousarray(self.w, dtype=np.float32)
        self.V = np.ascontiguousarray(self.V, dtype=np.float32)
        s = len(self.w0)
        if s == 0 or self.w.ndim != 2 or self.V.ndim != 3 or self.w.shape[0] != s or self.V.shape[0] != s:
            raise ModelFormatError(
                f"posterior samples must be w0 (S,), w (S, d), V (S, d, k) with S >= 1; got shapes "
                f"{self.w0.shape}, {self.w.shape}, {self.V.shape}"
            )

    def __len__(self) -> int:
        return len(self.w0)


@dataclass(eq=False)
class FittedFM:
    """A trained factorization machine: bias ``w0``, weights ``w`` (feature_dim,), factors ``V``
    (feature_dim, num_factors), and the hyperparameters it was trained with (``config``).

    ``metadata`` holds the provenance (``backend``), the users-then-items one-hot layout
    (``n_users``, ``n_items``: needed for k-NN vectors) and a regressor's ``target_range = [lo,
    hi]``, which bounds :meth:`predict_score` (a rating outside the scale is never right).
    With ``samples`` (MCMC), :meth:`predict_score` averages over them and ``w0, w, V`` are the
    posterior mean (used by :meth:`decision_function` and the k-NN vectors). ``link``: how a
    classifier turns y(x) into P(y = 1), the sigmoid ("logit") or the normal CDF ("probit": MCMC).
    """

    w0: float
    w: np.ndarray
    V: np.ndarray
    predictor_type: str = "regressor"
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    samples: PosteriorSamples | None = None
    link: str = "logit"

    def __post_init__(self) -> None:
        self.w0 = float(np.asarray(self.w0, dtype=np.float64).reshape(-1)[0]) if np.ndim(self.w0) else float(self.w0)
        self.w = np.ascontiguousarray(np.asarray(self.w, dtype=np.float32).reshape(-1))
        self.V = np.ascontiguousarray(np.asarray(self.V, dtype=np.float32))
        if self.V.ndim != 2:
            raise ModelFormatError(f"V must be 2-D (feature_dim, num_factors), got shape {self.V.shape}")
        if self.V.shape[0] != self.w.shape[0]:
            raise ModelFormatError(f"w has {self.w.shape[0]} entries but V has {self.V.shape[0]} rows; both must equal feature_dim")
        for name, choices in (("predictor_type", PREDICTOR_TYPES), ("link", LINKS)):
            if getattr(self, name) not in choices:
                raise ModelFormatError(f"{name} must be {' or '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        if self.samples is not None and self.samples.V.shape[1:] != self.V.shape:
            raise ModelFormatError(f"posterior samples have parameters of shape {self.samples.V.shape[1:]}, the model {self.V.shape}")

    # ---- shape ---------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return int(self.w.shape[0])

    @property
    def num_factors(self) -> int:
        return int(self.V.shape[1])

    @property
    def is_classifier(self) -> bool:
        return self.predictor_type == "binary_classifier"

    def one_hot_layout(self) -> tuple[int, int]:
        """``(n_users, n_items)`` of the users-then-items one-hot design this model was trained on."""
        n_users, n_items = self.metadata.get("n_users"), self.metadata.get("n_items")
        if n_users is None or n_items is None:
            raise ModelFormatError("this model does not record its one-hot layout (metadata n_users / n_items); "
                                   "pass n_users and n_items explicitly")  # fmt: skip
        n_users, n_items = int(n_users), int(n_items)
        if n_users + n_items > self.feature_dim:
            raise ModelFormatError(f"n_users + n_items = {n_users + n_items} exceeds feature_dim {self.feature_dim}")
        return n_users, n_items

    # ---- prediction ----------------------------------------------------------------------
    def _as_csr(self, X: Any) -> sp.csr_matrix:
        if sp.issparse(X):
            X = sp.csr_matrix(X)
        else:
            X = np.asarray(X)
            if X.ndim == 1:
                X = X.reshape(1, -1)
            if X.ndim != 2:
                raise DataError(f"X must be 2-D (n_samples, feature_dim), got {X.ndim}-D")
            if not np.issubdtype(X.dtype, np.number):
                raise DataError(f"X must be numeric, got dtype {X.dtype}")
            X = sp.csr_matrix(X.astype(np.float64, copy=False))
        if X.shape[1] != self.feature_dim:
            raise DataError(f"X has {X.shape[1]} columns but the model's feature_dim is {self.feature_dim}")
        return X

    @staticmethod
    def _output(X: sp.csr_matrix, w0: float, w: np.ndarray, V: np.ndarray) -> np.ndarray:
        if X.nnz < w.shape[0] // 4:  # only the columns X uses: the same sums, no full float64 copy
            cols, X = _used_columns(X)
            w, V = w[cols], V[cols]
        V = V.astype(np.float64)
        v_sq = V * V
        w = w.astype(np.float64, copy=False)
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], _ROW_CHUNK):
            part = X[start : start + _ROW_CHUNK].astype(np.float64)
            s = np.asarray(part @ V)
            s2 = np.asarray(part.multiply(part) @ v_sq)
            out[start : start + part.shape[0]] = w0 + np.asarray(part @ w).ravel() + 0.5 * (s * s - s2).sum(axis=1)
        return out

    def decision_function(self, X: Any) -> np.ndarray:
        """The raw FM output y(x) at ``w0, w, V`` (the logit, or probit score, of a classifier),
        in float64, O(nnz * num_factors)."""
        return self._output(self._as_csr(X), self.w0, self.w, self.V)

    def predict_score(self, X: Any) -> np.ndarray:
        """SageMaker's ``score``: :meth:`score_of` the FM output, averaged over the posterior
        samples when the model has them."""
        X = self._as_csr(X)
        if self.samples is None:
            return self.score_of(self._output(X, self.w0, self.w, self.V))
        s = self.samples
        return np.mean([self.score_of(self._output(X, s.w0[i], s.w[i], s.V[i])) for i in range(len(s))], axis=0)

    def score_of(self, raw: np.ndarray) -> np.ndarray:
        """The score of FM outputs ``raw``: P(y = 1) through the link for a classifier, the
        output within ``metadata["target_range"]`` (when recorded) for a regressor."""
        if self.is_classifier:
            return (ndtr if self.link == "probit" else sigmoid)(raw)
        lo, hi = self.metadata.get("target_range") or (-np.inf, np.inf)
        return np.clip(raw, lo, hi)

    def predict(self, X: Any) -> np.ndarray:
        """The prediction for a regressor; for a classifier the label 1.0 if P(y=1) >= 0.5 else 0.0
        (SageMaker's ``predicted_label``)."""
        score = self.predict_score(X)
        return (score >= 0.5).astype(np.float64) if self.is_classifier else score

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, 2), columns P(y=0), P(y=1). Classifier only."""
        if not self.is_classifier:
            raise ModelFormatError("predict_proba needs a binary_classifier; this model is a regressor")
        p = self.predict_score(X)
        return np.column_stack([1.0 - p, p])

    def decision_pairs(self, users: Any, items: Any) -> np.ndarray:
        """y(x) for one-hot (user, item) pairs: ``w0 + w_u + w_i + <V_u, V_i>``, in float64."""
        n_users, n_items = self.one_hot_layout()
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise DataError(f"users and items must have the same shape, got {users.shape} and {items.shape}")
        for what, idx, n in (("user", users, n_users), ("item", items, n_items)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(f"{what} indices must be in [0, {n}), got range [{idx.min()}, {idx.max()}]")
        cols = items + n_users
        dot = np.einsum("ij,ij->i", self.V[users].astype(np.float64), self.V[cols].astype(np.float64))
        return self.w0 + self.w[users].astype(np.float64) + self.w[cols] + dot

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the folder ``path`` (``config.json``, ``params.npz``) atomically. It must be absent,
        empty or a model saved before; anything else raises :class:`~recsys.errors.OutputError`."""
        path = Path(path)
        extended = self.samples is not None or self.link != "logit"
        meta = {"format": FM_FORMAT, "format_version": FM_FORMAT_VERSION if extended else 1,
                "predictor_type": self.predictor_type, "feature_dim": self.feature_dim,
                "num_factors": self.num_factors, "w0": self.w0, "config": self.config, "metadata": self.metadata}  # fmt: skip
        if extended:  # version-1 files stay exactly as before
            meta.update(link=self.link, n_samples=0 if self.samples is None else len(self.samples))
        arrays = {"w": self.w, "V": self.V}
        if self.samples is not None:
            arrays.update(sample_w0=self.samples.w0, sample_w=self.samples.w, sample_V=self.samples.V)
        with atomic_dir(path, kind=FM_FORMAT) as tmp:
            (tmp / "config.json").write_text(to_json(meta) + "\n", encoding="utf-8")
            np.savez(tmp / "params.npz", **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedFM:
        """Read a model written by :meth:`save`. The format stamp and version are checked, and the
        array headers in ``params.npz`` are checked against ``config.json`` (shapes, dtypes,
        sizes) before any array is allocated. Raises :class:`ModelFormatError` naming the file."""
        path = Path(path)
        cfg_path, npz_path = path / "config.json", path / "params.npz"
        if not cfg_path.is_file() or not npz_path.is_file():
            raise ModelFormatError(f"{path} is not a saved recsys FM: expected config.json and params.npz in it")
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelFormatError(f"{cfg_path} is not valid JSON ({type(exc).__name__}); re-save the model") from None
        if not isinstance(meta, dict) or meta.get("format") != FM_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ModelFormatError(f"{cfg_path} is not a recsys FM (format stamp {str(found)[:40]!r})")
        version = meta.get("format_version")
        if version not in _READABLE_VERSIONS:
            raise ModelFormatError(f"{path} has FM format version {str(version)[:20]!r}; this recsys reads format version "
                                   f"{' or '.join(map(str, _READABLE_VERSIONS))}. Re-save the model with a matching recsys version.")  # fmt: skip
        missing = [k for k in ("w0", "predictor_type", "feature_dim", "num_factors") if k not in meta]
        if missing:
            raise ModelFormatError(f"{cfg_path} lacks {', '.join(missing)}")
        dims = meta["feature_dim"], meta["num_factors"]
        n_samples = (meta.get("n_samples") or 0) if version >= 2 else 0
        sizes_ok = all(type(d) is int and d > 0 for d in dims)  # JSON ints (a bool is not one)
        if not (sizes_ok and type(n_samples) is int and n_samples >= 0):
            raise ModelFormatError(f"{cfg_path}: feature_dim, num_factors and n_samples must be non-negative integers")
        shapes = {"w": (dims[0],), "V": dims}
        if n_samples:
            shapes.update(sample_w0=(n_samples,), sample_w=(n_samples, dims[0]), sample_V=(n_samples, *dims))
        _check_npz(npz_path, shapes)
        try:
            with np.load(npz_path, allow_pickle=False) as arrays:
                w, V = arrays["w"], arrays["V"]
                drawn = [arrays[f"sample_{k}"] for k in ("w0", "w", "V")] if n_samples else None
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFormatError(f"{npz_path} is unreadable ({type(exc).__name__}); re-save the model") from None
        try:
            fm = cls(
                w0=float(meta["w0"]), w=w, V=V, predictor_type=meta["predictor_type"],
                config=meta.get("config") or {}, metadata=meta.get("metadata") or {},
                samples=PosteriorSamples(*drawn) if drawn else None, link=meta.get("link", "logit"),
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path}: invalid model data ({type(exc).__name__}); re-save the model") from None
        if not (np.isfinite(fm.w0) and np.isfinite(fm.w).all() and np.isfinite(fm.V).all()):
            raise ModelFormatError(f"{path} holds NaN or infinite parameters (its training diverged); "
                                   "retrain it, e.g. with a lower learning rate")  # fmt: skip
        return fm

    def __repr__(self) -> str:
        return (f"FittedFM(predictor_type={self.predictor_type!r}, feature_dim={self.feature_dim}, "
                f"num_factors={self.num_factors}, backend={self.metadata.get('backend')!r})")


def _check_npz(npz_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Check the arrays in an ``.npz`` before loading it: each is an uncompressed member with a
    floating-point ``.npy`` header of the expected shape, and the member holds exactly that many
    bytes (so no header can make :func:`numpy.load` allocate more than the file holds)."""
    size_on_disk = npz_path.stat().st_size
    try:
        with zipfile.ZipFile(npz_path) as zf:
            for name, shape in shapes.items():
                if f"{name}.npy" not in zf.namelist():
                    raise ModelFormatError(f"{npz_path} lacks the array {name!r}; re-save the model")
                info = zf.getinfo(f"{name}.npy")
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > size_on_disk:
                    raise ModelFormatError(f"{npz_path}: array {name!r} is not stored as recsys writes it; re-save the model")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version not in ((1, 0), (2, 0)):
                        raise ModelFormatError(f"{npz_path}: array {name!r} has .npy format {version}; re-save the model")
                    found, _, dtype = getattr(np.lib.format, f"read_array_header_{version[0]}_0")(fh)
                    header = fh.tell()
                if tuple(found) != tuple(shape) or dtype.kind != "f" or dtype.itemsize not in (4, 8):
                    raise ModelFormatError(f"{npz_path}: array {name!r} is {dtype} of shape {tuple(found)}, but config.json says "
                                           f"float32 of shape {tuple(shape)}; the files do not belong together. Re-save the model")  # fmt: skip
                if header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != info.file_size:
                    raise ModelFormatError(f"{npz_path}: array {name!r} holds the wrong number of bytes (truncated?)")
    except ModelFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ModelFormatError(f"{npz_path} is not a readable .npz archive ({type(exc).__name__}); re-save the model") from None
