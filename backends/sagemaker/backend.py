"""The SageMaker backend (see :mod:`backends.sagemaker`): requests are built by :mod:`.plan`
and sent by :mod:`.aws`, so a dry run shows exactly what a real run sends."""

from __future__ import annotations

import atexit
import contextlib
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.base import Backend, TrainOptions
from recsys.errors import BackendError, ConfigError
from recsys.model import FittedFM
from recsys.params import FMParams, KNNParams

from . import endpoint as _endpoint
from . import fm as _fm
from . import knn as _knn
from .aws import AWS
from .config import SAGEMAKER_OPTIONS, SageMakerConfig
from .plan import check_config_requests, format_plan, plan_requests


class SageMakerBackend(Backend):
    """Trains FMs and k-NN indexes with Amazon SageMaker's built-in algorithms.

    The keyword options are the ``[sagemaker]`` configuration keys (:data:`SAGEMAKER_OPTIONS`;
    defaults in :class:`~backends.sagemaker.config.SageMakerConfig`):

    * ``bucket`` (default: the session's default bucket) and ``prefix``: data goes under
      ``<prefix>/data/<job>/``, models under ``<prefix>/models/``, transform outputs under
      ``<prefix>/transform/<job>/``;
    * ``role``: the IAM execution role ARN (required for a real run); ``region``: default the
      session's or boto3's; ``session``: a ready ``sagemaker.Session``;
    * ``train_instance_type`` / ``_count`` (with N > 1 the training data is written as N
      shuffled shards, ``ShardedByS3Key``), ``transform_instance_type`` / ``_count`` (the k-NN
      queries are split into N objects), ``endpoint_instance_type`` / ``_count``;
    * ``evaluate_on_endpoint``: after training an FM with an ``eval_set``, score it on an
      endpoint and record the largest difference from the local scores; ``keep_endpoint``:
      keep endpoints after use (default: always deleted);
    * ``use_spot_instances``, ``max_wait`` (at most 3600 s: neither algorithm checkpoints);
      ``subnets``, ``security_group_ids`` (a VPC); ``volume_kms_key``, ``output_kms_key``;
    * ``stream_logs`` (each job's CloudWatch log at INFO), ``dry_run``, ``max_payload_bytes``
      (largest endpoint request; SageMaker's limit is 6 MB), ``poll_seconds``,
      ``job_name_prefix``, ``tags`` (on every job, model, endpoint config and endpoint),
      ``max_runtime_seconds``, ``volume_size_gb``, ``endpoint_wait_seconds``.

    **Dry run.** No boto3 client is created and no network call is made: ``fit_fm`` returns a
    zero :class:`~recsys.model.FittedFM` of the right shapes with ``metadata["dry_run"] =
    True``, ``build_knn`` an index whose searches record the transform job and return no
    neighbours, ``deploy(...).predict`` zero scores; :meth:`plan_requests` lists every request a
    real run sends. A missing ``role`` or ``bucket`` is shown as a placeholder.

    Training callbacks and the local-only FM options (``optimizer``, ``seed``, ``threads``,
    ``early_stopping_patience``) are ignored with a warning.
    """

    name = "sagemaker"
    remote = True
    supports_dry_run = True
    options_section = "sagemaker"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> SageMakerConfig:
        """Validate a ``[sagemaker]`` section: keys, types, our limits, and one request of every
        kind checked against botocore's service model (instance types, ARNs, KMS keys, subnets)."""
        unknown = sorted(set(options) - set(SAGEMAKER_OPTIONS), key=str)
        if unknown:
            raise ConfigError(
                f"unknown [sagemaker] option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(SAGEMAKER_OPTIONS)}"
            )
        config = SageMakerConfig(**options).validate()
        with contextlib.suppress(ImportError):  # without botocore the backend cannot be built anyway
            import botocore  # noqa: F401

            check_config_requests(config)
        return config

    def __init__(self, **options: Any) -> None:
        self.config = self.check_options(options)
        self.dry_run = self.config.dry_run
        if not self.dry_run and self.config.role is None:
            raise ConfigError(
                "[sagemaker] role is required to run on SageMaker: the IAM execution role ARN, e.g. "
                'role = "arn:aws:iam::123456789012:role/SageMakerExecutionRole" (in a SageMaker '
                "notebook, sagemaker.get_execution_role() prints it). Use dry_run = true to only "
                "see what would run."
            )
        self.aws = AWS(self.config)
        self.region = self.aws.region
        for algorithm in ("factorization-machines", "knn"):  # an unknown region fails here, not after a job
            self.image_uri(algorithm)
        self._endpoints: list[_endpoint.FMEndpoint] = []
        self._indexes: list[_knn.SageMakerKNNIndex] = []
        self._atexit = False

    @property
    def plan(self) -> list:
        """Every request, in order (:class:`~backends.sagemaker.plan.PlanEntry`)."""
        return self.aws.plan

    @property
    def session(self) -> Any:
        return self.aws.session

    def image_uri(self, algorithm: str) -> str:
        """The ECR image of ``"factorization-machines"`` or ``"knn"`` in this region."""
        return self.aws.image_uri(algorithm)

    def format_plan(self) -> str:
        return format_plan(self.plan, dry_run=self.dry_run)

    def plan_requests(self) -> list[dict[str, Any]]:
        return plan_requests(self.plan)

    # ---- the contract --------------------------------------------------------------------
    def fit_fm(self, X: sp.csr_matrix, y: np.ndarray, params: FMParams, *,
               eval_set: tuple[sp.csr_matrix, np.ndarray] | None = None,
               options: TrainOptions | None = None) -> FittedFM:  # fmt: skip
        """Train SageMaker's ``factorization-machines`` on ``X, y``; ``eval_set`` becomes the
        ``test`` channel (``metadata["final_metrics"]``) and, with ``evaluate_on_endpoint``, is
        scored on an endpoint. The model is read as soon as the job ends, so a surprise stops the
        run before the next paid job. ``metadata`` records the job, ``model_s3_uri``, image,
        instances, hyperparameters, billed seconds, then ``options.metadata``. Raises
        :class:`DataError` for bad input (before anything is sent), :class:`BackendError` when an
        AWS call or the job failed (with its ``FailureReason``)."""
        return _fm.fit_fm(self.aws, X, y, params, eval_set=eval_set, options=options, deploy=self.deploy)

    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> _knn.SageMakerKNNIndex:
        """Train SageMaker's ``knn`` on ``vectors`` (one row per item) with ``k = min(params.k,
        n, 1024)``; the index searches with batch transform jobs and completes deeper answers
        from the vectors it keeps (:class:`~backends.sagemaker.knn.SageMakerKNNIndex`)."""
        index = _knn.build_knn(self.aws, vectors, params)
        self._indexes.append(index)
        return index

    def deploy(self, fm: FittedFM, *, instance_type: str | None = None, instance_count: int | None = None,
               keep: bool | None = None) -> _endpoint.FMEndpoint:  # fmt: skip
        """Deploy ``fm`` to a real-time endpoint (:class:`~backends.sagemaker.endpoint.FMEndpoint`,
        a context manager); deleted by :meth:`close` too unless kept. A model trained by this
        backend is served from its ``model_s3_uri``; any other is first uploaded as a SageMaker FM
        ``model.tar.gz`` (``symbol.json`` / ``meta.json`` are a reconstruction). The arguments
        default to ``endpoint_instance_type`` / ``endpoint_instance_count`` / ``keep_endpoint``."""
        if not self._atexit and not self.dry_run:
            atexit.register(self._cleanup_at_exit)
            self._atexit = True
        return _endpoint.deploy(self.aws, fm, instance_type=instance_type, instance_count=instance_count,
                                keep=self.config.keep_endpoint if keep is None else bool(keep), alive=self._endpoints)  # fmt: skip

    def report(self) -> dict[str, Any]:
        """``metrics.json["sagemaker"]``: every job (instances, status, billable seconds, spot
        savings), every endpoint (instances, lifetime), the endpoint checks and each k-NN
        index's search record (k sent, completed rows, which way the distances ran)."""
        if self.dry_run:
            return {}
        jobs = self.aws.jobs
        return {
            "region": self.region,
            "jobs": list(jobs),
            "billable_seconds": sum(j.get("billable_seconds") or 0 for j in jobs),
            "endpoints": list(self.aws.endpoints),
            "endpoint_checks": list(self.aws.endpoint_checks),
            "knn": [index.report() for index in self._indexes],
            "requests": sum(1 for e in self.plan if e.executed),
        }

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Delete every endpoint (unless kept) and k-NN model still alive. Safe to call twice;
        the backend stays usable."""
        errors = _endpoint.close_endpoints(self._endpoints)
        for index in self._indexes:
            try:
                index.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"k-NN model {index.job_name}: {exc}")
        if self._atexit:
            atexit.unregister(self._cleanup_at_exit)
            self._atexit = False
        if errors:
            raise BackendError("cleanup incomplete: " + "; ".join(errors))

    def _cleanup_at_exit(self) -> None:  # pragma: no cover - runs at interpreter exit
        with contextlib.suppress(BaseException):
            self.close()

    def __repr__(self) -> str:
        mode = ", dry_run=True" if self.dry_run else ""
        return f"SageMakerBackend(region={self.region!r}, prefix={self.config.prefix!r}{mode})"
