"""A deployed SageMaker FM endpoint: deploying, invoking, deleting.

Requests are ``application/json``, one ``{"features": [...]}`` (dense) or ``{"data": {"features":
{"keys", "shape", "values"}}}`` (sparse) instance per row; responses ``{"predictions": [{"score",
"predicted_label"}, ...]}``. Rows are sent in as few requests as fit under ``max_payload_bytes``
(batches are cut by encoded size: SageMaker rejects bodies over 6 MB). The encoding lives in
:mod:`recsys.serving.protocol`, shared with the recsys service, which speaks the same protocol.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsys.errors import BackendError, ConfigError, DataError
from recsys.model import FittedFM
from recsys.serving.protocol import (  # re-exported: one implementation, shared with the service
    PAYLOAD_FORMATS,
    as_matrix,
    batch_payloads,
    encode_rows,
    parse_predictions,
    predictions_to_arrays,
)

from .artifacts import fm_model_tar_bytes
from .aws import AWS, aws_errors, sigterm_as_interrupt
from .plan import endpoint_config_entry, endpoint_entry, invoke_entry, model_entry, upload_entry

__all__ = ["FMEndpoint", "deploy", "encode_rows", "batch_payloads", "parse_predictions", "predictions_to_arrays",
           "PAYLOAD_FORMATS"]

logger = logging.getLogger("recsys")


class FMEndpoint:
    """A SageMaker endpoint serving a factorization machine; use it as a context manager::

        with backend.deploy(fm) as endpoint:
            predictions = endpoint.predict(X_test)

    Leaving the block deletes the endpoint, its endpoint configuration and its model (all named
    :attr:`name`) -- also on errors, Ctrl-C and SIGTERM -- unless it was deployed with
    ``keep=True``. In a dry run :meth:`predict` records the requests and returns zero scores.
    """

    def __init__(self, aws: AWS, *, name: str, fm: FittedFM, keep: bool, purpose: str) -> None:
        self._aws = aws
        self.name, self.fm, self.keep, self.purpose = name, fm, keep, purpose
        self.dry_run = aws.dry_run
        self.deleted = False
        self.requests = 0
        self.created: list[str] = []  # kinds created, in order
        self._record: dict[str, Any] | None = None
        self._started = 0.0

    def predict(self, X: Any, *, format: str = "auto", show_progress: bool = False) -> list[dict[str, Any]]:
        """Score the rows of ``X`` (CSR or 2-D array, ``feature_dim`` columns) on the endpoint: one
        ``{"score": ..., "predicted_label": ...}`` per row, in order. Raises :class:`BackendError`
        if the endpoint is deleted or a request failed (the message names the rows)."""
        if self.deleted:
            raise BackendError(f"endpoint {self.name} was deleted; deploy the model again")
        X = as_matrix(X, self.fm.feature_dim)
        aws, limit = self._aws, self._aws.config.max_payload_bytes
        entry = aws.record(invoke_entry(self.name, purpose=f"score {X.shape[0]} rows",
                                        details={"rows": X.shape[0], "format": format, "max_payload_bytes": limit}))  # fmt: skip
        if self.dry_run:
            entry.bodies = [(a, b, len(body)) for a, b, body in batch_payloads(X, max_bytes=limit, format=format)]
            zero = {"score": 0.0, "predicted_label": 0.0} if self.fm.is_classifier else {"score": 0.0}
            return [dict(zero) for _ in range(X.shape[0])]
        out: list[dict[str, Any]] = []
        runtime = aws.client("sagemaker-runtime")
        bar = tqdm(total=X.shape[0], disable=not show_progress, desc=f"endpoint {self.name}", unit="row", leave=False)
        with sigterm_as_interrupt(), bar:
            for start, stop, body in batch_payloads(X, max_bytes=limit, format=format):
                where = f"endpoint {self.name} (rows {start}-{stop - 1}, request {len(entry.bodies) + 1})"
                entry.bodies.append((start, stop, len(body)))
                with aws_errors(f"invoking {where}"):
                    raw = runtime.invoke_endpoint(**entry.request, Body=body)["Body"].read()
                out.extend(parse_predictions(raw, stop - start, where=where))
                self.requests += 1
                bar.update(stop - start)
        entry.executed = True
        return out

    def predict_arrays(self, X: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict` as ``(scores, predicted_labels)`` arrays."""
        return predictions_to_arrays(self.predict(X, **kwargs))

    def delete(self) -> None:
        """Delete the endpoint, its configuration and model now (safe to call twice); the
        cleanup finishes even if interrupted, then the interrupt propagates."""
        if self.deleted:
            return
        interrupt: BaseException | None = None
        failed = []
        for kind in reversed(list(self.created if not self.dry_run else ["model", "endpoint_config", "endpoint"])):
            try:
                self._aws.delete(kind, self.name, purpose=f"{self.purpose}: cleanup")
                if kind in self.created:
                    self.created.remove(kind)
                if kind == "endpoint" and self._record is not None:
                    self._record["lifetime_seconds"] = round(time.monotonic() - self._started, 3)
            except KeyboardInterrupt as exc:  # finish cleaning up, then re-raise
                interrupt = exc
                logger.warning("interrupted while deleting %s %s; continuing the cleanup", kind, self.name)
            except Exception as exc:  # noqa: BLE001 - report every leftover
                failed.append(kind)
                logger.error("could not delete SageMaker %s %s (%s); delete it yourself: aws sagemaker delete-%s --%s-name %s",
                             kind.replace("_", " "), self.name, exc, kind.replace("_", "-"), kind.replace("_", "-"), self.name)  # fmt: skip
        self.deleted = not self.created or self.dry_run
        if interrupt is not None:
            raise interrupt
        if failed:
            raise BackendError(f"could not delete {', '.join(f'{k} {self.name}' for k in failed)}; "
                               "see the log for the commands to delete them")  # fmt: skip

    def __enter__(self) -> FMEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep or self.deleted:
            self.delete()
        elif not self.dry_run:  # kept: nothing to delete (nor to plan deleting)
            logger.warning(
                "keeping SageMaker endpoint %s (keep_endpoint): it is billed until deleted; delete it with "
                "endpoint.delete() or `aws sagemaker delete-endpoint --endpoint-name %s` (and "
                "delete-endpoint-config / delete-model of the same name)", self.name, self.name,
            )  # fmt: skip

    def __repr__(self) -> str:
        state = "deleted" if self.deleted else ("dry run" if self.dry_run else "live")
        return f"FMEndpoint(name={self.name!r}, {state})"


def deploy(aws: AWS, fm: FittedFM, *, instance_type: str | None, instance_count: int | None, keep: bool,
           alive: list[FMEndpoint]) -> FMEndpoint:  # fmt: skip
    """Create model, endpoint configuration and endpoint for ``fm`` and wait until it is in
    service (see :meth:`SageMakerBackend.deploy`); whatever was created is deleted if that fails."""
    if not isinstance(fm, FittedFM):
        raise DataError(f"deploy needs a FittedFM, got {type(fm).__name__}")
    if fm.metadata.get("dry_run") and not aws.dry_run:
        raise ConfigError("this FittedFM is a dry-run placeholder (metadata['dry_run']); train it for real before deploying")
    itype = instance_type or aws.config.endpoint_instance_type
    icount = instance_count or aws.config.endpoint_instance_count
    if isinstance(icount, bool) or not isinstance(icount, int) or icount < 1:
        raise ConfigError(f"instance_count must be a positive integer, got {icount!r}")
    name = aws.new_name("fm-ep")
    model_uri = fm.metadata.get("model_s3_uri")  # trained by this backend: served from where the job left it
    upload = None
    if model_uri is None:
        model_uri = aws.uri("models", name, "model.tar.gz")
        upload = aws.record(upload_entry(model_uri, purpose="FM model for the endpoint", content_type="application/x-gzip",
                                         details={"from": f"a {fm.metadata.get('backend', 'local')} model, as a SageMaker FM model.tar.gz"}))  # fmt: skip
    purpose = f"FM {fm.predictor_type} endpoint"
    entries = [
        aws.record(model_entry(name, purpose=purpose, image_uri=aws.image_uri("factorization-machines"),
                               model_data_url=model_uri, role=aws.role, cfg=aws.config)),
        aws.record(endpoint_config_entry(name, purpose=purpose, model_name=name, instance_type=itype,
                                         instance_count=icount, cfg=aws.config)),
        aws.record(endpoint_entry(name, purpose=purpose, config_name=name, instance_type=itype, instance_count=icount,
                                  keep=keep, cfg=aws.config)),
    ]  # fmt: skip
    endpoint = FMEndpoint(aws, name=name, fm=fm, keep=keep, purpose=purpose)
    if aws.dry_run:
        return endpoint
    alive.append(endpoint)
    with sigterm_as_interrupt():
        try:
            if upload is not None:
                logger.warning("deploying a %s-trained FM: uploading it as a reconstructed SageMaker FM model.tar.gz",
                               fm.metadata.get("backend", "local"))  # fmt: skip
                with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
                    path = Path(tmp) / "model.tar.gz"
                    path.write_bytes(fm_model_tar_bytes(fm))
                    aws.upload(upload, path)
            for entry in entries:
                aws.send(entry)
                endpoint.created.append(entry.kind)
            endpoint._started = time.monotonic()
            endpoint._record = {"name": name, "purpose": purpose, "instance_type": itype, "instance_count": icount,
                                "lifetime_seconds": None, "kept": keep}  # fmt: skip
            aws.endpoints.append(endpoint._record)
            aws.wait_for_endpoint(name)
        except BaseException:
            endpoint.delete()
            raise
    return endpoint


def close_endpoints(alive: list[FMEndpoint]) -> list[str]:
    """Delete every endpoint in ``alive`` (leaving kept ones, with a warning); the errors."""
    errors = []
    for endpoint in list(alive):
        if endpoint.keep:
            logger.warning("leaving SageMaker endpoint %s running (keep_endpoint); it is billed until deleted", endpoint.name)
        else:
            try:
                endpoint.delete()
            except BackendError as exc:
                errors.append(str(exc))
                continue
        alive.remove(endpoint)
    return errors
