"""The SageMaker backend's options (the ``[sagemaker]`` section, keyword arguments of
:class:`backends.sagemaker.SageMakerBackend`), validated: :meth:`SageMakerConfig.validate`
checks types and recsys's own limits; what SageMaker itself accepts (instance types, ARNs, KMS
keys, subnets, names) is checked against botocore's service model by
:func:`backends.sagemaker.plan.check_config_requests`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import ConfigError
from recsys.params import is_number

#: SageMaker's hard limit on an ``InvokeEndpoint`` request body (6 MB).
INVOKE_PAYLOAD_LIMIT = 6 * 1024 * 1024
#: Built-in algorithms that do not checkpoint (FM and k-NN do not) may wait at most an hour
#: for a managed spot training job (AWS: "Managed Spot Training", MaxWaitTimeInSeconds).
SPOT_MAX_WAIT_WITHOUT_CHECKPOINTS = 3600

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()\-/]*$")
#: Longest job_name_prefix: generated names add "-<kind>-<yyyymmdd-hhmmss>-<4 hex>" (<= 31
#: characters) and SageMaker names are limited to 63.
MAX_NAME_PREFIX = 30


@dataclass
class SageMakerConfig:
    """The SageMaker backend's options; see :class:`backends.sagemaker.SageMakerBackend`."""

    bucket: str | None = None
    prefix: str = "recsys"
    role: str | None = None
    region: str | None = None
    session: Any = None
    train_instance_type: str = "ml.m4.xlarge"  # the lab's FM and k-NN training instance
    train_instance_count: int = 1
    endpoint_instance_type: str = "ml.c5.xlarge"  # the lab's endpoint
    endpoint_instance_count: int = 1
    transform_instance_type: str = "ml.m4.xlarge"  # the lab's k-NN batch transform
    transform_instance_count: int = 1
    keep_endpoint: bool = False
    evaluate_on_endpoint: bool = False
    dry_run: bool = False
    stream_logs: bool = True
    max_payload_bytes: int = 5 * 1024 * 1024
    poll_seconds: float = 10.0
    job_name_prefix: str = "recsys"
    tags: dict[str, str] = field(default_factory=dict)
    max_runtime_seconds: int = 24 * 3600
    volume_size_gb: int = 30
    endpoint_wait_seconds: float = 1800.0
    use_spot_instances: bool = False
    max_wait: int | None = None
    subnets: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    volume_kms_key: str | None = None
    output_kms_key: str | None = None

    def validate(self) -> SageMakerConfig:
        """Check types and recsys's own limits; raise :class:`ConfigError` naming the key."""
        if self.bucket is not None:
            _check_str("bucket", self.bucket)
            if self.bucket.startswith("s3://") or "/" in self.bucket:
                raise ConfigError(
                    f"[sagemaker] bucket must be a bucket name only, got {self.bucket!r}; "
                    'put the folder in \'prefix\' (e.g. bucket = "my-bucket", prefix = "recsys")'
                )
            if not _BUCKET_RE.match(self.bucket) or ".." in self.bucket:
                raise ConfigError(f"[sagemaker] bucket {self.bucket!r} is not a valid S3 bucket name "
                                  "(3-63 lowercase letters, digits, '.' and '-')")  # fmt: skip
        _check_str("prefix", self.prefix)
        if self.prefix.startswith("s3://") or not _PREFIX_RE.match(self.prefix):
            raise ConfigError(f'[sagemaker] prefix must be an S3 key prefix such as "recsys/experiments" '
                              f"(no s3://, no spaces), got {self.prefix!r}")  # fmt: skip
        self.prefix = self.prefix.strip("/")
        for key in ("role", "region", "volume_kms_key", "output_kms_key"):
            if getattr(self, key) is not None:
                _check_str(key, getattr(self, key))
        for key in ("train_instance_type", "endpoint_instance_type", "transform_instance_type", "job_name_prefix"):
            _check_str(key, getattr(self, key))
        for key in ("train_instance_count", "endpoint_instance_count", "transform_instance_count",
                    "max_runtime_seconds", "volume_size_gb", "max_payload_bytes"):  # fmt: skip
            _check_int(key, getattr(self, key))
        if self.max_wait is not None:
            _check_int("max_wait", self.max_wait)
        if not 1024 <= self.max_payload_bytes <= INVOKE_PAYLOAD_LIMIT:
            raise ConfigError(
                f"[sagemaker] max_payload_bytes must be at least 1024 and at most {INVOKE_PAYLOAD_LIMIT} "
                f"(SageMaker's 6 MB InvokeEndpoint limit), got {self.max_payload_bytes}"
            )
        for key in ("keep_endpoint", "dry_run", "evaluate_on_endpoint", "stream_logs", "use_spot_instances"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"[sagemaker] {key} must be true or false, got {getattr(self, key)!r}")
        for key in ("poll_seconds", "endpoint_wait_seconds"):
            value = getattr(self, key)
            if not is_number(value) or value < 0:
                raise ConfigError(f"[sagemaker] {key} must be a non-negative number of seconds, got {value!r}")
        if len(self.job_name_prefix) > MAX_NAME_PREFIX:
            raise ConfigError(f"[sagemaker] job_name_prefix must be at most {MAX_NAME_PREFIX} characters (generated "
                              f"names add up to 33 more, SageMaker allows 63), got {self.job_name_prefix!r}")  # fmt: skip
        # spot training
        if self.max_wait is not None and not self.use_spot_instances:
            raise ConfigError("[sagemaker] max_wait only applies to spot training; set use_spot_instances = true or drop it")
        if self.use_spot_instances:
            if self.max_wait is None:
                self.max_wait = SPOT_MAX_WAIT_WITHOUT_CHECKPOINTS
            if self.max_wait > SPOT_MAX_WAIT_WITHOUT_CHECKPOINTS:
                raise ConfigError(
                    f"[sagemaker] max_wait is {self.max_wait} s but SageMaker limits spot jobs of built-in "
                    f"algorithms that do not checkpoint (factorization-machines and knn) to "
                    f"{SPOT_MAX_WAIT_WITHOUT_CHECKPOINTS} s; lower it or train on demand"
                )
        # VPC
        for key in ("subnets", "security_group_ids"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f'[sagemaker] {key} must be a list of ids such as ["subnet-0abc..."], got {value!r}')
            setattr(self, key, list(value))
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ConfigError(
                "[sagemaker] subnets and security_group_ids go together (SageMaker's VpcConfig needs "
                f"both); got subnets={self.subnets} and security_group_ids={self.security_group_ids}"
            )
        if not isinstance(self.tags, dict):
            raise ConfigError(
                f'[sagemaker] tags must be a table of key = "value" strings, got {type(self.tags).__name__}'
            )
        for key, value in self.tags.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or len(key) > 128 or len(value) > 256:
                raise ConfigError(
                    f"[sagemaker] tags must map non-empty strings (<= 128 characters) to strings "
                    f"(<= 256 characters); got {key!r} = {value!r}"
                )
            if key.lower().startswith("aws:"):
                raise ConfigError(f"[sagemaker] tag keys starting with 'aws:' are reserved by AWS, got {key!r}")
        if self.session is not None and not hasattr(self.session, "sagemaker_client"):
            raise ConfigError(f"[sagemaker] session must be a sagemaker.Session, got {type(self.session).__name__}")
        return self

    @property
    def runtime_seconds(self) -> int:
        """``MaxRuntimeInSeconds``: ``max_runtime_seconds``, capped at ``max_wait`` for spot jobs
        (SageMaker requires MaxWaitTimeInSeconds >= MaxRuntimeInSeconds)."""
        if self.use_spot_instances and self.max_wait is not None:
            return min(self.max_runtime_seconds, self.max_wait)
        return self.max_runtime_seconds


#: The valid keys of the ``[sagemaker]`` section (= keyword options of ``SageMakerBackend``).
SAGEMAKER_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SageMakerConfig))


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"[sagemaker] {key} must be a non-empty string, got {value!r}")


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"[sagemaker] {key} must be a positive integer, got {value!r}")
