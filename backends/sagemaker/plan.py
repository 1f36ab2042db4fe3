"""What the SageMaker backend creates on AWS, described before it is created.

Every AWS-creating step (an S3 upload, a training job, a model, an endpoint configuration, an
endpoint, a batch transform job, the endpoint invocations) is first built as a
:class:`PlanEntry` holding both a readable summary (image, instances, hyperparameters, S3 URIs,
content types) and the *exact* API request. A real run sends ``entry.request`` as it is; a dry
run only records the entry. So what :func:`format_plan` prints for a dry run is what a real run
does.

The builders here are pure functions (no AWS, no SDK); :mod:`backends.sagemaker.backend` calls
them and executes the requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PlanEntry",
    "format_plan",
    "plan_to_dicts",
    "RECORDIO_CONTENT_TYPE",
    "KNN_ACCEPT",
    "s3_uri",
    "split_s3_uri",
    "upload_entry",
    "training_job_entry",
    "model_entry",
    "endpoint_config_entry",
    "endpoint_entry",
    "transform_job_entry",
    "invoke_entry",
]

RECORDIO_CONTENT_TYPE = "application/x-recordio-protobuf"
#: The k-NN batch-transform output format that carries the neighbours (``labels``, ``distances``).
KNN_ACCEPT = "application/jsonlines; verbose=true"
JSON_CONTENT_TYPE = "application/json"
VARIANT_NAME = "AllTraffic"


@dataclass
class PlanEntry:
    """One AWS-creating step.

    Attributes
    ----------
    kind : str
        ``"upload"``, ``"training_job"``, ``"model"``, ``"endpoint_config"``, ``"endpoint"``,
        ``"transform_job"`` or ``"invoke_endpoint"``.
    name : str
        The resource name (job / model / endpoint name, or the S3 URI of an upload).
    purpose : str
        What the step is for, e.g. ``"FM regressor training"``.
    api : str
        The API call that executes it, e.g. ``"sagemaker.create_training_job"``.
    request : dict
        The exact keyword arguments of that call (for uploads: ``Bucket`` and ``Key``).
    image_uri, instance_type, instance_count, hyperparameters, inputs, output_path,
    content_type, accept
        The summary shown by :func:`format_plan` (``inputs`` maps a channel name to an S3 URI).
    details : dict
        Anything else worth showing (rows, bytes, what happens to the resource afterwards).
    executed : bool
        ``True`` once a real run has sent the request.
    """

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
    executed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return json.loads(json.dumps(self.__dict__, default=str))


def plan_to_dicts(plan: list[PlanEntry]) -> list[dict[str, Any]]:
    return [entry.to_dict() for entry in plan]


def s3_uri(bucket: str, *parts: str) -> str:
    """``s3://bucket/part1/part2`` (empty parts and extra slashes dropped; a trailing slash of
    the last part is kept)."""
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    tail = "/" if parts and parts[-1].endswith("/") else ""
    return f"s3://{bucket}/" + "/".join(cleaned) + (tail if cleaned else "")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``("bucket", "key")`` of ``s3://bucket/key``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _with_tags(request: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    if tags:
        request["Tags"] = _tags(tags)
    return request


# ---- builders ---------------------------------------------------------------------------------
def upload_entry(
    uri: str, *, purpose: str, content_type: str, details: dict[str, Any]
) -> PlanEntry:
    bucket, key = split_s3_uri(uri)
    return PlanEntry(
        kind="upload", name=uri, purpose=purpose, api="s3.upload_file",
        request={"Bucket": bucket, "Key": key}, content_type=content_type, details=details,
    )  # fmt: skip


def training_job_entry(
    name: str,
    *,
    purpose: str,
    image_uri: str,
    role: str,
    instance_type: str,
    instance_count: int,
    hyperparameters: dict[str, str],
    inputs: dict[str, str],
    content_type: str,
    output_path: str,
    max_runtime_seconds: int,
    volume_size_gb: int,
    tags: dict[str, str],
) -> PlanEntry:
    """A ``CreateTrainingJob`` of a built-in algorithm in File mode; one channel per input."""
    channels = [
        {
            "ChannelName": channel,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": content_type,
        }
        for channel, uri in inputs.items()
    ]
    request = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": role,
        "HyperParameters": dict(hyperparameters),
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": output_path},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": instance_count,
            "VolumeSizeInGB": volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_seconds},
    }
    return PlanEntry(
        kind="training_job", name=name, purpose=purpose, api="sagemaker.create_training_job",
        request=_with_tags(request, tags), image_uri=image_uri, instance_type=instance_type,
        instance_count=instance_count, hyperparameters=dict(hyperparameters), inputs=dict(inputs),
        output_path=output_path, content_type=content_type,
        details={
            "model_artifact": f"{output_path.rstrip('/')}/{name}/output/model.tar.gz",
            "role": role,
        },
    )  # fmt: skip


def model_entry(
    name: str, *, purpose: str, image_uri: str, model_data_url: str, role: str, tags: dict[str, str]
) -> PlanEntry:
    request = {
        "ModelName": name,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url},
        "ExecutionRoleArn": role,
    }
    return PlanEntry(
        kind="model", name=name, purpose=purpose, api="sagemaker.create_model",
        request=_with_tags(request, tags), image_uri=image_uri, inputs={"model": model_data_url},
        details={"role": role},
    )  # fmt: skip


def endpoint_config_entry(
    name: str, *, purpose: str, model_name: str, instance_type: str, instance_count: int,
    tags: dict[str, str],
) -> PlanEntry:  # fmt: skip
    request = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "ModelName": model_name,
                "InitialInstanceCount": instance_count,
                "InstanceType": instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
    return PlanEntry(
        kind="endpoint_config", name=name, purpose=purpose, api="sagemaker.create_endpoint_config",
        request=_with_tags(request, tags), instance_type=instance_type,
        instance_count=instance_count, details={"model": model_name},
    )  # fmt: skip


def endpoint_entry(
    name: str, *, purpose: str, config_name: str, instance_type: str, instance_count: int,
    keep: bool, tags: dict[str, str],
) -> PlanEntry:  # fmt: skip
    request = {"EndpointName": name, "EndpointConfigName": config_name}
    return PlanEntry(
        kind="endpoint", name=name, purpose=purpose, api="sagemaker.create_endpoint",
        request=_with_tags(request, tags), instance_type=instance_type,
        instance_count=instance_count,
        details={
            "endpoint_config": config_name,
            "afterwards": "kept (keep_endpoint) - billed until you delete it" if keep
            else "deleted with its endpoint config and model when done",
        },
    )  # fmt: skip


def transform_job_entry(
    name: str,
    *,
    purpose: str,
    model_name: str,
    image_uri: str,
    instance_type: str,
    instance_count: int,
    input_uri: str,
    output_path: str,
    content_type: str,
    accept: str,
    max_payload_mb: int,
    tags: dict[str, str],
    details: dict[str, Any],
) -> PlanEntry:
    """A ``CreateTransformJob`` splitting RecordIO input and assembling the output by line."""
    request = {
        "TransformJobName": name,
        "ModelName": model_name,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "CompressionType": "None",
            "SplitType": "RecordIO",
        },
        "TransformOutput": {"S3OutputPath": output_path, "Accept": accept, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }
    return PlanEntry(
        kind="transform_job", name=name, purpose=purpose, api="sagemaker.create_transform_job",
        request=_with_tags(request, tags), image_uri=image_uri, instance_type=instance_type,
        instance_count=instance_count, inputs={"data": input_uri}, output_path=output_path,
        content_type=content_type, accept=accept,
        details={
            "model": model_name, "split_type": "RecordIO", "assemble_with": "Line",
            "batch_strategy": "MultiRecord", "max_payload_mb": max_payload_mb, **details,
        },
    )  # fmt: skip


def invoke_entry(endpoint_name: str, *, purpose: str, details: dict[str, Any]) -> PlanEntry:
    return PlanEntry(
        kind="invoke_endpoint", name=endpoint_name, purpose=purpose,
        api="sagemaker-runtime.invoke_endpoint",
        request={"EndpointName": endpoint_name, "ContentType": JSON_CONTENT_TYPE, "Accept": JSON_CONTENT_TYPE},
        content_type=JSON_CONTENT_TYPE, accept=JSON_CONTENT_TYPE, details=details,
    )  # fmt: skip


# ---- rendering --------------------------------------------------------------------------------
_TITLES = {
    "upload": "upload",
    "training_job": "training job",
    "model": "model",
    "endpoint_config": "endpoint config",
    "endpoint": "endpoint",
    "transform_job": "batch transform job",
    "invoke_endpoint": "invoke endpoint",
}


def format_plan(plan: list[PlanEntry], *, dry_run: bool | None = None) -> str:
    """Render ``plan`` as text for the CLI: one numbered block per step.

    Parameters
    ----------
    plan : list of PlanEntry
        Usually ``backend.plan``.
    dry_run : bool, optional
        Adds "(dry run: nothing was created)" or "(executed)" to the heading.
    """
    note = (
        "" if dry_run is None else (" (dry run: nothing was created)" if dry_run else " (executed)")
    )
    lines = [f"SageMaker plan: {len(plan)} step{'s' if len(plan) != 1 else ''}{note}"]
    if not plan:
        return lines[0]
    width = len(str(len(plan)))
    for i, e in enumerate(plan, start=1):
        head = f"{i:>{width}}. {_TITLES.get(e.kind, e.kind)} {e.name}"
        if e.purpose:
            head += f"  [{e.purpose}]"
        lines.append(head)
        pad = " " * (width + 4)

        def row(label: str, value: Any, pad: str = pad) -> None:
            lines.append(f"{pad}{label:<22} {value}")

        if e.image_uri:
            row("image", e.image_uri)
        if e.instance_type:
            row("instances", f"{e.instance_count or 1} x {e.instance_type}")
        if e.hyperparameters:
            row(
                "hyperparameters",
                ", ".join(f"{k}={v}" for k, v in sorted(e.hyperparameters.items())),
            )
        for channel, uri in e.inputs.items():
            row(f"input {channel}", uri)
        if e.content_type:
            row("content type", e.content_type)
        if e.accept:
            row("accept", e.accept)
        if e.output_path:
            row("output", e.output_path)
        for key, value in e.details.items():
            row(key.replace("_", " "), value)
        row("api", e.api)
    return "\n".join(lines)
