"""The SageMaker backend: Amazon SageMaker's built-in Factorization Machines and k-NN behind
:class:`backends.base.Backend`.

It uses the SageMaker Python SDK 2.x (``pip install 'recsys[sagemaker]'``), imported only when
a :class:`SageMakerBackend` is built: the SDK's session (credentials, region, default bucket),
its image URIs (``sagemaker.image_uris.retrieve``, computed offline from the SDK's bundled
tables) and its RecordIO-protobuf writers. The SageMaker API requests themselves are built by
:mod:`backends.sagemaker.plan` and sent with the session's boto3 clients, so that a dry run
shows exactly the requests a real run sends.

What a call does on AWS:

* :meth:`SageMakerBackend.fit_fm` -- uploads train (and test) data as sparse RecordIO-protobuf
  with labels, runs a ``factorization-machines`` training job with the ``train`` (and ``test``)
  channel, downloads ``model.tar.gz`` and reads it into a :class:`~recsys.model.FittedFM`.
* :meth:`SageMakerBackend.build_knn` -- uploads the vectors as dense RecordIO-protobuf with
  labels 0..n-1 and trains ``knn``; :meth:`SageMakerKNNIndex.search` creates a model from it
  (once) and runs a batch transform over the queries.
* :meth:`SageMakerBackend.deploy` -- creates a model, an endpoint configuration and an
  endpoint for an FM; the returned :class:`~backends.sagemaker.endpoint.FMEndpoint` deletes all
  three when its ``with`` block ends (also on errors and Ctrl-C) unless asked to keep them.

Interrupting (Ctrl-C) while a training or transform job runs stops the job before the
``KeyboardInterrupt`` propagates. :meth:`SageMakerBackend.close` deletes whatever endpoints
and models are still alive.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.base import Backend, Callback, KNNIndex, TrainOptions
from recsys.errors import BackendError, ConfigError, DataError, require
from recsys.model import FittedFM, check_design
from recsys.params import FMParams, KNNParams

from .artifacts import fm_model_tar_bytes, parse_knn_jsonlines, read_fm_artifact
from .config import SAGEMAKER_OPTIONS, SageMakerConfig
from .endpoint import FMEndpoint, batch_payloads, parse_predictions, progress
from .knn import SageMakerKNNIndex
from .plan import (
    KNN_ACCEPT,
    RECORDIO_CONTENT_TYPE,
    PlanEntry,
    endpoint_config_entry,
    endpoint_entry,
    format_plan,
    invoke_entry,
    model_entry,
    s3_uri,
    split_s3_uri,
    training_job_entry,
    transform_job_entry,
    upload_entry,
)

__all__ = ["SageMakerBackend", "FM_ALGORITHM", "KNN_ALGORITHM"]

logger = logging.getLogger("recsys")

FM_ALGORITHM = "factorization-machines"
KNN_ALGORITHM = "knn"
_ALGORITHM_VERSION = "1"
#: Transform requests of 1 MB of queries keep each k-NN response (k neighbours per query) small.
_TRANSFORM_MAX_PAYLOAD_MB = 1
_MISSING_ROLE = "<role: set [sagemaker] role>"
_TRAINING_DONE = ("Completed", "Failed", "Stopped")
_ENDPOINT_DONE = ("InService", "Failed", "OutOfService")
_ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")
_LOCAL_ONLY_FM = ("optimizer", "seed", "threads", "early_stopping_patience")


def _import_sdk() -> Any:
    # recsys pins SDK 2.x on purpose; its "v2 is deprecated" banner is noise for our users.
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    # ... and so are its INFO lines about config files it did not find, unless asked for.
    config_logger = logging.getLogger("sagemaker.config")
    if config_logger.level == logging.NOTSET:
        config_logger.setLevel(logging.WARNING)
    return require("sagemaker", "sagemaker")


class SageMakerBackend(Backend):
    """Trains FMs and k-NN indexes with Amazon SageMaker's built-in algorithms.

    Parameters
    ----------
    **options
        The ``[sagemaker]`` configuration keys (:data:`SAGEMAKER_OPTIONS`):

        bucket : str, optional
            S3 bucket for data, models and outputs. Default: the session's default bucket
            (``sagemaker-<region>-<account>``, created by the SDK if needed).
        prefix : str
            Key prefix for everything written (default ``"recsys"``): data under
            ``<prefix>/data/<job>/``, models under ``<prefix>/models/``, transform outputs under
            ``<prefix>/transform/<job>/``.
        role : str
            The IAM execution role ARN SageMaker runs jobs and endpoints as. Required for a real
            run (in a SageMaker notebook: ``sagemaker.get_execution_role()``).
        region : str, optional
            AWS region; default the session's or boto3's (``AWS_DEFAULT_REGION``, ~/.aws/config).
        session : sagemaker.Session, optional
            A ready session (credentials, region, default bucket). Default: one is created.
        train_instance_type, train_instance_count
            For FM and k-NN training (default ``ml.m4.xlarge`` x 1).
        endpoint_instance_type, endpoint_instance_count
            For :meth:`deploy` (default ``ml.c5.xlarge`` x 1).
        transform_instance_type, transform_instance_count
            For k-NN batch transform (default ``ml.m4.xlarge`` x 1, as in the lab).
        keep_endpoint : bool
            Keep endpoints after use (default ``False``: they are always deleted).
        dry_run : bool
            Record what would be created in :attr:`plan` and call nothing on AWS (see below).
        max_payload_bytes : int
            Largest endpoint request body (default 5 MB; SageMaker's limit is 6 MB).
        poll_seconds : float
            Seconds between status checks of jobs and endpoints (default 10).
        job_name_prefix : str
            Start of every job, model and endpoint name (default ``"recsys"``).
        tags : dict of str to str
            Tags put on every job, model, endpoint config and endpoint.
        max_runtime_seconds : int
            Training jobs are stopped after this long (default 24 h).
        volume_size_gb : int
            Training instance storage (default 30).
        endpoint_wait_seconds : float
            Give up waiting for an endpoint to come up after this long (default 1800).

    Attributes
    ----------
    plan : list of PlanEntry
        Every AWS-creating step, in order, with the exact request -- recorded in real runs
        and dry runs alike. Render it with :func:`format_plan` (or :meth:`format_plan`).

    Notes
    -----
    **Dry run.** With ``dry_run=True`` no boto3 client is created and no network call is made
    (image URIs come from the SDK's bundled tables). ``fit_fm`` returns a placeholder
    :class:`~recsys.model.FittedFM` of the right shapes filled with zeros and
    ``metadata["dry_run"] = True``; ``build_knn`` returns an index whose ``search`` records the
    transform job and returns no neighbours (ids -1); ``deploy(...).predict`` records the
    requests and returns zero scores. A whole pipeline therefore runs through, and ``plan``
    then lists every training job, model, endpoint and transform job a real run would create.
    A missing ``role`` or ``bucket`` is shown as a placeholder instead of an error.

    **Not supported remotely.** Training callbacks and the local-only FM options
    (``optimizer``, ``seed``, ``threads``, ``early_stopping_patience``) have no SageMaker
    equivalent; they are ignored with a warning.
    """

    name = "sagemaker"
    ranking_losses = ("classifier",)
    remote = True
    supports_dry_run = True
    options_section = "sagemaker"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(SAGEMAKER_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown [sagemaker] option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(SAGEMAKER_OPTIONS)}"
            )

    def __init__(self, **options: Any) -> None:
        self.check_options(options)
        self.config = SageMakerConfig(**options).validate()
        self.dry_run = self.config.dry_run
        self._sdk = _import_sdk()
        if not self.dry_run and self.config.role is None:
            raise ConfigError(
                "[sagemaker] role is required to run on SageMaker: the IAM execution role ARN, e.g. "
                'role = "arn:aws:iam::123456789012:role/SageMakerExecutionRole" (in a SageMaker '
                "notebook, sagemaker.get_execution_role() prints it). Use dry_run = true to only "
                "see what would run."
            )
        self.plan: list[PlanEntry] = []
        self._session = self.config.session
        self.region = self._resolve_region()
        self._bucket: str | None = self.config.bucket
        self._images: dict[str, str] = {}
        self._endpoints: list[FMEndpoint] = []
        self._knn_indexes: list[SageMakerKNNIndex] = []
        self._atexit_registered = False

    # ---- configuration -------------------------------------------------------------------
    def _resolve_region(self) -> str:
        cfg = self.config
        region = None
        if self._session is not None:
            region = getattr(self._session, "boto_region_name", None)
            if cfg.region is not None and region is not None and cfg.region != region:
                raise ConfigError(
                    f"[sagemaker] region is {cfg.region!r} but the session given is for {region!r}; "
                    "drop one of them"
                )
        region = cfg.region or region
        if region is None:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None:
            with contextlib.suppress(Exception):  # reads ~/.aws/config; no network
                import botocore.session

                region = botocore.session.Session().get_config_variable("region")
        if not region:
            raise ConfigError(
                "[sagemaker] region is not set and no default AWS region is configured; set "
                'region = "us-east-1" (or AWS_DEFAULT_REGION)'
            )
        return str(region)

    @property
    def role(self) -> str:
        return self.config.role or _MISSING_ROLE

    @property
    def session(self) -> Any:
        """The ``sagemaker.Session`` (created on first use; never in a dry run)."""
        if self.dry_run:
            raise BackendError("internal error: a dry run must not open an AWS session")
        if self._session is None:
            boto3 = require("boto3", "sagemaker")
            boto_session = boto3.Session(region_name=self.region)
            self._session = self._sdk.Session(boto_session=boto_session)
        return self._session

    @property
    def bucket(self) -> str:
        """The S3 bucket (the session's default bucket when none was configured)."""
        if self._bucket is None:
            if self.dry_run:
                override = getattr(self._session, "_default_bucket_name_override", None)
                return override or f"sagemaker-{self.region}-<account-id>"
            with _aws_errors("finding the default S3 bucket"):
                self._bucket = self.session.default_bucket()
        return self._bucket

    @property
    def _sm(self) -> Any:
        return self.session.sagemaker_client

    @property
    def _runtime(self) -> Any:
        return self.session.sagemaker_runtime_client

    @property
    def _s3(self) -> Any:
        session = self.session
        client = getattr(session, "s3_client", None)
        if client is None:
            client = session.boto_session.client("s3", region_name=self.region)
            session.s3_client = client
        return client

    def image_uri(self, algorithm: str) -> str:
        """The ECR image of a built-in algorithm in this region (no AWS call)."""
        if algorithm not in self._images:
            from sagemaker import image_uris

            try:
                self._images[algorithm] = image_uris.retrieve(
                    algorithm, region=self.region, version=_ALGORITHM_VERSION
                )
            except ValueError as exc:
                raise ConfigError(
                    f"SageMaker has no {algorithm!r} image for region {self.region!r} ({exc}); "
                    "choose another [sagemaker] region"
                ) from exc
        return self._images[algorithm]

    def _new_name(self, kind: str) -> str:
        """A unique SageMaker name: ``<job_name_prefix>-<kind>-<UTC time>-<4 hex>``."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return f"{self.config.job_name_prefix}-{kind}-{stamp}-{secrets.token_hex(2)}"

    def _uri(self, *parts: str) -> str:
        return s3_uri(self.bucket, self.config.prefix, *parts)

    def format_plan(self) -> str:
        """:func:`format_plan` of :attr:`plan`."""
        return format_plan(self.plan, dry_run=self.dry_run)

    # ---- executing plan entries ----------------------------------------------------------
    def _record(self, entry: PlanEntry) -> PlanEntry:
        self.plan.append(entry)
        if self.dry_run:
            logger.info("dry run: would %s %s (%s)", entry.api, entry.name, entry.purpose)
        return entry

    def _call(self, entry: PlanEntry) -> dict[str, Any]:
        """Send ``entry.request`` with the API call it names."""
        service, _, operation = entry.api.partition(".")
        client = {"sagemaker": self._sm, "sagemaker-runtime": self._runtime, "s3": self._s3}[
            service
        ]
        logger.info("%s %s", operation, entry.name)
        with _aws_errors(f"{operation} {entry.name}"):
            response = getattr(client, operation)(**copy.deepcopy(entry.request))
        entry.executed = True
        return response

    def _upload(self, entry: PlanEntry, path: str | os.PathLike) -> None:
        size = Path(path).stat().st_size
        entry.details["bytes"] = size
        logger.info("uploading %d bytes to %s", size, entry.name)
        with _aws_errors(f"uploading to {entry.name}"):
            self._s3.upload_file(
                str(path), entry.request["Bucket"], entry.request["Key"],
                ExtraArgs={"ContentType": entry.content_type or "application/octet-stream"},
            )  # fmt: skip
        entry.executed = True

    def _download(self, uri: str, path: str | os.PathLike) -> None:
        bucket, key = split_s3_uri(uri)
        with _aws_errors(f"downloading {uri}"):
            self._s3.download_file(bucket, key, str(path))

    def _poll(
        self, describe: Callable[[], dict[str, Any]], status_key: str, done: Sequence[str],
        what: str, timeout: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        start, last = time.monotonic(), None
        while True:
            with _aws_errors(f"checking {what}"):
                desc = describe()
            status = desc.get(status_key)
            secondary = desc.get("SecondaryStatus")
            shown = f"{status} ({secondary})" if secondary and secondary != status else str(status)
            if shown != last:
                logger.info("%s: %s", what, shown)
                last = shown
            if status in done:
                return desc
            if timeout is not None and time.monotonic() - start > timeout:
                raise BackendError(f"{what} is still {status} after {timeout:.0f} s; giving up")
            time.sleep(self.config.poll_seconds)

    # The three waits are the seams the offline tests wrap to play the algorithms' part.
    def _wait_for_training_job(self, name: str) -> dict[str, Any]:
        """Poll until the training job ends; its description if it completed, else BackendError."""
        desc = self._poll(
            lambda: self._sm.describe_training_job(TrainingJobName=name),
            "TrainingJobStatus", _TRAINING_DONE, f"training job {name}",
        )  # fmt: skip
        status = desc.get("TrainingJobStatus")
        if status != "Completed":
            raise BackendError(
                f"SageMaker training job {name} {str(status).lower()}: "
                f"{desc.get('FailureReason') or 'no FailureReason given'}. The job's log is in CloudWatch "
                f"Logs, group /aws/sagemaker/TrainingJobs, stream {name}/algo-1-*."
            )
        return desc

    def _wait_for_transform_job(self, name: str) -> dict[str, Any]:
        """Poll until the batch transform job ends; its description if it completed."""
        desc = self._poll(
            lambda: self._sm.describe_transform_job(TransformJobName=name),
            "TransformJobStatus", _TRAINING_DONE, f"transform job {name}",
        )  # fmt: skip
        status = desc.get("TransformJobStatus")
        if status != "Completed":
            raise BackendError(
                f"SageMaker batch transform job {name} {str(status).lower()}: "
                f"{desc.get('FailureReason') or 'no FailureReason given'}. The log is in CloudWatch "
                f"Logs, group /aws/sagemaker/TransformJobs, stream {name}/*."
            )
        return desc

    def _wait_for_endpoint(self, name: str) -> dict[str, Any]:
        """Poll until the endpoint is InService; BackendError if it failed or took too long."""
        desc = self._poll(
            lambda: self._sm.describe_endpoint(EndpointName=name),
            "EndpointStatus", _ENDPOINT_DONE, f"endpoint {name}",
            timeout=self.config.endpoint_wait_seconds,
        )  # fmt: skip
        status = desc.get("EndpointStatus")
        if status != "InService":
            raise BackendError(
                f"SageMaker endpoint {name} is {status}: {desc.get('FailureReason') or 'no FailureReason given'}. "
                f"The log is in CloudWatch Logs, group /aws/sagemaker/Endpoints/{name}."
            )
        return desc

    def _stop(self, kind: str, name: str) -> None:
        operation = {"training": "stop_training_job", "transform": "stop_transform_job"}[kind]
        key = {"training": "TrainingJobName", "transform": "TransformJobName"}[kind]
        logger.warning("interrupted: stopping SageMaker %s job %s", kind, name)
        try:
            getattr(self._sm, operation)(**{key: name})
        except Exception as exc:  # noqa: BLE001 - report and let the interrupt propagate
            logger.error(
                "could not stop %s job %s (%s); stop it yourself: aws sagemaker %s --%s %s",
                kind, name, exc, operation.replace("_", "-"),
                "training-job-name" if kind == "training" else "transform-job-name", name,
            )  # fmt: skip

    def _run_job(self, entry: PlanEntry, kind: str) -> dict[str, Any]:
        """Create a training / transform job and wait for it; Ctrl-C stops the job."""
        self._call(entry)
        waiter = self._wait_for_training_job if kind == "training" else self._wait_for_transform_job
        try:
            return waiter(entry.name)
        except KeyboardInterrupt:
            self._stop(kind, entry.name)
            raise

    def _write_recordio(
        self, path: Path, X: np.ndarray | sp.csr_matrix, labels: np.ndarray | None
    ) -> None:
        from sagemaker.amazon.common import (
            write_numpy_to_dense_tensor,
            write_spmatrix_to_sparse_tensor,
        )

        with open(path, "wb") as fh:
            if sp.issparse(X):
                write_spmatrix_to_sparse_tensor(fh, X, labels)
            else:
                write_numpy_to_dense_tensor(fh, X, labels)

    # ---- factorization machines ----------------------------------------------------------
    def fit_fm(
        self,
        X: sp.csr_matrix,
        y: np.ndarray,
        params: FMParams,
        *,
        eval_set: tuple[sp.csr_matrix, np.ndarray] | None = None,
        options: TrainOptions | None = None,
    ) -> FittedFM:
        """Train SageMaker's ``factorization-machines`` on ``X, y``.

        ``eval_set = (X_eval, y_eval)`` becomes the ``test`` channel (SageMaker reports test metrics on it;
        they are in ``metadata["final_metrics"]``). The hyperparameters are
        ``params.sagemaker_hyperparameters(X.shape[1])``, the same the torch backend uses.
        Training runs remotely: ``callbacks`` cannot be called per epoch (they are ignored with
        a warning) and progress is the job's status, logged at INFO whatever ``show_progress``.

        Returns
        -------
        FittedFM
            The trained model read from the job's ``model.tar.gz``. ``metadata`` holds
            ``backend="sagemaker"``, ``training_job_name``, ``model_s3_uri``, ``image_uri``,
            the instances, the hyperparameters sent, ``final_metrics`` and then the caller's
            ``metadata`` (e.g. ``n_users`` / ``n_items``). In a dry run: zeros, with
            ``metadata["dry_run"] = True``.

        Raises
        ------
        DataError
            Bad shapes, non-finite values, classifier labels other than 0/1.
        BackendError
            An AWS call failed or the job failed (the message carries its ``FailureReason``).
        """
        options = options or TrainOptions()
        callbacks, metadata = options.callbacks, options.metadata
        X_eval, y_eval = eval_set if eval_set is not None else (None, None)
        params.validate()
        classifier = params.predictor_type == "binary_classifier"
        X, y = check_design(X, y, "training data", feature_dim=params.feature_dim, classifier=classifier)
        feature_dim = X.shape[1]
        has_eval = eval_set is not None
        if has_eval:
            X_eval, y_eval = check_design(X_eval, y_eval, "evaluation data", feature_dim=feature_dim, classifier=classifier)
        self._warn_local_only(params, callbacks)
        hyperparameters = params.sagemaker_hyperparameters(feature_dim)
        kind = "fm-bin" if classifier else "fm-reg"
        job = self._new_name(kind)
        stage = (metadata or {}).get("stage") or (metadata or {}).get("objective")
        purpose = f"FM {stage}" if stage else f"FM {params.predictor_type}"
        data = {"train": (X, y)}
        if has_eval:
            data["test"] = (X_eval, y_eval)
        uploads = {
            channel: self._record(upload_entry(
                self._uri("data", job, channel, f"{channel}.protobuf"),
                purpose=f"{purpose} {channel} channel", content_type=RECORDIO_CONTENT_TYPE,
                details={"rows": Xc.shape[0], "columns": Xc.shape[1], "nonzeros": int(Xc.nnz),
                         "format": "sparse float32 with float32 labels"},
            ))
            for channel, (Xc, _) in data.items()
        }  # fmt: skip
        image = self.image_uri(FM_ALGORITHM)
        train = self._record(training_job_entry(
            job, purpose=f"{purpose} training", image_uri=image, role=self.role,
            instance_type=self.config.train_instance_type,
            instance_count=self.config.train_instance_count,
            hyperparameters=hyperparameters,
            inputs={channel: self._uri("data", job, channel) + "/" for channel in data},
            content_type=RECORDIO_CONTENT_TYPE, output_path=self._uri("models"),
            max_runtime_seconds=self.config.max_runtime_seconds,
            volume_size_gb=self.config.volume_size_gb, tags=self.config.tags,
        ))  # fmt: skip
        meta: dict[str, Any] = {
            "backend": "sagemaker",
            "training_job_name": job,
            "model_s3_uri": train.details["model_artifact"],
            "region": self.region,
            "image_uri": image,
            "instance_type": self.config.train_instance_type,
            "instance_count": self.config.train_instance_count,
            "hyperparameters": hyperparameters,
            "train_rows": int(X.shape[0]),
        }
        config = {**params.to_dict(), "feature_dim": feature_dim}
        if self.dry_run:
            meta["dry_run"] = True
            meta.update(metadata or {})
            return FittedFM(
                w0=0.0, w=np.zeros(feature_dim, np.float32),
                V=np.zeros((feature_dim, params.num_factors), np.float32),
                predictor_type=params.predictor_type, config=config, metadata=meta,
            )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
            for channel, (Xc, yc) in data.items():
                path = Path(tmp) / f"{channel}.protobuf"
                self._write_recordio(path, Xc, yc)
                self._upload(uploads[channel], path)
            desc = self._run_job(train, "training")
            model_uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or meta[
                "model_s3_uri"
            ]
            local = Path(tmp) / "model.tar.gz"
            self._download(model_uri, local)
            artifact = read_fm_artifact(local, predictor_type=params.predictor_type)
        meta["model_s3_uri"] = model_uri
        meta["final_metrics"] = {
            m["MetricName"]: float(m["Value"])
            for m in desc.get("FinalMetricDataList") or []
            if "MetricName" in m and "Value" in m
        }
        for key in ("BillableTimeInSeconds", "TrainingTimeInSeconds"):
            if desc.get(key) is not None:
                meta[_snake(key)] = desc[key]
        meta.update(metadata or {})
        if artifact.feature_dim != feature_dim or artifact.num_factors != params.num_factors:
            raise BackendError(
                f"training job {job} produced a model of shape ({artifact.feature_dim}, "
                f"{artifact.num_factors}) but ({feature_dim}, {params.num_factors}) was asked for"
            )
        return FittedFM(
            w0=artifact.w0, w=artifact.w, V=artifact.V, predictor_type=artifact.predictor_type,
            config=config, metadata=meta,
        )  # fmt: skip

    def _warn_local_only(self, params: FMParams, callbacks: Sequence[Callback]) -> None:
        if callbacks:
            logger.warning(
                "the sagemaker backend trains remotely and cannot call per-epoch callbacks; "
                "%d callback(s) ignored (final metrics are in metadata['final_metrics'])",
                len(callbacks),
            )
        defaults = FMParams()
        changed = [n for n in _LOCAL_ONLY_FM if getattr(params, n) != getattr(defaults, n)]
        if changed:
            logger.warning(
                "FM option(s) %s only apply to the torch backend; SageMaker ignores them",
                ", ".join(changed),
            )

    # ---- endpoints -----------------------------------------------------------------------
    def deploy(
        self,
        fm: FittedFM,
        *,
        instance_type: str | None = None,
        instance_count: int | None = None,
        keep: bool | None = None,
    ) -> FMEndpoint:
        """Deploy ``fm`` to a real-time endpoint; use the result as a context manager.

        A model trained by this backend is served from its ``model_s3_uri``; any other
        :class:`FittedFM` (e.g. trained by the torch backend) is first uploaded as a SageMaker
        FM ``model.tar.gz`` (:func:`~backends.sagemaker.artifacts.fm_model_tar_bytes`; that
        archive's ``symbol.json`` / ``meta.json`` are a reconstruction, so the built-in
        container accepting it is not guaranteed).

        Parameters
        ----------
        fm : FittedFM
        instance_type, instance_count : optional
            Default ``endpoint_instance_type`` / ``endpoint_instance_count``.
        keep : bool, optional
            Keep the endpoint after the ``with`` block; default ``keep_endpoint``.

        Returns
        -------
        FMEndpoint
            Deleted (with its endpoint config and model) when its ``with`` block ends, by
            :meth:`FMEndpoint.delete` or by :meth:`close` -- unless kept.

        Raises
        ------
        BackendError
            Creating the model / endpoint config / endpoint failed, or the endpoint did not
            come up (its ``FailureReason`` is in the message). Whatever was created is deleted.
        """
        if not isinstance(fm, FittedFM):
            raise DataError(f"deploy needs a FittedFM, got {type(fm).__name__}")
        if fm.metadata.get("dry_run") and not self.dry_run:
            raise ConfigError(
                "this FittedFM is a dry-run placeholder (metadata['dry_run']); train it for real "
                "before deploying"
            )
        probe = SageMakerConfig(
            endpoint_instance_type=instance_type or self.config.endpoint_instance_type,
            endpoint_instance_count=instance_count or self.config.endpoint_instance_count,
        ).validate()
        itype, icount = probe.endpoint_instance_type, probe.endpoint_instance_count
        keep = self.config.keep_endpoint if keep is None else bool(keep)
        name = self._new_name("fm-ep")
        image = self.image_uri(FM_ALGORITHM)
        model_uri = (
            fm.metadata.get("model_s3_uri") if fm.metadata.get("backend") == "sagemaker" else None
        )
        upload = None
        if model_uri is None:
            model_uri = self._uri("models", name, "model.tar.gz")
            upload = self._record(upload_entry(
                model_uri, purpose="FM model for the endpoint", content_type="application/x-gzip",
                details={"from": f"a {fm.metadata.get('backend', 'local')} model, as a SageMaker FM model.tar.gz"},
            ))  # fmt: skip
        purpose = f"FM {fm.predictor_type} endpoint"
        entries = [
            self._record(model_entry(
                name, purpose=purpose, image_uri=image, model_data_url=model_uri, role=self.role,
                tags=self.config.tags,
            )),
            self._record(endpoint_config_entry(
                name, purpose=purpose, model_name=name, instance_type=itype,
                instance_count=icount, tags=self.config.tags,
            )),
            self._record(endpoint_entry(
                name, purpose=purpose, config_name=name, instance_type=itype,
                instance_count=icount, keep=keep, tags=self.config.tags,
            )),
        ]  # fmt: skip
        endpoint = FMEndpoint(self, name=name, fm=fm, keep=keep, dry_run=self.dry_run)
        if self.dry_run:
            return endpoint
        self._endpoints.append(endpoint)
        if not self._atexit_registered:
            atexit.register(self._cleanup_at_exit)
            self._atexit_registered = True
        try:
            if upload is not None:
                logger.warning(
                    "deploying a %s-trained FM: uploading it as a reconstructed SageMaker FM "
                    "model.tar.gz", fm.metadata.get("backend", "local"),
                )  # fmt: skip
                with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
                    path = Path(tmp) / "model.tar.gz"
                    path.write_bytes(fm_model_tar_bytes(fm))
                    self._upload(upload, path)
            for entry in entries:
                self._call(entry)
                endpoint.created.append((entry.kind, entry.name))
            self._wait_for_endpoint(name)
        except BaseException:
            endpoint.delete()
            raise
        return endpoint

    def _predict(
        self,
        endpoint: FMEndpoint,
        X: np.ndarray | sp.csr_matrix,
        *,
        format: str,
        show_progress: bool,
    ) -> list[dict[str, Any]]:
        n = X.shape[0]
        limit = self.config.max_payload_bytes
        entry = invoke_entry(
            endpoint.name, purpose=f"score {n} rows",
            details={"rows": n, "format": format, "max_payload_bytes": limit},
        )  # fmt: skip
        if self.dry_run:
            sizes = [len(body) for _, _, body in batch_payloads(X, max_bytes=limit, format=format)]
            entry.details.update(requests=len(sizes), largest_request_bytes=max(sizes, default=0))
            self._record(entry)
            zero = (
                {"score": 0.0, "predicted_label": 0.0}
                if endpoint.fm.is_classifier
                else {"score": 0.0}
            )
            return [dict(zero) for _ in range(n)]
        self._record(entry)
        out: list[dict[str, Any]] = []
        requests, largest = 0, 0
        with progress(n, show_progress, f"endpoint {endpoint.name}") as bar:
            for start, stop, body in batch_payloads(X, max_bytes=limit, format=format):
                where = (
                    f"endpoint {endpoint.name} (rows {start}-{stop - 1}, request {requests + 1})"
                )
                request = {**entry.request, "Body": body}
                with _aws_errors(f"invoking {where}"):
                    response = self._runtime.invoke_endpoint(**request)
                    raw = response["Body"].read()
                out.extend(parse_predictions(raw, stop - start, where=where))
                requests += 1
                largest = max(largest, len(body))
                bar.update(stop - start)
        entry.details.update(requests=requests, largest_request_bytes=largest)
        entry.executed = True
        return out

    def _delete_deployment(self, endpoint: FMEndpoint) -> None:
        if endpoint.deleted:
            return
        interrupt: BaseException | None = None
        failed = []
        for kind, name in reversed(list(endpoint.created)):
            try:
                self._delete(kind, name)
                endpoint.created.remove((kind, name))
            except KeyboardInterrupt as exc:  # finish cleaning up, then re-raise
                interrupt = exc
                logger.warning(
                    "interrupted while deleting %s %s; continuing the cleanup", kind, name
                )
            except Exception as exc:  # noqa: BLE001 - report every leftover
                failed.append((kind, name))
                logger.error(
                    "could not delete SageMaker %s %s (%s); delete it yourself: aws sagemaker delete-%s --%s-name %s",
                    kind.replace("_", " "), name, exc, kind.replace("_", "-"), kind.replace("_", "-"), name,
                )  # fmt: skip
        endpoint.deleted = not endpoint.created
        if endpoint.deleted and endpoint in self._endpoints:
            self._endpoints.remove(endpoint)
        if interrupt is not None:
            raise interrupt
        if failed:
            raise BackendError(
                f"could not delete {', '.join(f'{k} {n}' for k, n in failed)}; see the log for the "
                "commands to delete them"
            )

    def _delete(self, kind: str, name: str) -> None:
        """Delete one endpoint / endpoint config / model; a missing one counts as deleted."""
        operation, key = {
            "endpoint": ("delete_endpoint", "EndpointName"),
            "endpoint_config": ("delete_endpoint_config", "EndpointConfigName"),
            "model": ("delete_model", "ModelName"),
        }[kind]
        try:
            getattr(self._sm, operation)(**{key: name})
        except Exception as exc:
            if _not_found(exc):
                logger.debug("%s %s is already gone", kind, name)
                return
            if kind != "endpoint" or not _client_error(exc):
                raise
            # An endpoint still being created or updated cannot be deleted yet: wait, retry once.
            desc = self._poll(
                lambda: self._sm.describe_endpoint(EndpointName=name), "EndpointStatus",
                (*_ENDPOINT_DONE, "Deleting"), f"endpoint {name} (waiting to delete it)",
                timeout=self.config.endpoint_wait_seconds,
            )  # fmt: skip
            if desc.get("EndpointStatus") != "Deleting":
                getattr(self._sm, operation)(**{key: name})
        logger.info("deleted SageMaker %s %s", kind.replace("_", " "), name)

    # ---- k-NN ----------------------------------------------------------------------------
    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> KNNIndex:
        """Train SageMaker's ``knn`` on ``vectors`` (one row per item).

        The training data is dense RecordIO-protobuf with the row numbers 0..n-1 as labels;
        the hyperparameters are ``feature_dim``, ``k`` (capped at n), ``predictor_type``,
        ``sample_size`` (default n), ``index_type``, ``index_metric``, ``mini_batch_size`` and,
        for ``faiss.IVFFlat``, ``faiss_index_ivf_nlists``.

        Returns
        -------
        SageMakerKNNIndex
            Searched with batch transform jobs; ``search(queries, k)`` accepts ``k`` up to
            ``params.k``.
        """
        params.validate()
        V = np.asarray(vectors)
        if (
            V.ndim != 2
            or V.shape[0] == 0
            or V.shape[1] == 0
            or not np.issubdtype(V.dtype, np.number)
        ):
            raise DataError(
                f"vectors must be a non-empty 2-D numeric array (n, d), got shape {V.shape}"
            )
        V = np.ascontiguousarray(V, dtype=np.float32)
        if not np.all(np.isfinite(V)):
            raise DataError("vectors contain NaN or infinite values")
        n, d = V.shape
        if n > np.iinfo(np.int32).max:
            raise DataError(f"{n} vectors is more than SageMaker's int32 labels can number")
        sample_size = params.sample_size or n
        if sample_size < n:
            logger.warning(
                "k-NN sample_size=%d < %d vectors: SageMaker indexes only a sample, so some items "
                "can never be returned", sample_size, n,
            )  # fmt: skip
        k_model = min(params.k, n)
        hyperparameters = {
            "feature_dim": str(d),
            "k": str(k_model),
            "predictor_type": params.predictor_type,
            "sample_size": str(sample_size),
            "index_type": params.index_type,
            "index_metric": params.index_metric,
            "mini_batch_size": str(params.mini_batch_size),
        }
        if params.index_type == "faiss.IVFFlat":
            hyperparameters["faiss_index_ivf_nlists"] = str(params.faiss_index_ivf_nlists)
        job = self._new_name("knn")
        upload = self._record(upload_entry(
            self._uri("data", job, "train", "train.protobuf"), purpose="k-NN train channel",
            content_type=RECORDIO_CONTENT_TYPE,
            details={"rows": n, "columns": d, "format": "dense float32, labels = row numbers 0..n-1 (int32)"},
        ))  # fmt: skip
        train = self._record(training_job_entry(
            job, purpose=f"k-NN index ({params.index_type}, {params.index_metric})",
            image_uri=self.image_uri(KNN_ALGORITHM), role=self.role,
            instance_type=self.config.train_instance_type,
            instance_count=self.config.train_instance_count, hyperparameters=hyperparameters,
            inputs={"train": self._uri("data", job, "train") + "/"},
            content_type=RECORDIO_CONTENT_TYPE, output_path=self._uri("models"),
            max_runtime_seconds=self.config.max_runtime_seconds,
            volume_size_gb=self.config.volume_size_gb, tags=self.config.tags,
        ))  # fmt: skip
        model_uri = train.details["model_artifact"]
        if not self.dry_run:
            with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
                path = Path(tmp) / "train.protobuf"
                self._write_recordio(path, V, np.arange(n, dtype=np.dtype(int)))
                self._upload(upload, path)
            desc = self._run_job(train, "training")
            model_uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or model_uri
        index = SageMakerKNNIndex(
            self, job_name=job, model_s3_uri=model_uri, params=params, ntotal=n, dim=d,
            dry_run=self.dry_run,
        )  # fmt: skip
        self._knn_indexes.append(index)
        return index

    def _knn_transform(
        self, index: SageMakerKNNIndex, queries: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Run one batch transform of ``queries`` against ``index``; ``(labels, distances)`` as
        returned (unsorted), or ``None`` in a dry run."""
        image = self.image_uri(KNN_ALGORITHM)
        if index.model_name is None:
            entry = self._record(model_entry(
                index.job_name, purpose="k-NN model for batch transform", image_uri=image,
                model_data_url=index.model_s3_uri, role=self.role, tags=self.config.tags,
            ))  # fmt: skip
            if not self.dry_run:
                self._call(entry)
            index.model_name = index.job_name
        job = self._new_name("knn-tf")
        input_dir = self._uri("data", job, "queries") + "/"
        input_name = "queries.protobuf"
        output_path = self._uri("transform", job)
        upload = self._record(upload_entry(
            input_dir + input_name, purpose="k-NN queries", content_type=RECORDIO_CONTENT_TYPE,
            details={"rows": queries.shape[0], "columns": queries.shape[1], "format": "dense float32, no labels"},
        ))  # fmt: skip
        transform = self._record(transform_job_entry(
            job, purpose=f"k-NN search, top {index.k}", model_name=index.model_name,
            image_uri=image, instance_type=self.config.transform_instance_type,
            instance_count=self.config.transform_instance_count, input_uri=input_dir,
            output_path=output_path, content_type=RECORDIO_CONTENT_TYPE, accept=KNN_ACCEPT,
            max_payload_mb=_TRANSFORM_MAX_PAYLOAD_MB, tags=self.config.tags,
            details={"result": f"{output_path}/{input_name}.out"},
        ))  # fmt: skip
        index.transform_jobs.append(job)
        if self.dry_run:
            return None
        with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
            path = Path(tmp) / input_name
            self._write_recordio(path, queries, None)
            self._upload(upload, path)
        self._run_job(transform, "transform")
        text = self._read_transform_output(output_path, input_name, job)
        labels, distances = parse_knn_jsonlines(text, k=index.k)
        if labels.shape[0] != queries.shape[0]:
            raise BackendError(
                f"transform job {job} returned {labels.shape[0]} result lines for {queries.shape[0]} queries"
            )
        return labels, distances

    def _read_transform_output(self, output_path: str, input_name: str, job: str) -> bytes:
        """``<output_path>/<input name>.out``; else the only ``.out`` object under the path."""
        bucket, prefix = split_s3_uri(output_path)
        key = f"{prefix}/{input_name}.out"
        with _aws_errors(f"reading the output of transform job {job}"):
            try:
                return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:
                if not _not_found(exc):
                    raise
            listing = self._s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
        outs = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".out")]
        if len(outs) != 1:
            raise BackendError(
                f"transform job {job} completed but s3://{bucket}/{key} does not exist and "
                f"{len(outs)} other .out files are under {output_path}: {outs[:5]}"
            )
        with _aws_errors(f"reading the output of transform job {job}"):
            return self._s3.get_object(Bucket=bucket, Key=outs[0])["Body"].read()

    def _delete_knn_model(self, index: SageMakerKNNIndex) -> None:
        if index.model_name is None or index.dry_run:
            index.model_name = None
            return
        self._delete("model", index.model_name)
        index.model_name = None

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Delete every endpoint (unless kept) and k-NN model this backend still has alive.

        Safe to call twice; the backend stays usable.
        """
        errors = []
        for endpoint in list(self._endpoints):
            if endpoint.keep:
                logger.warning(
                    "leaving SageMaker endpoint %s running (keep_endpoint); it is billed until deleted",
                    endpoint.name,
                )
                self._endpoints.remove(endpoint)
                continue
            try:
                endpoint.delete()
            except BackendError as exc:
                errors.append(str(exc))
        for index in list(self._knn_indexes):
            try:
                self._delete_knn_model(index)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"k-NN model {index.model_name}: {exc}")
        self._knn_indexes = [i for i in self._knn_indexes if i.model_name is not None]
        if self._atexit_registered:
            atexit.unregister(self._cleanup_at_exit)
            self._atexit_registered = False
        if errors:
            raise BackendError("cleanup incomplete: " + "; ".join(errors))

    def _cleanup_at_exit(self) -> None:  # pragma: no cover - runs at interpreter exit
        with contextlib.suppress(BaseException):
            self.close()

    def __repr__(self) -> str:
        mode = ", dry_run=True" if self.dry_run else ""
        return f"SageMakerBackend(region={self.region!r}, prefix={self.config.prefix!r}{mode})"


# ---- helpers ------------------------------------------------------------------------------------
def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out.replace("_in_seconds", "_seconds")


def _client_error(exc: BaseException) -> bool:
    return hasattr(exc, "response") and isinstance(getattr(exc, "response", None), dict)


def _not_found(exc: BaseException) -> bool:
    if not _client_error(exc):
        return False
    error = exc.response.get("Error", {})  # type: ignore[attr-defined]
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    return code in ("NoSuchKey", "404", "ResourceNotFound") or "Could not find" in message


_HINTS = {
    "AccessDenied": "check that your credentials and the execution role allow this (IAM policy)",
    "AccessDeniedException": "check that your credentials and the execution role allow this (IAM policy)",
    "ResourceLimitExceeded": "request a SageMaker quota increase or choose another instance type "
    "([sagemaker] train_instance_type / endpoint_instance_type / transform_instance_type)",
    "NoSuchBucket": "create the bucket or set [sagemaker] bucket to an existing one",
    "ExpiredToken": "your AWS credentials expired; refresh them",
    "ModelError": "the algorithm container rejected the request; check the endpoint's CloudWatch log",
}


@contextlib.contextmanager
def _aws_errors(what: str) -> Iterator[None]:
    """Turn botocore errors into :class:`BackendError` naming the step and a likely fix."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "Error")
            hint = _HINTS.get(code)
            raise BackendError(
                f"SageMaker {what} failed: {code}: {error.get('Message', exc)}"
                + (f" ({hint})" if hint else "")
            ) from exc
        if isinstance(exc, NoCredentialsError):
            raise BackendError(
                f"SageMaker {what} failed: no AWS credentials found; configure them (aws configure, "
                "AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            ) from exc
        if isinstance(exc, BotoCoreError):
            raise BackendError(f"SageMaker {what} failed: {exc}") from exc
        raise
