"""A deployed SageMaker FM endpoint and the JSON it speaks.

Request bodies (``content-type: application/json``), one object per row:

* dense: ``{"instances": [{"features": [x_0, ..., x_{d-1}]}, ...]}``
* sparse: ``{"instances": [{"data": {"features": {"keys": [...], "shape": [d], "values": [...]}}}, ...]}``

Response (``accept: application/json``): ``{"predictions": [{"score": s, "predicted_label": l}, ...]}``
(``predicted_label`` only for a ``binary_classifier``). Rows are sent in as few requests as fit
under ``max_payload_bytes`` -- batches are cut by encoded size, not by a fixed row count, since
SageMaker rejects bodies over 6 MB.

The encoding and decoding live in :mod:`recsys.serving.protocol` (shared with the recsys
service, which speaks the same protocol); they are re-exported here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from recsys.errors import BackendError
from recsys.model import FittedFM
from recsys.serving.protocol import (
    PAYLOAD_FORMATS,
    as_matrix,
    batch_payloads,
    encode_rows,
    parse_predictions,
    predictions_to_arrays,
)

if TYPE_CHECKING:  # pragma: no cover
    from .backend import SageMakerBackend

__all__ = [
    "FMEndpoint",
    "encode_rows",
    "batch_payloads",
    "parse_predictions",
    "predictions_to_arrays",
    "PAYLOAD_FORMATS",
]

logger = logging.getLogger("recsys")


class FMEndpoint:
    """A SageMaker endpoint serving a factorization machine. Use it as a context manager::

        with backend.deploy(fm) as endpoint:
            predictions = endpoint.predict(X_test)

    Leaving the block deletes the endpoint, its endpoint configuration and its model -- also on
    errors and Ctrl-C -- unless it was deployed with ``keep=True`` (``keep_endpoint``). In a dry
    run nothing is deployed: :meth:`predict` records the requests it would send and returns
    zero scores.

    Attributes
    ----------
    name : str
        The endpoint name (also the name of its endpoint configuration and model).
    keep : bool
    dry_run : bool
    deleted : bool
    """

    def __init__(
        self, backend: SageMakerBackend, *, name: str, fm: FittedFM, keep: bool, dry_run: bool
    ) -> None:
        self._backend = backend
        self.name = name
        self.fm = fm
        self.keep = keep
        self.dry_run = dry_run
        self.deleted = False
        self.created: list[tuple[str, str]] = []  # (kind, name) in creation order

    def predict(
        self, X: Any, *, format: str = "auto", show_progress: bool = False
    ) -> list[dict[str, Any]]:
        """Score the rows of ``X`` on the endpoint.

        Parameters
        ----------
        X : CSR matrix or 2-D array of shape (n, feature_dim)
        format : {"auto", "dense", "sparse"}
            The request format; ``"auto"`` sends sparse rows for a sparse matrix.
        show_progress : bool
            A progress bar over the rows sent.

        Returns
        -------
        list of dict
            One ``{"score": ..., "predicted_label": ...}`` per row, in order -- what the
            SDK's ``JSONDeserializer`` gives under ``"predictions"``. See
            :func:`predictions_to_arrays`.

        Raises
        ------
        BackendError
            The endpoint is deleted, or a request failed (the message names the rows).
        """
        if self.deleted:
            raise BackendError(f"endpoint {self.name} was deleted; deploy the model again")
        X = as_matrix(X, self.fm.feature_dim)
        return self._backend._predict(self, X, format=format, show_progress=show_progress)

    def predict_arrays(self, X: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict` as ``(scores, predicted_labels)`` arrays."""
        return predictions_to_arrays(self.predict(X, **kwargs))

    def delete(self) -> None:
        """Delete the endpoint, its configuration and model now (safe to call twice)."""
        if not self.deleted:
            self._backend._delete_deployment(self)

    def __enter__(self) -> FMEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep and not self.dry_run and not self.deleted:
            logger.warning(
                "keeping SageMaker endpoint %s (keep_endpoint): it is billed until deleted; delete it "
                "with endpoint.delete() or `aws sagemaker delete-endpoint --endpoint-name %s` (and "
                "delete-endpoint-config / delete-model of the same name)",
                self.name, self.name,
            )  # fmt: skip
            return
        self.delete()

    def __repr__(self) -> str:
        state = "deleted" if self.deleted else ("dry run" if self.dry_run else "live")
        return f"FMEndpoint(name={self.name!r}, {state})"


def progress(total_rows: int, show: bool, desc: str) -> Any:
    """A tqdm bar over rows (batches have different sizes)."""
    return tqdm(total=total_rows, disable=not show, desc=desc, unit="row", leave=False)
