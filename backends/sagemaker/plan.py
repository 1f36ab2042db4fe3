"""What the SageMaker backend sends to AWS, described (and checked) before it is sent.

Every step is first built as a :class:`PlanEntry` holding a readable summary and the *exact* API
request: a real run sends ``entry.request`` as it is, a dry run only records the entry. Every
SageMaker request is checked against botocore's service model (:func:`request_problems`:
botocore's ``ParamValidator`` plus the enums, maximums and patterns it leaves to the service),
so an invalid instance type or KMS key fails before the first paid call.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import ConfigError

from .config import SageMakerConfig

RECORDIO_CONTENT_TYPE = "application/x-recordio-protobuf"
#: The k-NN batch-transform output format that carries the neighbours (``labels``, ``distances``).
KNN_ACCEPT = "application/jsonlines; verbose=true"
JSON_CONTENT_TYPE = "application/json"
VARIANT_NAME = "AllTraffic"
#: Transform requests of 1 MB of queries keep each k-NN response (k neighbours per query) small.
TRANSFORM_MAX_PAYLOAD_MB = 1


@dataclass
class PlanEntry:
    """One step sent to AWS: ``request`` holds the exact keyword arguments of ``api`` (for
    uploads: ``Bucket`` and ``Key``); ``image_uri`` to ``details`` are the summary shown by
    :func:`format_plan`; ``bodies`` has one ``(first row, last row + 1, bytes)`` per endpoint
    request body; ``executed`` is set once a real run has sent the request."""

    kind: str
    name: str
    purpose: str = ""
    api: str = ""
    request: dict[str, Any] = field(default_factory=dict)
    image_uri: str | None = None
    instance_type: str | None = None
    instance_count: int | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    output_path: str | None = None
    content_type: str | None = None
    accept: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    bodies: list[tuple[int, int, int]] = field(default_factory=list)
    executed: bool = False


@dataclass
class Channel:
    """A training channel: its S3 prefix and how many objects are under it; several are shards,
    each instance reading its own."""

    name: str
    uri: str
    objects: int = 1

    @property
    def distribution(self) -> str:
        return "ShardedByS3Key" if self.objects > 1 else "FullyReplicated"


def s3_uri(bucket: str, *parts: str) -> str:
    """``s3://bucket/part1/part2`` (empty parts and extra slashes dropped; a trailing slash of
    the last part is kept)."""
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    tail = "/" if parts and parts[-1].endswith("/") else ""
    return f"s3://{bucket}/" + "/".join(cleaned) + (tail if cleaned else "")


def _finish(request: dict[str, Any], cfg: SageMakerConfig, *, vpc: bool = False) -> dict[str, Any]:
    """Add what every request of this configuration carries: the VPC (jobs and models) and tags."""
    if vpc and cfg.subnets:
        request["VpcConfig"] = {"Subnets": list(cfg.subnets), "SecurityGroupIds": list(cfg.security_group_ids)}
    if cfg.tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in cfg.tags.items()]
    return request


def _kms(part: dict[str, Any], key: str, value: str | None) -> dict[str, Any]:
    return {**part, key: value} if value else part


# ---- builders ---------------------------------------------------------------------------------
def upload_entry(uri: str, *, purpose: str, content_type: str, details: dict[str, Any]) -> PlanEntry:
    from sagemaker.s3_utils import parse_s3_url

    bucket, key = parse_s3_url(uri)
    return PlanEntry(kind="upload", name=uri, purpose=purpose, api="s3.upload_file",
                     request={"Bucket": bucket, "Key": key}, content_type=content_type, details=details)  # fmt: skip


def training_job_entry(
    name: str, *, purpose: str, image_uri: str, role: str, cfg: SageMakerConfig,
    hyperparameters: dict[str, str], channels: list[Channel], output_path: str,
) -> PlanEntry:  # fmt: skip
    """A ``CreateTrainingJob`` of a built-in algorithm in File mode, one channel per input, on
    the configuration's instances (spot, VPC and KMS included)."""
    resources = _kms({"InstanceType": cfg.train_instance_type, "InstanceCount": cfg.train_instance_count,
                      "VolumeSizeInGB": cfg.volume_size_gb}, "VolumeKmsKeyId", cfg.volume_kms_key)  # fmt: skip
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": cfg.runtime_seconds}
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": role,
        "HyperParameters": dict(hyperparameters),
        "InputDataConfig": [
            {"ChannelName": c.name, "ContentType": RECORDIO_CONTENT_TYPE,
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": c.uri,
                                             "S3DataDistributionType": c.distribution}}}
            for c in channels
        ],  # fmt: skip
        "OutputDataConfig": _kms({"S3OutputPath": output_path}, "KmsKeyId", cfg.output_kms_key),
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
    }
    if cfg.use_spot_instances:
        request["EnableManagedSpotTraining"] = True
        stopping["MaxWaitTimeInSeconds"] = cfg.max_wait
    details: dict[str, Any] = {
        f"{c.name} data": f"{c.objects} object{'s' if c.objects != 1 else ''}, {c.distribution}" for c in channels
    }
    details.update(model_artifact=f"{output_path.rstrip('/')}/{name}/output/model.tar.gz", role=role)
    if cfg.use_spot_instances:
        details["spot"] = f"managed spot training, waits at most {cfg.max_wait} s (no checkpoints: restarts if interrupted)"
    return PlanEntry(
        kind="training_job", name=name, purpose=purpose, api="sagemaker.create_training_job",
        request=_finish(request, cfg, vpc=True), image_uri=image_uri, instance_type=cfg.train_instance_type,
        instance_count=cfg.train_instance_count, hyperparameters=dict(hyperparameters),
        inputs={c.name: c.uri for c in channels}, output_path=output_path, content_type=RECORDIO_CONTENT_TYPE,
        details=details,
    )  # fmt: skip


def model_entry(name: str, *, purpose: str, image_uri: str, model_data_url: str, role: str,
                cfg: SageMakerConfig) -> PlanEntry:  # fmt: skip
    request = {"ModelName": name, "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url},
               "ExecutionRoleArn": role}  # fmt: skip
    return PlanEntry(kind="model", name=name, purpose=purpose, api="sagemaker.create_model",
                     request=_finish(request, cfg, vpc=True), image_uri=image_uri,
                     inputs={"model": model_data_url}, details={"role": role})  # fmt: skip


def endpoint_config_entry(name: str, *, purpose: str, model_name: str, instance_type: str, instance_count: int,
                          cfg: SageMakerConfig) -> PlanEntry:  # fmt: skip
    variant = {"VariantName": VARIANT_NAME, "ModelName": model_name, "InitialInstanceCount": instance_count,
               "InstanceType": instance_type, "InitialVariantWeight": 1.0}  # fmt: skip
    request = _kms({"EndpointConfigName": name, "ProductionVariants": [variant]}, "KmsKeyId", cfg.volume_kms_key)
    return PlanEntry(kind="endpoint_config", name=name, purpose=purpose, api="sagemaker.create_endpoint_config",
                     request=_finish(request, cfg), instance_type=instance_type, instance_count=instance_count,
                     details={"model": model_name})  # fmt: skip


def endpoint_entry(name: str, *, purpose: str, config_name: str, instance_type: str, instance_count: int,
                   keep: bool, cfg: SageMakerConfig) -> PlanEntry:  # fmt: skip
    afterwards = ("kept (keep_endpoint) - billed until you delete it" if keep
                  else "deleted with its endpoint config and model when done")  # fmt: skip
    return PlanEntry(kind="endpoint", name=name, purpose=purpose, api="sagemaker.create_endpoint",
                     request=_finish({"EndpointName": name, "EndpointConfigName": config_name}, cfg),
                     instance_type=instance_type, instance_count=instance_count,
                     details={"endpoint_config": config_name, "afterwards": afterwards})  # fmt: skip


def transform_job_entry(
    name: str, *, purpose: str, model_name: str, image_uri: str, input_uri: str, objects: int,
    output_path: str, cfg: SageMakerConfig, details: dict[str, Any],
) -> PlanEntry:  # fmt: skip
    """A ``CreateTransformJob`` splitting RecordIO input and assembling the output by line."""
    output = _kms({"S3OutputPath": output_path, "Accept": KNN_ACCEPT, "AssembleWith": "Line"}, "KmsKeyId",
                  cfg.output_kms_key)  # fmt: skip
    resources = _kms({"InstanceType": cfg.transform_instance_type, "InstanceCount": cfg.transform_instance_count},
                     "VolumeKmsKeyId", cfg.volume_kms_key)  # fmt: skip
    request = {
        "TransformJobName": name,
        "ModelName": model_name,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": TRANSFORM_MAX_PAYLOAD_MB,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                           "ContentType": RECORDIO_CONTENT_TYPE, "CompressionType": "None", "SplitType": "RecordIO"},
        "TransformOutput": output,
        "TransformResources": resources,
    }  # fmt: skip
    return PlanEntry(
        kind="transform_job", name=name, purpose=purpose, api="sagemaker.create_transform_job",
        request=_finish(request, cfg), image_uri=image_uri, instance_type=cfg.transform_instance_type,
        instance_count=cfg.transform_instance_count, inputs={"data": input_uri}, output_path=output_path,
        content_type=RECORDIO_CONTENT_TYPE, accept=KNN_ACCEPT,
        details={"model": model_name, "input objects": objects, "split_type": "RecordIO", "assemble_with": "Line",
                 "batch_strategy": "MultiRecord", "max_payload_mb": TRANSFORM_MAX_PAYLOAD_MB, **details},
    )  # fmt: skip


def invoke_entry(endpoint_name: str, *, purpose: str, details: dict[str, Any]) -> PlanEntry:
    return PlanEntry(
        kind="invoke_endpoint", name=endpoint_name, purpose=purpose, api="sagemaker-runtime.invoke_endpoint",
        request={"EndpointName": endpoint_name, "ContentType": JSON_CONTENT_TYPE, "Accept": JSON_CONTENT_TYPE},
        content_type=JSON_CONTENT_TYPE, accept=JSON_CONTENT_TYPE, details=details,
    )  # fmt: skip


def delete_entry(kind: str, name: str, *, purpose: str) -> PlanEntry:
    """Deleting a model, endpoint configuration or endpoint (``kind``) this run created."""
    key = "".join(w.capitalize() for w in kind.split("_")) + "Name"  # ModelName, EndpointConfigName, EndpointName
    return PlanEntry(kind=f"delete_{kind}", name=name, purpose=purpose, api=f"sagemaker.delete_{kind}",
                     request={key: name})  # fmt: skip


# ---- checking requests against botocore's service model -------------------------------------
@functools.lru_cache(maxsize=4)
def _service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct (e.g. \p{L}); leave it to the service
        return None


def _constraints(value: Any, shape: Any, path: str, skip: frozenset[str]) -> list[str]:
    """What ``ParamValidator`` does not check: enums, maximums and patterns."""
    meta, kind = shape.metadata, shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return [p for k, v in value.items() if k in shape.members
                for p in _constraints(v, shape.members[k], f"{path}.{k}" if path else k, skip)]  # fmt: skip
    if kind == "list" and isinstance(value, list):
        out = [f"{path} has {len(value)} items, at most {meta['max']} allowed"] if len(value) > meta.get("max", len(value)) else []
        return out + [p for i, v in enumerate(value) for p in _constraints(v, shape.member, f"{path}[{i}]", skip)]
    if kind == "map" and isinstance(value, dict):
        out = [f"{path} has {len(value)} entries, at most {meta['max']} allowed"] if len(value) > meta.get("max", len(value)) else []
        return out + [p for k, v in value.items() for p in _constraints(v, shape.value, f"{path}[{k}]", skip)]
    if kind == "string" and isinstance(value, str) and value not in skip:
        if shape.enum and value not in shape.enum:
            close = difflib.get_close_matches(value, shape.enum, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (one of {len(shape.enum)} {shape.name} values)"
            return [f"{path} {value!r} is not a valid {shape.name}{hint}"]
        if len(value) > meta.get("max", len(value)):
            return [f"{path} is {len(value)} characters long, at most {meta['max']} allowed"]
        compiled = _pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None and not compiled.fullmatch(value):
            return [f"{path} {value!r} does not match SageMaker's pattern {meta['pattern']}"]
    if kind in ("integer", "long") and isinstance(value, int) and value > meta.get("max", value):
        return [f"{path} is {value}, at most {meta['max']} allowed"]
    return []


def request_problems(api: str, request: dict[str, Any], *, skip: tuple[str, ...] = ()) -> list[str]:
    """Everything botocore's service model finds wrong with ``request`` for ``api``
    (``"sagemaker.create_training_job"``, ...); values in ``skip`` (placeholders) pass."""
    import botocore.validate

    service, _, operation = api.partition(".")
    if service not in ("sagemaker", "sagemaker-runtime"):
        return []
    model = _service_model(service)
    op = model.operation_model("".join(w.capitalize() for w in operation.split("_")))
    sent = {**request, "Body": b""} if service == "sagemaker-runtime" else request  # the body is data, not checked
    report = botocore.validate.ParamValidator().validate(sent, op.input_shape)
    found = [line for line in report.generate_report().splitlines() if line and not any(s in line for s in skip)]
    return found + _constraints(sent, op.input_shape, "", frozenset(skip))


#: Where a problem in a request comes from in the [sagemaker] section (longest match wins).
_KEYS = {
    "ResourceConfig.InstanceType": "train_instance_type", "ResourceConfig.InstanceCount": "train_instance_count",
    "ResourceConfig.VolumeSizeInGB": "volume_size_gb", "VolumeKmsKeyId": "volume_kms_key", "KmsKeyId": "output_kms_key",
    "TransformResources.InstanceType": "transform_instance_type",
    "TransformResources.InstanceCount": "transform_instance_count",
    "InstanceType": "endpoint_instance_type", "InitialInstanceCount": "endpoint_instance_count",
    "Subnets": "subnets", "SecurityGroupIds": "security_group_ids", "RoleArn": "role", "ExecutionRoleArn": "role",
    "Name": "job_name_prefix", "Tags": "tags", "MaxRuntimeInSeconds": "max_runtime_seconds",
    "MaxWaitTimeInSeconds": "max_wait", "S3": "bucket / prefix",
}  # fmt: skip


def check_config_requests(cfg: SageMakerConfig) -> None:
    """Build one request of every kind a run of ``cfg`` sends (placeholder names and data) and
    check each against botocore's service model: an invalid instance type, role, subnet or KMS
    key raises :class:`ConfigError` naming the ``[sagemaker]`` key, before anything is paid for."""
    name = f"{cfg.job_name_prefix}-fm-bin-20260101-000000-0000"
    role = cfg.role or "arn:aws:iam::123456789012:role/placeholder"
    uri = s3_uri(cfg.bucket or "placeholder-bucket", cfg.prefix, "data", name) + "/"
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/factorization-machines:1"
    probes = [
        training_job_entry(name, purpose="", image_uri=image, role=role, cfg=cfg, hyperparameters={"k": "1"},
                           channels=[Channel("train", uri)], output_path=uri),
        model_entry(name, purpose="", image_uri=image, model_data_url=uri, role=role, cfg=cfg),
        transform_job_entry(name, purpose="", model_name=name, image_uri=image, input_uri=uri, objects=1,
                            output_path=uri, cfg=cfg, details={}),
        endpoint_config_entry(name, purpose="", model_name=name, instance_type=cfg.endpoint_instance_type,
                              instance_count=cfg.endpoint_instance_count, cfg=cfg),
        endpoint_entry(name, purpose="", config_name=name, instance_type=cfg.endpoint_instance_type,
                       instance_count=cfg.endpoint_instance_count, keep=False, cfg=cfg),
    ]  # fmt: skip
    problems = []
    for entry in probes:
        keys = {**_KEYS, "KmsKeyId": "volume_kms_key"} if entry.kind == "endpoint_config" else _KEYS
        for problem in request_problems(entry.api, entry.request):
            key = max((k for k in keys if k in problem), key=len, default=None)
            where = f"[sagemaker] {keys[key]}" if key else "[sagemaker]"
            problems.append(f"{where}: {problem} ({entry.api.split('.')[1]})")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError("the SageMaker requests of this configuration would be refused: " + "; ".join(unique))


# ---- rendering --------------------------------------------------------------------------------
def plan_requests(plan: list[PlanEntry]) -> list[dict[str, Any]]:
    """Every request of ``plan`` in the order sent: ``{"api", "request", "kind", "name",
    "purpose"}``; an endpoint invocation appears once per request body, the body shown as
    ``"<rows a-b, n bytes>"`` (data, not configuration)."""
    out = []
    for e in plan:
        head = {"kind": e.kind, "name": e.name, "purpose": e.purpose, "api": e.api}
        if e.kind == "invoke_endpoint":
            out += [{**head, "request": {**e.request, "Body": body_summary(a, b, n)}} for a, b, n in e.bodies]
        else:
            out.append({**head, "request": json.loads(json.dumps(e.request, default=str))})
    return out


def body_summary(start: int, stop: int, nbytes: int) -> str:
    return f"<rows {start}-{stop - 1}, {nbytes} bytes>"


def format_plan(plan: list[PlanEntry], *, dry_run: bool | None = None) -> str:
    """Render ``plan`` as text for the CLI: one numbered block per step. ``dry_run`` adds
    "(dry run: nothing was created)" or "(executed)" to the heading."""
    note = "" if dry_run is None else (" (dry run: nothing was created)" if dry_run else " (executed)")
    lines = [f"SageMaker plan: {len(plan)} step{'s' if len(plan) != 1 else ''}{note}"]
    width = len(str(len(plan)))
    pad = " " * (width + 4)
    for i, e in enumerate(plan, start=1):
        title = "batch transform job" if e.kind == "transform_job" else e.kind.replace("_", " ")
        lines.append(f"{i:>{width}}. {title} {e.name}" + (f"  [{e.purpose}]" if e.purpose else ""))
        rows: list[tuple[str, Any]] = [("image", e.image_uri)]
        if e.instance_type:
            rows.append(("instances", f"{e.instance_count or 1} x {e.instance_type}"))
        if e.hyperparameters:
            rows.append(("hyperparameters", ", ".join(f"{k}={v}" for k, v in sorted(e.hyperparameters.items()))))
        rows += [(f"input {c}", uri) for c, uri in e.inputs.items()]
        rows += [("content type", e.content_type), ("accept", e.accept), ("output", e.output_path)]
        rows += [(k.replace("_", " "), v) for k, v in e.details.items()]
        if e.bodies:
            rows.append(("requests", f"{len(e.bodies)}, largest {max(n for _, _, n in e.bodies)} bytes"))
        rows.append(("api", e.api))
        lines += [f"{pad}{label:<22} {value}" for label, value in rows if value]
    return "\n".join(lines)
