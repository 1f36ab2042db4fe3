"""SageMaker's built-in Factorization Machines: hyperparameters, training data (on N > 1
instances, N shuffled RecordIO shards read ``ShardedByS3Key``, as the SDK's ``record_set()``
does; the test channel is replicated), the training job, reading its model, and
(``evaluate_on_endpoint``) checking the hosted model against the local one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.base import TrainOptions
from recsys.errors import BackendError, ConfigError, DataError
from recsys.model import FittedFM, check_design, target_range
from recsys.params import FMParams

from .artifacts import read_fm_artifact
from .aws import AWS, sigterm_as_interrupt
from .plan import RECORDIO_CONTENT_TYPE, Channel, training_job_entry, upload_entry

logger = logging.getLogger("recsys")

_LOCAL_ONLY = ("optimizer", "seed", "threads", "early_stopping_patience")


def sdk_hyperparameters(estimator: type, values: dict[str, Any]) -> dict[str, str]:
    """``values`` (None left out) typed and validated by the SDK estimator class's own
    hyperparameter descriptors and serialized as its ``hyperparameters()`` does."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        descriptor = next((vars(c)[name] for c in estimator.__mro__ if name in vars(c)), None)
        if descriptor is None:
            raise ConfigError(f"SageMaker's {estimator.__name__} has no hyperparameter {name!r}")
        try:
            typed = descriptor.data_type(value)
            descriptor.validate(typed)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} = {value!r} is not valid for SageMaker's {estimator.__name__}: {exc}") from exc
        out[name] = json.dumps(typed) if isinstance(typed, list) else str(typed)
    return out


def fm_hyperparameters(params: FMParams, feature_dim: int) -> dict[str, str]:
    """The ``factorization-machines`` hyperparameters of ``params`` for ``feature_dim`` columns."""
    from sagemaker import FactorizationMachines

    if params.solver != "sgd":
        raise ConfigError(
            f"solver={params.solver!r} runs only on the local backend (SageMaker's FM trains by SGD); "
            "use --backend torch or set solver = 'sgd'"
        )
    values = {name: getattr(params, name) for name in FMParams.SAGEMAKER_NAMES}
    return sdk_hyperparameters(FactorizationMachines, {**values, "feature_dim": feature_dim})


def shard_uploads(aws: AWS, folder: str, n_rows: int, n_shards: int, *, purpose: str,
                  details: dict[str, Any]) -> list[Any]:  # fmt: skip
    """Record the upload of ``n_rows`` split into ``n_shards`` RecordIO objects under ``folder``."""
    sizes = [len(part) for part in np.array_split(np.arange(n_rows), n_shards)]
    return [
        aws.record(upload_entry(f"{folder}part-{i:05d}.protobuf", purpose=purpose, content_type=RECORDIO_CONTENT_TYPE,
                                details={"rows": size, **details}))
        for i, size in enumerate(sizes)
    ]  # fmt: skip


def write_shards(aws: AWS, entries: list[Any], X: Any, labels: np.ndarray | None, *, shuffle: bool) -> None:
    """Write ``X`` (and ``labels``) as RecordIO-protobuf, one object per upload entry (rows
    shuffled first when ``shuffle``), and upload them."""
    from sagemaker.amazon.common import write_numpy_to_dense_tensor, write_spmatrix_to_sparse_tensor

    # a fixed seed, so a run's shards are reproducible
    order = np.random.default_rng(0).permutation(X.shape[0]) if shuffle else np.arange(X.shape[0])
    with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
        for entry, rows in zip(entries, np.array_split(order, len(entries)), strict=True):
            path = Path(tmp) / "part.protobuf"
            part = None if labels is None else labels[rows]
            with open(path, "wb") as fh:
                if sp.issparse(X):
                    write_spmatrix_to_sparse_tensor(fh, X[rows], part)
                else:
                    write_numpy_to_dense_tensor(fh, np.ascontiguousarray(X[rows]), part)
            aws.upload(entry, path)


def fit_fm(
    aws: AWS, X: Any, y: Any, params: FMParams, *, eval_set: tuple[Any, Any] | None, options: TrainOptions | None,
    deploy: Any,
) -> FittedFM:  # fmt: skip
    """Train ``factorization-machines`` on ``X, y`` (see :meth:`SageMakerBackend.fit_fm`);
    ``deploy`` is the backend's deploy, used when ``evaluate_on_endpoint`` is set."""
    options = options or TrainOptions()
    params.validate()
    classifier = params.predictor_type == "binary_classifier"
    X, y = check_design(X, y, "training data", feature_dim=params.feature_dim, classifier=classifier)
    if eval_set is not None:
        eval_set = check_design(*eval_set, "evaluation data", feature_dim=X.shape[1], classifier=classifier)
    _warn_local_only(params, options)
    n_shards = aws.config.train_instance_count
    if X.shape[0] < n_shards:
        raise DataError(
            f"{X.shape[0]} training rows cannot be split over train_instance_count = {n_shards} instances; "
            "lower [sagemaker] train_instance_count"
        )
    hyperparameters = fm_hyperparameters(params, X.shape[1])
    job = aws.new_name("fm-bin" if classifier else "fm-reg")
    stage = options.metadata.get("stage") or options.metadata.get("objective")
    purpose = f"FM {stage or params.predictor_type}"
    data = {"train": (X, y, n_shards)} | ({"test": (*eval_set, 1)} if eval_set is not None else {})
    uploads, channels = {}, []
    for name, (Xc, _, shards) in data.items():
        folder = aws.uri("data", job, name) + "/"
        uploads[name] = shard_uploads(aws, folder, Xc.shape[0], shards, purpose=f"{purpose} {name} channel",
                                      details={"columns": Xc.shape[1], "format": "sparse float32 with float32 labels"})  # fmt: skip
        channels.append(Channel(name, folder, shards))
    image = aws.image_uri("factorization-machines")
    train = aws.record(training_job_entry(job, purpose=f"{purpose} training", image_uri=image, role=aws.role,
                                          cfg=aws.config, hyperparameters=hyperparameters, channels=channels,
                                          output_path=aws.uri("models")))  # fmt: skip
    meta: dict[str, Any] = {
        "backend": "sagemaker", "training_job_name": job, "model_s3_uri": train.details["model_artifact"],
        "region": aws.region, "image_uri": image, "instance_type": aws.config.train_instance_type,
        "instance_count": n_shards, "hyperparameters": hyperparameters, "train_rows": int(X.shape[0]),
    }  # fmt: skip
    if not classifier:  # predictions are kept in this range locally (FittedFM.predict_score)
        meta["target_range"] = target_range(y)
    config = {**params.to_dict(), "feature_dim": X.shape[1]}
    if aws.dry_run:
        fm = FittedFM(w0=0.0, w=np.zeros(X.shape[1], np.float32), V=np.zeros((X.shape[1], params.num_factors), np.float32),
                      predictor_type=params.predictor_type, config=config,
                      metadata={**meta, "dry_run": True, **options.metadata})  # fmt: skip
    else:
        for name, (Xc, yc, shards) in data.items():
            write_shards(aws, uploads[name], Xc, yc, shuffle=shards > 1)
        desc = aws.run_job(train, "training")
        fm = _read_model(aws, desc, meta, params, X.shape[1], config, options)
    if aws.config.evaluate_on_endpoint and eval_set is not None:
        _evaluate_on_endpoint(aws, fm, eval_set[0], deploy)
    return fm


def _read_model(aws: AWS, desc: dict[str, Any], meta: dict[str, Any], params: FMParams, feature_dim: int,
                config: dict[str, Any], options: TrainOptions) -> FittedFM:  # fmt: skip
    """Download and read the job's model now, so a surprise stops the run before the next paid job."""
    job = meta["training_job_name"]
    uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or meta["model_s3_uri"]
    with tempfile.TemporaryDirectory(prefix="recsys-sagemaker-") as tmp:
        local = Path(tmp) / "model.tar.gz"
        aws.download(uri, local)
        artifact = read_fm_artifact(local, predictor_type=params.predictor_type)
    if artifact.feature_dim != feature_dim or artifact.num_factors != params.num_factors:
        raise BackendError(
            f"training job {job} produced a model of shape ({artifact.feature_dim}, {artifact.num_factors}) "
            f"but ({feature_dim}, {params.num_factors}) was asked for"
        )
    metrics = {m["MetricName"]: float(m["Value"]) for m in desc.get("FinalMetricDataList") or []
               if "MetricName" in m and "Value" in m}  # fmt: skip
    meta = {**meta, "model_s3_uri": uri, "final_metrics": metrics}
    for key, name in (("BillableTimeInSeconds", "billable_seconds"), ("TrainingTimeInSeconds", "training_seconds")):
        if desc.get(key) is not None:
            meta[name] = desc[key]
    return FittedFM(w0=artifact.w0, w=artifact.w, V=artifact.V, predictor_type=params.predictor_type, config=config,
                    metadata={**meta, **options.metadata})  # fmt: skip


def _evaluate_on_endpoint(aws: AWS, fm: FittedFM, X_eval: sp.csr_matrix, deploy: Any) -> None:
    """Deploy ``fm``, score ``X_eval`` on the endpoint in batches as the lab did, record the
    largest difference from the local scores of the same weights; the endpoint is deleted on
    every path (error, Ctrl-C, SIGTERM)."""
    with sigterm_as_interrupt(), deploy(fm, keep=False) as endpoint:
        predictions = endpoint.predict(X_eval)
    if aws.dry_run:
        return
    remote = np.array([float(p["score"]) for p in predictions])
    local = fm.predict_score(X_eval) if fm.is_classifier else fm.decision_function(X_eval)  # the endpoint's: unclipped
    diff = float(np.max(np.abs(remote - local))) if len(local) else 0.0
    aws.endpoint_checks.append({
        "model": fm.metadata.get("training_job_name"), "predictor_type": fm.predictor_type, "endpoint": endpoint.name,
        "rows": int(X_eval.shape[0]), "requests": endpoint.requests,
        "max_abs_difference": diff,
    })  # fmt: skip
    logger.info("endpoint %s: largest difference from the local scores %.3g over %d rows", endpoint.name, diff, len(local))


def _warn_local_only(params: FMParams, options: TrainOptions) -> None:
    if options.callbacks:
        logger.warning(
            "the sagemaker backend trains remotely and cannot call per-epoch callbacks; %d callback(s) ignored "
            "(final metrics are in metadata['final_metrics'])", len(options.callbacks),
        )  # fmt: skip
    defaults = FMParams()
    changed = [n for n in _LOCAL_ONLY if getattr(params, n) != getattr(defaults, n)]
    if changed:
        logger.warning("FM option(s) %s only apply to the torch backend; SageMaker ignores them", ", ".join(changed))
