"""Reading the outputs of ``recsys run`` back: for ``recsys recommend``, ``recsys evaluate`` and
the recommendation service.

A run directory holds ``run.json`` (format stamp, identity, which model recommends),
``config.toml``, ``metrics.json``, ``models/<name>/`` (saved FMs), ``knn/`` (the FAISS index
over the recommending model's item vectors, when the backend is local), ``data/`` (id mappings
and the train/test split) and the reports.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import RunConfig, load_config
from .data.prepare import Mappings, seen_matrix
from .data.schema import ITEM, USER
from .errors import DataError, ModelFormatError
from .features import FeatureLayout, user_features
from .fold_in import Histories
from .model import FittedFM
from .recommend import Recommender

__all__ = ["SavedRun"]


class SavedRun:
    """A finished run on disk. Everything is loaded lazily and read-only."""

    def __init__(self, path: str | os.PathLike):
        from .pipeline import RUN_FORMAT, RUN_FORMAT_VERSION

        self.path = Path(path)
        info_path = self.path / "run.json"
        if not info_path.is_file():
            raise DataError(f"{self.path} is not a recsys run directory (no run.json); run `recsys run --out {self.path}` first")
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{info_path} is unreadable: {exc}") from exc
        if self.info.get("format") != RUN_FORMAT or self.info.get("format_version") != RUN_FORMAT_VERSION:
            raise ModelFormatError(
                f"{self.path} has run format {self.info.get('format')!r} v{self.info.get('format_version')!r}; "
                f"this recsys reads {RUN_FORMAT} v{RUN_FORMAT_VERSION}"
            )

    # ---- pieces --------------------------------------------------------------------------
    @cached_property
    def config(self) -> RunConfig:
        return load_config(self.path / "config.toml")

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))

    @cached_property
    def mappings(self) -> Mappings:
        return Mappings.load(self.path / "data")

    @cached_property
    def train(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "data" / "train.parquet")

    @cached_property
    def test(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "data" / "test.parquet")

    def model(self, name: str | None = None) -> FittedFM:
        """A saved FM (``regressor``, ``classifier``, ``ranking``); default: the recommending one."""
        name = name or self.info["recommender_model"]
        path = self.path / "models" / name
        if not path.is_dir():
            available = sorted(p.name for p in (self.path / "models").iterdir()) if (self.path / "models").is_dir() else []
            raise DataError(f"this run has no {name!r} model; available: {', '.join(available) or 'none'}")
        return FittedFM.load(path)

    @cached_property
    def seen(self) -> sp.csr_matrix:
        tr = self.train
        return seen_matrix(tr[USER].to_numpy(), tr[ITEM].to_numpy(), self.mappings.n_users, self.mappings.n_items)

    @cached_property
    def popularity(self) -> np.ndarray:
        return np.bincount(self.train[ITEM].to_numpy(), minlength=self.mappings.n_items).astype(np.float64)

    def user_features_for(self, fm: FittedFM) -> sp.csr_matrix | None:
        """The customers' user part for models with recent-history features (else None)."""
        if "layout" not in fm.metadata:
            return None
        layout = FeatureLayout.from_metadata(fm.metadata)
        return user_features(layout, self.train) if layout.history_length else None

    def recommender(self, name: str | None = None) -> Recommender:
        """A :class:`Recommender` for the run's recommending model (its saved k-NN index when
        there is one, else an exact local index built now)."""
        name = name or self.info["recommender_model"]
        fm = self.model(name)
        index = None
        if name == self.info["recommender_model"] and (self.path / "knn").is_dir():
            from backends import load_knn

            index = load_knn(self.path / "knn")
        cfg = self.config
        histories = None
        if (self.path / "data" / "histories.npz").is_file():
            histories = Histories.load(self.path / "data", self.mappings.n_items)
        return Recommender(
            fm, self.mappings, self.seen, item_popularity=self.popularity, index=index,
            knn_params=cfg.knn, user_features=self.user_features_for(fm), histories=histories,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"SavedRun({str(self.path)!r}, run_id={self.info.get('run_id')!r})"
