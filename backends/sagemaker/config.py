"""The SageMaker backend's options (the ``[sagemaker]`` configuration section), validated.

Every option is a keyword argument of :class:`backends.sagemaker.SageMakerBackend`;
:data:`SAGEMAKER_OPTIONS` lists the valid keys so a configuration loader can reject typos
before anything is built.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import ConfigError

__all__ = [
    "SAGEMAKER_OPTIONS",
    "SageMakerConfig",
    "INVOKE_PAYLOAD_LIMIT",
    "DEFAULT_TRAIN_INSTANCE",
    "DEFAULT_ENDPOINT_INSTANCE",
    "DEFAULT_TRANSFORM_INSTANCE",
]

#: SageMaker's hard limit on an ``InvokeEndpoint`` request body (6 MB).
INVOKE_PAYLOAD_LIMIT = 6 * 1024 * 1024

#: The lab trains FM and k-NN on ml.m4.xlarge.
DEFAULT_TRAIN_INSTANCE = "ml.m4.xlarge"
#: Real-time FM endpoints: a compute-optimised CPU instance.
DEFAULT_ENDPOINT_INSTANCE = "ml.c5.xlarge"
#: The lab runs the k-NN batch transform on ml.m4.xlarge (the instance type it trained on).
DEFAULT_TRANSFORM_INSTANCE = "ml.m4.xlarge"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_ROLE_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]+$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_INSTANCE_RE = re.compile(r"^ml\.[a-z0-9\-]+\.[a-z0-9]+$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
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
    train_instance_type: str = DEFAULT_TRAIN_INSTANCE
    train_instance_count: int = 1
    endpoint_instance_type: str = DEFAULT_ENDPOINT_INSTANCE
    endpoint_instance_count: int = 1
    transform_instance_type: str = DEFAULT_TRANSFORM_INSTANCE
    transform_instance_count: int = 1
    keep_endpoint: bool = False
    dry_run: bool = False
    max_payload_bytes: int = 5 * 1024 * 1024
    poll_seconds: float = 10.0
    job_name_prefix: str = "recsys"
    tags: dict[str, str] = field(default_factory=dict)
    max_runtime_seconds: int = 24 * 3600
    volume_size_gb: int = 30
    endpoint_wait_seconds: float = 1800.0

    def validate(self) -> SageMakerConfig:
        """Check every option; raise :class:`ConfigError` naming the key and the fix."""
        if self.bucket is not None:
            _check_str("bucket", self.bucket)
            if self.bucket.startswith("s3://") or "/" in self.bucket:
                raise ConfigError(
                    f"[sagemaker] bucket must be a bucket name only, got {self.bucket!r}; "
                    'put the folder in \'prefix\' (e.g. bucket = "my-bucket", prefix = "recsys")'
                )
            if not _BUCKET_RE.match(self.bucket) or ".." in self.bucket:
                raise ConfigError(
                    f"[sagemaker] bucket {self.bucket!r} is not a valid S3 bucket name "
                    "(3-63 lowercase letters, digits, '.' and '-')"
                )
        _check_str("prefix", self.prefix)
        if self.prefix.startswith("s3://") or not _PREFIX_RE.match(self.prefix):
            raise ConfigError(
                f'[sagemaker] prefix must be an S3 key prefix such as "recsys/experiments" '
                f"(no s3://, no spaces), got {self.prefix!r}"
            )
        self.prefix = self.prefix.strip("/")
        if self.role is not None:
            _check_str("role", self.role)
            if not _ROLE_RE.match(self.role):
                raise ConfigError(
                    f"[sagemaker] role must be an IAM role ARN such as "
                    f'"arn:aws:iam::123456789012:role/SageMakerExecutionRole", got {self.role!r}'
                )
        if self.region is not None:
            _check_str("region", self.region)
            if not _REGION_RE.match(self.region):
                raise ConfigError(
                    f'[sagemaker] region must be an AWS region name such as "us-east-1", got {self.region!r}'
                )
        for key in ("train_instance_type", "endpoint_instance_type", "transform_instance_type"):
            value = getattr(self, key)
            _check_str(key, value)
            if not _INSTANCE_RE.match(value):
                raise ConfigError(
                    f'[sagemaker] {key} must be a SageMaker instance type such as "ml.m5.xlarge", got {value!r}'
                )
        for key in (
            "train_instance_count", "endpoint_instance_count", "transform_instance_count",
            "max_runtime_seconds", "volume_size_gb", "max_payload_bytes",
        ):  # fmt: skip
            _check_int(key, getattr(self, key))
        if self.max_payload_bytes > INVOKE_PAYLOAD_LIMIT:
            raise ConfigError(
                f"[sagemaker] max_payload_bytes must be at most {INVOKE_PAYLOAD_LIMIT} (SageMaker's "
                f"6 MB InvokeEndpoint limit), got {self.max_payload_bytes}"
            )
        if self.max_payload_bytes < 1024:
            raise ConfigError(
                f"[sagemaker] max_payload_bytes must be at least 1024, got {self.max_payload_bytes}"
            )
        for key in ("keep_endpoint", "dry_run"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(
                    f"[sagemaker] {key} must be true or false, got {getattr(self, key)!r}"
                )
        for key in ("poll_seconds", "endpoint_wait_seconds"):
            value = getattr(self, key)
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
            if not ok or value < 0:
                raise ConfigError(
                    f"[sagemaker] {key} must be a non-negative number of seconds, got {value!r}"
                )
        _check_str("job_name_prefix", self.job_name_prefix)
        if not _NAME_RE.match(self.job_name_prefix) or len(self.job_name_prefix) > MAX_NAME_PREFIX:
            raise ConfigError(
                f"[sagemaker] job_name_prefix must be 1-{MAX_NAME_PREFIX} letters, digits and inner "
                f"hyphens (SageMaker's name rule), got {self.job_name_prefix!r}"
            )
        if not isinstance(self.tags, dict):
            raise ConfigError(
                f'[sagemaker] tags must be a table of key = "value" strings, got {type(self.tags).__name__}'
            )
        for key, value in self.tags.items():
            if (
                not isinstance(key, str)
                or not isinstance(value, str)
                or not key
                or len(key) > 128
                or len(value) > 256
            ):
                raise ConfigError(
                    f"[sagemaker] tags must map non-empty strings (<= 128 characters) to strings "
                    f"(<= 256 characters); got {key!r} = {value!r}"
                )
            if key.lower().startswith("aws:"):
                raise ConfigError(
                    f"[sagemaker] tag keys starting with 'aws:' are reserved by AWS, got {key!r}"
                )
        if self.session is not None and not hasattr(self.session, "sagemaker_client"):
            raise ConfigError(
                f"[sagemaker] session must be a sagemaker.Session, got {type(self.session).__name__}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values (the session is shown by type only)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["session"] = None if self.session is None else type(self.session).__name__
        out["tags"] = dict(self.tags)
        return out


#: The valid keys of the ``[sagemaker]`` section (= keyword options of ``SageMakerBackend``).
SAGEMAKER_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SageMakerConfig))


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"[sagemaker] {key} must be a non-empty string, got {value!r}")


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"[sagemaker] {key} must be a positive integer, got {value!r}")
