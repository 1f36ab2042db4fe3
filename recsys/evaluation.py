"""Rating evaluation shared by every backend, from plain arrays: regression and classification
metrics next to the baselines they must beat, and the lab's sanity checks on the predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from .errors import DataError

__all__ = ["regression_report", "classification_report", "prediction_summary"]


def _as_1d(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise DataError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return a


def _arrays(y_true: Any, pred: Any, y_train: Any, pred_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, p, y_tr = _as_1d("y_true", y_true), _as_1d(pred_name, pred), _as_1d("y_train", y_train)
    if y.shape != p.shape:
        raise DataError(f"y_true has {y.size} values but {pred_name} has {p.size}")
    return y, p, y_tr


def _errors(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    d = p - y
    mse = float(np.mean(d * d))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(d)))}


def regression_report(y_true: Any, y_pred: Any, y_train: Any, *, items_test: Any = None, items_train: Any = None) -> dict[str, Any]:
    """Test MSE / RMSE / MAE (``test_*``) next to predicting the training mean (``naive_*``, the
    lab's baseline) and, given ``items_test`` and ``items_train``, each item's training mean
    (``item_mean_*``; the global mean for unseen items); ``rmse_improvement_over_naive`` is a
    fraction (0.15 = 15 % lower RMSE)."""
    y, p, y_tr = _arrays(y_true, y_pred, y_train, "y_pred")
    out: dict[str, Any] = {f"test_{k}": v for k, v in _errors(y, p).items()}
    mean = float(y_tr.mean())
    out["train_mean"] = mean
    out.update({f"naive_{k}": v for k, v in _errors(y, np.full_like(y, mean)).items()})
    if items_test is not None and items_train is not None:
        items_train = np.asarray(items_train, dtype=np.int64)
        items_test = np.asarray(items_test, dtype=np.int64)
        if items_train.size != y_tr.size or items_test.size != y.size:
            raise DataError("items_train / items_test must align with y_train / y_true")
        n = int(max(items_train.max(initial=-1), items_test.max(initial=-1))) + 1
        sums = np.bincount(items_train, weights=y_tr, minlength=n)
        counts = np.bincount(items_train, minlength=n)
        item_mean = np.where(counts > 0, sums / np.maximum(counts, 1), mean)
        out.update({f"item_mean_{k}": v for k, v in _errors(y, item_mean[items_test]).items()})
    out["rmse_improvement_over_naive"] = 1.0 - out["test_rmse"] / out["naive_rmse"] if out["naive_rmse"] > 0 else 0.0
    return out


def _binary_metrics(y: np.ndarray, label: np.ndarray) -> dict[str, float]:
    pos, neg = y == 1, y == 0
    balanced = (label[pos].mean() + (1 - label[neg]).mean()) / 2 if pos.any() and neg.any() else float("nan")
    return {
        "accuracy": float(skm.accuracy_score(y, label)),
        # the mean of the recall of each class: 0.5 for any constant answer, so an accuracy that
        # only echoes the majority class shows here
        "balanced_accuracy": float(balanced),
        "precision": float(skm.precision_score(y, label, zero_division=0)),
        "recall": float(skm.recall_score(y, label, zero_division=0)),
        "f1": float(skm.f1_score(y, label, zero_division=0)),
    }


def classification_report(y_true: Any, proba: Any, y_train: Any, *, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC AUC, log loss and the confusion matrix
    ``[[tn, fp], [fn, tp]]`` of P(y=1) ``proba`` (label = proba >= ``threshold``), next to
    always predicting the majority class of *training* (``baseline_*``) and always 1."""
    y, p, y_tr = _arrays(y_true, proba, y_train, "proba")
    if not np.isin(y, (0.0, 1.0)).all() or not np.isin(y_tr, (0.0, 1.0)).all():
        raise DataError("classification labels must be 0 or 1")
    if (p < 0).any() or (p > 1).any():
        raise DataError("proba must be probabilities in [0, 1]")
    label = (p >= threshold).astype(np.float64)
    out: dict[str, Any] = _binary_metrics(y, label)
    out["auc"] = float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    out["log_loss"] = float(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0.0, 1.0]))
    tn, fp, fn, tp = skm.confusion_matrix(y, label, labels=[0.0, 1.0]).ravel()
    out["confusion_matrix"] = [[int(tn), int(fp)], [int(fn), int(tp)]]
    out["positive_rate_test"] = float(y.mean())
    majority = 1.0 if y_tr.mean() >= 0.5 else 0.0
    out["majority_class"] = int(majority)
    out.update({f"baseline_{k}": v for k, v in _binary_metrics(y, np.full_like(y, majority)).items()})
    # log loss of predicting the training positive rate for everyone
    rate = float(np.clip(y_tr.mean(), 1e-15, 1 - 1e-15))
    out["baseline_log_loss"] = float(skm.log_loss(y, np.full_like(y, rate), labels=[0.0, 1.0]))
    out["baseline_auc"] = 0.5
    out.update({f"always1_{k}": v for k, v in _binary_metrics(y, np.ones_like(y)).items()})
    return out


def prediction_summary(pred: Any, *, bins: int = 40, valid_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """The lab's sanity check: min / max / mean of the predictions and a histogram; with
    ``valid_range`` (e.g. the rating scale) also how many fall outside it."""
    p = _as_1d("predictions", pred)
    counts, edges = np.histogram(p, bins=bins)
    out: dict[str, Any] = {"min": float(p.min()), "max": float(p.max()), "mean": float(p.mean()), "std": float(p.std()),
                           "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}  # fmt: skip
    if valid_range is not None:
        lo, hi = valid_range
        out["valid_range"] = [float(lo), float(hi)]
        out["outside_valid_range"] = int(((p < lo) | (p > hi)).sum())
    return out
