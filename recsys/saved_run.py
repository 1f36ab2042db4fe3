"""Reading the outputs of ``recsys run`` back: for ``recsys recommend``, ``recsys evaluate`` and
the recommendation service.

A run directory holds ``run.json`` (format stamp, identity, which model recommends),
``config.toml``, ``metrics.json``, ``models/<name>/`` (saved FMs), ``knn/`` (the FAISS index
over the recommending model's item vectors, when the backend is local), ``data/`` (id mappings
and the train/test split) and the reports.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import RunConfig, load_config
from .data.prepare import Mappings, seen_matrix
from .data.schema import ITEM, RATING, USER
from .errors import DataError, ModelFormatError, RecsysError
from .features import FeatureLayout, user_features
from .fold_in import Histories
from .model import FittedFM
from .recommend import Recommender, popularity

__all__ = ["SavedRun", "RUN_FORMAT", "RUN_FORMAT_VERSION"]

#: The format stamp of ``run.json`` (written by :func:`recsys.pipeline.run`, checked here).
RUN_FORMAT = "recsys.run"
RUN_FORMAT_VERSION = 1


class SavedRun:
    """A finished run on disk. Everything is loaded lazily and read-only.

    A missing or damaged file raises :class:`~recsys.errors.ModelFormatError` naming it (a
    folder that is not a run at all: :class:`~recsys.errors.DataError`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fix = f"the run folder is damaged: run `recsys run --out {self.path}` again"
        info_path = self.path / "run.json"
        if not info_path.is_file():
            raise DataError(f"{self.path} is not a recsys run directory (no run.json); run `recsys run --out {self.path}` first")
        with self._reading(info_path):
            info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or info.get("format_version") != RUN_FORMAT_VERSION:
            found = f"{str(info.get('format'))[:40]!r} v{str(info.get('format_version'))[:10]}" if isinstance(info, dict) \
                else f"a JSON {type(info).__name__}"  # fmt: skip
            raise ModelFormatError(f"{info_path} holds {found}; this recsys reads {RUN_FORMAT} v{RUN_FORMAT_VERSION}")
        for key in ("recommender_model", "objective"):
            if not isinstance(info.get(key), str):
                raise ModelFormatError(f"{info_path} lacks {key!r}; {self._fix}")
        self.info: dict[str, Any] = info

    @contextlib.contextmanager
    def _reading(self, path: Path | str) -> Iterator[None]:
        """Any failure to read ``path`` becomes a ``ModelFormatError`` naming it (never its content)."""
        try:
            yield
        except ModelFormatError:
            raise
        except FileNotFoundError:
            raise ModelFormatError(f"{path} is missing; {self._fix}") from None
        except (RecsysError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:  # ValueError: JSON, UTF-8, Parquet
            raise ModelFormatError(f"{path} is unreadable or invalid ({type(exc).__name__}); {self._fix}") from None

    # ---- pieces --------------------------------------------------------------------------
    @cached_property
    def config(self) -> RunConfig:
        path = self.path / "config.toml"
        if not path.is_file():
            raise ModelFormatError(f"{path} is missing; {self._fix}")
        with self._reading(path):
            return load_config(path)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        path = self.path / "metrics.json"
        with self._reading(path):
            return json.loads(path.read_text(encoding="utf-8"))

    @cached_property
    def mappings(self) -> Mappings:
        data = self.path / "data"
        for name in ("customers.parquet", "products.parquet"):
            if not (data / name).is_file():
                raise ModelFormatError(f"{data / name} is missing; {self._fix}")
        with self._reading(f"the id mappings {data / 'customers.parquet'} / products.parquet"):
            return Mappings.load(data)

    def _split(self, name: str) -> pd.DataFrame:
        path = self.path / "data" / f"{name}.parquet"
        with self._reading(path):
            frame = pd.read_parquet(path)
            users, items = frame[USER].to_numpy(), frame[ITEM].to_numpy()
            frame[RATING].to_numpy(np.float64)
        m = self.mappings
        if not (np.issubdtype(users.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)) or (
            len(frame) and (users.min() < 0 or users.max() >= m.n_users or items.min() < 0 or items.max() >= m.n_items)
        ):
            raise ModelFormatError(f"{path} does not match the run's id mappings; {self._fix}")
        return frame

    @cached_property
    def train(self) -> pd.DataFrame:
        return self._split("train")

    @cached_property
    def test(self) -> pd.DataFrame:
        return self._split("test")

    @property
    def model_names(self) -> list[str]:
        """The saved FMs (``regressor``, ``classifier``, ``ranking``) in this run."""
        models = self.path / "models"
        return sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []

    def model(self, name: str | None = None) -> FittedFM:
        """A saved FM (``regressor``, ``classifier``, ``ranking``); default: the recommending one."""
        name = name or self.info["recommender_model"]
        path = self.path / "models" / name
        if not path.is_dir():
            raise DataError(f"this run has no {name!r} model; available: {', '.join(self.model_names) or 'none'}")
        return FittedFM.load(path)

    @cached_property
    def seen(self) -> sp.csr_matrix:
        tr = self.train
        return seen_matrix(tr[USER].to_numpy(), tr[ITEM].to_numpy(), self.mappings.n_users, self.mappings.n_items)

    @cached_property
    def popularity(self) -> np.ndarray:
        return popularity(self.train[ITEM], self.mappings.n_items)

    def feature_groups_for(self, fm: FittedFM) -> Any:
        """The :class:`~recsys.feature_groups.FeatureGroups` a rating model was trained with
        (rebuilt from the saved training split), or None for the plain one-hot design."""
        spec = fm.metadata.get("feature_groups")
        if not spec:
            return None
        from .feature_groups import FeatureGroups, FeatureGroupsConfig

        config = FeatureGroupsConfig(**{k: spec[k] for k in ("implicit", "recent", "time_buckets", "recent_mean") if k in spec})
        return FeatureGroups(config, self.train, self.mappings.n_users, self.mappings.n_items)

    def user_features_for(self, fm: FittedFM) -> sp.csr_matrix | None:
        """The customers' side of a row for models with more than the user one-hot (recent-history
        features, feature groups), else None."""
        groups = self.feature_groups_for(fm)
        if groups is not None:
            return groups.user_part()
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
        cfg, m = self.config, self.mappings
        layout = fm.metadata.get("n_users", m.n_users), fm.metadata.get("n_items", m.n_items)
        if layout != (m.n_users, m.n_items) or (index is not None and index.ntotal != m.n_items):
            raise ModelFormatError(
                f"{self.path}: the saved model or k-NN index does not match the run's id mappings "
                f"({m.n_users} customers x {m.n_items} videos); {self._fix}"
            )
        with self._reading(self.path / "models" / name / "config.json"):
            features = self.user_features_for(fm)
        data = self.path / "data"
        histories = Histories.load(data, m.n_items) if (data / "histories.npz").is_file() else None
        return Recommender(fm, m, self.seen, item_popularity=self.popularity, index=index, knn_params=cfg.knn,
                           user_features=features, histories=histories)  # fmt: skip

    def __repr__(self) -> str:
        return f"SavedRun({str(self.path)!r}, run_id={self.info.get('run_id')!r})"
