"""Training the FM for ranking (``objective = "ranking"``), on any backend: an FM over
``[user | candidate video | recent videos]`` (:mod:`recsys.features`) trained so each customer's
next video scores above videos they did not pick, by ``softmax`` or ``bpr``
(:mod:`backends.local.ranking`) or ``classifier``: observed rows (label 1) against ``negatives``
sampled unobserved videos each (label 0), which any plain FM trains -- how SageMaker's built-in
FM learns to rank. The result is an ordinary :class:`recsys.model.FittedFM` with its layout.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.base import TrainOptions

from .data.prepare import PreparedData, split_leave_last_out
from .data.schema import ITEM, USER
from .errors import DataError
from .features import FeatureLayout, RankingData, design_rows, pair_user_features, user_features
from .model import FittedFM

__all__ = ["ranking_layout", "sampled_classifier_data", "train_ranking_model", "DEFAULT_NEGATIVES"]

log = logging.getLogger("recsys")

#: Negatives per loss when ``[ranking] negatives`` is not set.
DEFAULT_NEGATIVES = {"softmax": 512, "bpr": 4, "classifier": 4}


def ranking_layout(prepared: PreparedData, cfg: Any) -> FeatureLayout:
    return FeatureLayout(prepared.n_users, prepared.n_items, cfg.history_length, cfg.history_weighting)


def sampled_classifier_data(layout: FeatureLayout, user_part: sp.csr_matrix, users: np.ndarray, items: np.ndarray,
                            negatives: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:  # fmt: skip
    """Rows for the sampled-negatives classifier: every observed (user part, item) with label 1
    and ``negatives`` rows with the same user part and a random video the customer has not
    rated, label 0. Returns ``(X, y)``."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n = len(users)
    rng = np.random.default_rng(seed)
    observed = np.unique(users * layout.n_items + items)
    neg = rng.integers(0, layout.n_items, size=(n, negatives))
    # resample videos the customer has rated (a few rounds; leftovers are dropped)
    for _ in range(8):
        keys = users[:, None] * layout.n_items + neg
        hit = np.isin(keys, observed)
        if not hit.any():
            break
        neg[hit] = rng.integers(0, layout.n_items, size=int(hit.sum()))
    keep = ~np.isin(users[:, None] * layout.n_items + neg, observed).ravel()
    rows = np.concatenate([np.arange(n), np.repeat(np.arange(n), negatives)[keep]])
    y = np.concatenate([np.ones(n, dtype=np.float32), np.zeros(int(keep.sum()), dtype=np.float32)])
    return design_rows(layout, user_part[rows], np.concatenate([items, neg.ravel()[keep]])), y


def train_ranking_model(backend: Any, prepared: PreparedData, cfg: Any, *, show_progress: bool = False) -> tuple[FittedFM, sp.csr_matrix]:
    """Train the ranking FM configured by ``cfg`` (a :class:`recsys.config.RankingConfig`);
    returns it and the customers' user features (for :func:`recsys.vectors.fm_vectors`)."""
    layout = ranking_layout(prepared, cfg)
    train = prepared.train
    if len(train) == 0:
        raise DataError("no training ratings for the ranking model")
    loss = cfg.resolved_loss(backend)
    negatives = cfg.negatives if cfg.negatives is not None else DEFAULT_NEGATIVES[loss]
    data = RankingData(layout, train[USER].to_numpy(np.int64), train[ITEM].to_numpy(np.int64),
                       pair_user_features(layout, train))  # fmt: skip
    params = cfg.fm
    eval_set = None
    if params.early_stopping_patience and loss != "classifier":
        # validation: each customer's latest training rating (as the test split is built)
        fit_rows, val_rows, _ = split_leave_last_out(train.assign(_row=np.arange(len(train))))
        if len(val_rows) and len(fit_rows):
            eval_set = data.subset(val_rows["_row"].to_numpy())
            data = data.subset(fit_rows["_row"].to_numpy())
        else:  # small data: no customer has two training ratings to hold one out
            log.warning("ranking FM: no customer has two training ratings, so no validation rows to stop early on; "
                        "training all %d epochs", params.epochs)  # fmt: skip
            params = dataclasses.replace(params, early_stopping_patience=None)
    meta = {"objective": "ranking", "ranking_loss": loss, "negatives": negatives, "layout": layout.to_dict(),
            "n_users": layout.n_users, "n_items": layout.n_items}  # fmt: skip
    if loss == "classifier":
        # a plain FM fit (SageMaker's too) has no ranking metric to stop on: train all epochs
        params = dataclasses.replace(params, early_stopping_patience=None)
        X, y = sampled_classifier_data(layout, data.user_part, data.users, data.items, negatives, seed=params.seed)
        log.info("ranking (classifier): %s rows, %s positives", f"{X.shape[0]:,}", f"{int(y.sum()):,}")
        fm = backend.fit_fm(X, y, params, options=TrainOptions(show_progress=show_progress, metadata=meta))
    else:
        fm = backend.fit_fm_ranking(data, params, loss=loss, negatives=negatives, eval_set=eval_set,
                                    options=TrainOptions(show_progress=show_progress, metadata=meta))  # fmt: skip
    return fm, user_features(layout, train)
