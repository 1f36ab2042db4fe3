"""The SageMaker backend: Amazon SageMaker's built-in Factorization Machines and k-NN behind
:class:`backends.base.Backend`.

It uses the SageMaker Python SDK 2.x (``pip install 'recsys[sagemaker]'``), imported only when
a :class:`SageMakerBackend` is built: its session (credentials, region, default bucket), its
image URIs, its estimators' hyperparameter descriptors and its RecordIO-protobuf writers. The
API requests are built by :mod:`.plan` (checked against botocore's service model) and sent by
:mod:`.aws`, so a dry run shows exactly the requests a real run sends. The FM is in :mod:`.fm`,
the k-NN in :mod:`.knn`, endpoints in :mod:`.endpoint`.

Interrupting (Ctrl-C, SIGTERM) while a job runs stops the job before the interrupt propagates;
endpoints are deleted on every path; :meth:`SageMakerBackend.close` deletes whatever endpoints
and models are still alive.
"""

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

__all__ = ["SageMakerBackend"]


class SageMakerBackend(Backend):
    """Trains FMs and k-NN indexes with Amazon SageMaker's built-in algorithms.

    Parameters
    ----------
    **options
        The ``[sagemaker]`` configuration keys (:data:`SAGEMAKER_OPTIONS`):

        bucket : str, optional
            S3 bucket for data, models and outputs. Default: the session's default bucket.
        prefix : str
            Key prefix for everything written (default ``"recsys"``): data under
            ``<prefix>/data/<job>/``, models under ``<prefix>/models/``, transform outputs under
            ``<prefix>/transform/<job>/``.
        role : str
            The IAM execution role ARN SageMaker runs jobs and endpoints as (required for a real run).
        region : str, optional
            AWS region; default the session's or boto3's (``AWS_DEFAULT_REGION``, ~/.aws/config).
        session : sagemaker.Session, optional
            A ready session. Default: one is created.
        train_instance_type, train_instance_count
            FM and k-NN training (default ``ml.m4.xlarge`` x 1). With N > 1 the training data
            is written as N shuffled shards, each instance reading its own (``ShardedByS3Key``).
        transform_instance_type, transform_instance_count
            k-NN batch transform (default ``ml.m4.xlarge`` x 1); the queries are split into N objects.
        endpoint_instance_type, endpoint_instance_count
            Endpoints (default ``ml.c5.xlarge`` x 1).
        evaluate_on_endpoint : bool
            After training an FM with an ``eval_set``, deploy it, score the evaluation rows on the
            endpoint and record the largest difference from the local scores (default ``False``).
        keep_endpoint : bool
            Keep endpoints after use (default ``False``: they are always deleted).
        use_spot_instances : bool, max_wait : int
            Managed spot training; ``max_wait`` seconds (default and at most 3600: neither
            algorithm checkpoints, so AWS caps the wait; ``MaxRuntimeInSeconds`` is capped at it).
        subnets, security_group_ids : list of str
            Run jobs and models inside this VPC.
        volume_kms_key, output_kms_key : str
            KMS keys for the instances' storage and for the models / transform outputs on S3.
        stream_logs : bool
            Stream each job's CloudWatch log at INFO while it runs (default ``True``).
        dry_run : bool
            Record every request in :attr:`plan` and call nothing on AWS.
        max_payload_bytes : int
            Largest endpoint request body (default 5 MB; SageMaker's limit is 6 MB).
        poll_seconds : float
            Seconds between status checks (botocore's waiters; default 10).
        job_name_prefix : str
            Start of every job, model and endpoint name (default ``"recsys"``).
        tags : dict of str to str
            Tags put on every job, model, endpoint config and endpoint.
        max_runtime_seconds, volume_size_gb, endpoint_wait_seconds
            Training jobs are stopped after ``max_runtime_seconds`` (default 24 h); instance
            storage (default 30 GB); how long to wait for an endpoint (default 1800 s).

    Notes
    -----
    **Dry run.** No boto3 client is created and no network call is made. ``fit_fm`` returns a
    zero :class:`~recsys.model.FittedFM` of the right shapes with ``metadata["dry_run"] =
    True``; ``build_knn`` returns an index whose searches record the transform job and return
    no neighbours; ``deploy(...).predict`` records the requests and returns zero scores. A whole
    pipeline runs through, and :meth:`plan_requests` lists every request a real run sends.
    A missing ``role`` or ``bucket`` is shown as a placeholder instead of an error.

    **Not supported remotely.** Training callbacks and the local-only FM options (``optimizer``,
    ``seed``, ``threads``, ``early_stopping_patience``) are ignored with a warning.
    """

    name = "sagemaker"
    ranking_losses = ("classifier",)
    remote = True
    supports_dry_run = True
    options_section = "sagemaker"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Validate a ``[sagemaker]`` section: keys, types, our limits, and one request of every
        kind checked against botocore's service model (instance types, ARNs, KMS keys, subnets)."""
        unknown = sorted(set(options) - set(SAGEMAKER_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown [sagemaker] option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(SAGEMAKER_OPTIONS)}"
            )
        config = SageMakerConfig(**options).validate()
        with contextlib.suppress(ImportError):  # without botocore the backend cannot be built anyway
            import botocore  # noqa: F401

            check_config_requests(config)

    def __init__(self, **options: Any) -> None:
        self.check_options(options)
        self.config = SageMakerConfig(**options).validate()
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
        """Every request, in order (:class:`~backends.sagemaker.plan.PlanEntry`), recorded in
        real runs and dry runs alike."""
        return self.aws.plan

    @property
    def session(self) -> Any:
        return self.aws.session

    def image_uri(self, algorithm: str) -> str:
        """The ECR image of ``"factorization-machines"`` or ``"knn"`` in this region."""
        return self.aws.image_uri(algorithm, "1")

    def format_plan(self) -> str:
        return format_plan(self.plan, dry_run=self.dry_run)

    def plan_requests(self) -> list[dict[str, Any]]:
        return plan_requests(self.plan)

    # ---- the contract --------------------------------------------------------------------
    def fit_fm(self, X: sp.csr_matrix, y: np.ndarray, params: FMParams, *,
               eval_set: tuple[sp.csr_matrix, np.ndarray] | None = None,
               options: TrainOptions | None = None) -> FittedFM:  # fmt: skip
        """Train SageMaker's ``factorization-machines`` on ``X, y``.

        ``eval_set = (X_eval, y_eval)`` becomes the ``test`` channel (SageMaker reports test
        metrics on it: ``metadata["final_metrics"]``) and, with ``evaluate_on_endpoint``, is
        scored on an endpoint of the trained model. The model is downloaded and read as soon as
        the job ends, so a surprise stops the run before the next paid job.

        Returns a :class:`FittedFM` whose ``metadata`` holds ``backend="sagemaker"``,
        ``training_job_name``, ``model_s3_uri``, ``image_uri``, the instances, the
        hyperparameters sent, ``final_metrics``, the billed seconds and then the caller's
        ``options.metadata``. Raises :class:`DataError` for bad input (before anything is sent),
        :class:`BackendError` when an AWS call or the job failed (with its ``FailureReason``).
        """
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
        """Deploy ``fm`` to a real-time endpoint; use the result as a context manager.

        A model trained by this backend is served from its ``model_s3_uri``; any other
        :class:`FittedFM` is first uploaded as a SageMaker FM ``model.tar.gz`` (whose
        ``symbol.json`` / ``meta.json`` are a reconstruction). ``instance_type`` /
        ``instance_count`` default to ``endpoint_instance_type`` / ``endpoint_instance_count``;
        ``keep`` to ``keep_endpoint``. The endpoint, its configuration and model are deleted when
        the ``with`` block ends (also on errors, Ctrl-C and SIGTERM), by ``delete()`` or by
        :meth:`close` -- unless kept. Whatever was created is deleted if deploying fails.
        """
        if not self._atexit and not self.dry_run:
            atexit.register(self._cleanup_at_exit)
            self._atexit = True
        return _endpoint.deploy(self.aws, fm, instance_type=instance_type, instance_count=instance_count,
                                keep=self.config.keep_endpoint if keep is None else bool(keep), alive=self._endpoints,
                                image_uri=self.image_uri("factorization-machines"))  # fmt: skip

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
