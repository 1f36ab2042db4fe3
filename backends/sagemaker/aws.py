"""The SageMaker backend's calls to AWS: session, clients, sending planned requests, S3 transfers,
waiting for jobs and endpoints (botocore's waiters), streaming their CloudWatch logs, stopping
and deleting, and what every job cost. A dry run records the same
:class:`~backends.sagemaker.plan.PlanEntry` objects and sends nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsys.errors import BackendError, ConfigError, require

from .config import SageMakerConfig
from .plan import PlanEntry, delete_entry, request_problems, s3_uri

logger = logging.getLogger("recsys")

MISSING_ROLE = "<role: set [sagemaker] role>"


class AWS:
    """Session, clients and every call of one :class:`~backends.sagemaker.SageMakerBackend`; it
    keeps the :attr:`plan` (every request, in order, in real runs and dry runs alike) and, for
    the report, the :attr:`jobs` run, the :attr:`endpoints` created and the ``evaluate_on_endpoint``
    :attr:`endpoint_checks`."""

    def __init__(self, config: SageMakerConfig) -> None:
        self.config = config
        self.dry_run = config.dry_run
        # recsys pins SDK 2.x on purpose; its "v2 is deprecated" banner is noise for our users,
        # and so are its INFO lines about config files it did not find, unless asked for.
        os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
        config_logger = logging.getLogger("sagemaker.config")
        if config_logger.level == logging.NOTSET:
            config_logger.setLevel(logging.WARNING)
        self.sdk = require("sagemaker", "sagemaker")
        self.plan: list[PlanEntry] = []
        self.jobs: list[dict[str, Any]] = []
        self.endpoints: list[dict[str, Any]] = []
        self.endpoint_checks: list[dict[str, Any]] = []
        self._session = config.session
        self.region = self._resolve_region()
        self._bucket = config.bucket
        self._images: dict[str, str] = {}
        self._clients: dict[str, Any] = {}

    # ---- configuration ---------------------------------------------------------------------
    def _resolve_region(self) -> str:
        region = getattr(self._session, "boto_region_name", None) if self._session is not None else None
        if self.config.region is not None and region is not None and self.config.region != region:
            raise ConfigError(
                f"[sagemaker] region is {self.config.region!r} but the session given is for {region!r}; drop one of them"
            )
        region = self.config.region or region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
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
        return self.config.role or MISSING_ROLE

    @property
    def session(self) -> Any:
        """The ``sagemaker.Session`` (created on first use; never in a dry run)."""
        if self.dry_run:
            raise BackendError("internal error: a dry run must not open an AWS session")
        if self._session is None:
            boto3 = require("boto3", "sagemaker")
            self._session = self.sdk.Session(boto_session=boto3.Session(region_name=self.region))
        return self._session

    def client(self, service: str) -> Any:
        """The session's boto3 client for ``service``, made once."""
        if service not in self._clients:
            session = self.session
            known = {"sagemaker": "sagemaker_client", "sagemaker-runtime": "sagemaker_runtime_client",
                     "s3": "s3_client"}  # fmt: skip
            made = getattr(session, known.get(service, ""), None)
            self._clients[service] = made or session.boto_session.client(service, region_name=self.region)
        return self._clients[service]

    @property
    def sm(self) -> Any:
        return self.client("sagemaker")

    @property
    def bucket(self) -> str:
        """The S3 bucket (the session's default bucket when none was configured)."""
        if self._bucket is None:
            if self.dry_run:
                override = getattr(self._session, "_default_bucket_name_override", None)
                return override or f"sagemaker-{self.region}-<account-id>"
            with aws_errors("finding the default S3 bucket"):
                self._bucket = self.session.default_bucket()
        return self._bucket

    def uri(self, *parts: str) -> str:
        return s3_uri(self.bucket, self.config.prefix, *parts)

    def image_uri(self, algorithm: str) -> str:
        """The ECR image of a built-in algorithm in this region (the SDK's bundled tables; no AWS call);
        version 1, as the SDK's ``FactorizationMachines`` and ``KNN`` estimators use."""
        if algorithm not in self._images:
            from sagemaker import image_uris

            try:
                self._images[algorithm] = image_uris.retrieve(algorithm, region=self.region, version="1")
            except ValueError as exc:
                raise ConfigError(
                    f"SageMaker has no {algorithm!r} image for region {self.region!r} ({exc}); choose another [sagemaker] region"
                ) from exc
        return self._images[algorithm]

    def new_name(self, kind: str) -> str:
        """A unique SageMaker name: ``<job_name_prefix>-<kind>-<UTC time>-<4 hex>``."""
        return f"{self.config.job_name_prefix}-{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"

    # ---- recording and sending -----------------------------------------------------------
    def record(self, entry: PlanEntry) -> PlanEntry:
        """Check ``entry`` against botocore's service model and add it to :attr:`plan`."""
        problems = request_problems(entry.api, entry.request, skip=(MISSING_ROLE, self.bucket))
        if problems:
            raise ConfigError(f"SageMaker would refuse {entry.api} {entry.name}: " + "; ".join(problems))
        self.plan.append(entry)
        if self.dry_run:
            logger.info("dry run: would %s %s (%s)", entry.api, entry.name, entry.purpose)
        return entry

    def send(self, entry: PlanEntry) -> dict[str, Any]:
        """Send ``entry.request`` with the call it names."""
        service, _, operation = entry.api.partition(".")
        logger.info("%s %s", operation, entry.name)
        with aws_errors(f"{operation} {entry.name}"):
            response = getattr(self.client(service), operation)(**copy.deepcopy(entry.request))
        entry.executed = True
        return response

    def upload(self, entry: PlanEntry, path: str | os.PathLike) -> None:
        size = Path(path).stat().st_size
        entry.details["bytes"] = size
        logger.info("uploading %d bytes to %s", size, entry.name)
        with aws_errors(f"uploading to {entry.name}"):
            self.client("s3").upload_file(str(path), entry.request["Bucket"], entry.request["Key"],
                                          ExtraArgs={"ContentType": entry.content_type or "application/octet-stream"})  # fmt: skip
        entry.executed = True

    def download(self, uri: str, path: str | os.PathLike) -> None:
        from sagemaker.s3_utils import parse_s3_url

        bucket, key = parse_s3_url(uri)
        with aws_errors(f"downloading {uri}"):
            self.client("s3").download_file(bucket, key, str(path))

    def read(self, uri: str) -> bytes:
        from sagemaker.s3_utils import parse_s3_url

        bucket, key = parse_s3_url(uri)
        with aws_errors(f"reading {uri}"):
            return self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

    # ---- jobs ----------------------------------------------------------------------------
    def run_job(self, entry: PlanEntry, kind: str) -> dict[str, Any]:
        """Create a ``training`` / ``transform`` job, stream its log while waiting for it, record
        what it cost; its description if it completed, else :class:`BackendError` with its
        ``FailureReason``. Ctrl-C (or SIGTERM) stops the job before the interrupt propagates."""
        key = {f"{kind.capitalize()}JobName": entry.name}
        timeout = self.config.runtime_seconds + (self.config.max_wait or 0) + 3600
        with sigterm_as_interrupt(), self._logs(kind, entry.name):
            try:
                self.send(entry)
                self._wait(f"{kind}_job_completed_or_stopped", key, f"{kind} job {entry.name}", timeout)
            except KeyboardInterrupt:
                logger.warning("interrupted: stopping SageMaker %s job %s", kind, entry.name)
                try:
                    getattr(self.sm, f"stop_{kind}_job")(**key)
                except Exception as exc:  # noqa: BLE001 - report and let the interrupt propagate
                    logger.error("could not stop %s job %s (%s); stop it yourself: aws sagemaker stop-%s-job "
                                 "--%s-job-name %s", kind, entry.name, exc, kind, kind, entry.name)  # fmt: skip
                raise
        with aws_errors(f"checking {kind} job {entry.name}"):
            desc = getattr(self.sm, f"describe_{kind}_job")(**key)
        self.jobs.append(_job_record(entry, kind, desc))
        status = desc.get(f"{kind.capitalize()}JobStatus")
        if status != "Completed":
            raise BackendError(
                f"SageMaker {kind} job {entry.name} {str(status).lower()}: "
                f"{desc.get('FailureReason') or 'no FailureReason given'}. Its log is in CloudWatch Logs, "
                f"group {_log_group(kind)}, streams {entry.name}/*."
            )
        return desc

    def _wait(self, waiter: str, args: dict[str, str], what: str, timeout: float) -> None:
        """botocore's waiter, polling every ``poll_seconds``; a failure state returns (the caller
        describes it), running past ``timeout`` raises."""
        from botocore.exceptions import WaiterError

        delay = self.config.poll_seconds
        attempts = max(1, math.ceil(timeout / delay)) if delay > 0 else max(1, int(timeout))
        try:
            self.sm.get_waiter(waiter).wait(**args, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        except WaiterError as exc:
            if "Max attempts exceeded" in str(exc):
                raise BackendError(f"{what} is still not done after {timeout:.0f} s; giving up") from exc
            logger.debug("%s: %s", what, exc)

    def _logs(self, kind: str, job: str) -> Any:
        if not self.config.stream_logs:
            return contextlib.nullcontext()
        return _LogTail(self.client("logs"), _log_group(kind), f"{job}/", max(self.config.poll_seconds, 0.5))

    # ---- endpoints -------------------------------------------------------------------------
    def wait_for_endpoint(self, name: str) -> None:
        """Wait until the endpoint is InService; :class:`BackendError` if it failed or took too long."""
        self._wait("endpoint_in_service", {"EndpointName": name}, f"endpoint {name}", self.config.endpoint_wait_seconds)
        with aws_errors(f"checking endpoint {name}"):
            desc = self.sm.describe_endpoint(EndpointName=name)
        if desc.get("EndpointStatus") != "InService":
            raise BackendError(
                f"SageMaker endpoint {name} is {desc.get('EndpointStatus')}: "
                f"{desc.get('FailureReason') or 'no FailureReason given'}. "
                f"The log is in CloudWatch Logs, group /aws/sagemaker/Endpoints/{name}."
            )

    def delete(self, kind: str, name: str, *, purpose: str) -> None:
        """Record and send the deletion of a ``model`` / ``endpoint_config`` / ``endpoint``; a
        missing one counts as deleted, an endpoint still starting is waited for first."""
        entry = self.record(delete_entry(kind, name, purpose=purpose))
        if self.dry_run:
            return
        try:
            self.send(entry)
        except BackendError as exc:
            response = getattr(exc.__cause__, "response", None)  # a botocore ClientError's
            if not isinstance(response, dict):
                raise
            code, message = (str(response.get("Error", {}).get(k, "")) for k in ("Code", "Message"))
            if code in ("NoSuchKey", "404", "ResourceNotFound") or "Could not find" in message:
                logger.debug("%s %s is already gone", kind, name)
                entry.executed = True
                return
            if kind != "endpoint":
                raise
            # An endpoint still being created or updated cannot be deleted yet: wait, retry once.
            self._wait("endpoint_in_service", {"EndpointName": name}, f"endpoint {name} (waiting to delete it)",
                       self.config.endpoint_wait_seconds)  # fmt: skip
            self.send(entry)
        logger.info("deleted SageMaker %s %s", kind.replace("_", " "), name)


# ---- CloudWatch logs ---------------------------------------------------------------------------
class _LogTail:
    """Logs the events of a job's CloudWatch log streams (``<job>/...``) at INFO from a background
    thread while the job runs, then once more when it has ended (unless interrupted)."""

    def __init__(self, client: Any, group: str, prefix: str, interval: float) -> None:
        self.client, self.group, self.prefix, self.interval = client, group, prefix, interval
        self.tokens: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"recsys-logs-{prefix}", daemon=True)

    def __enter__(self) -> _LogTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if exc[0] is None or not issubclass(exc[0], KeyboardInterrupt):
            self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            try:
                streams = self.client.describe_log_streams(logGroupName=self.group, logStreamNamePrefix=self.prefix)
                for stream in sorted(s["logStreamName"] for s in streams.get("logStreams", [])):
                    self._read(stream)
            except Exception as exc:  # noqa: BLE001 - logs are a convenience; never fail a job on them
                logger.debug("CloudWatch logs of %s* not available: %s", self.prefix, exc)

    def _read(self, stream: str) -> None:
        while True:
            args = {"nextToken": self.tokens[stream]} if self.tokens.get(stream) else {}
            page = self.client.get_log_events(logGroupName=self.group, logStreamName=stream, startFromHead=True, **args)
            for event in page.get("events", []):
                logger.info("[%s] %s", stream, str(event.get("message", "")).rstrip())
            token = page.get("nextForwardToken")
            done = not page.get("events") or token == self.tokens.get(stream)
            self.tokens[stream] = token
            if done:
                return


# ---- helpers -----------------------------------------------------------------------------------
def _job_record(entry: PlanEntry, kind: str, desc: dict[str, Any]) -> dict[str, Any]:
    """What the report says about one job: instances, status, seconds billed, spot savings."""
    record: dict[str, Any] = {
        "name": entry.name, "kind": kind, "purpose": entry.purpose,
        "algorithm": (entry.image_uri or "").rsplit("/", 1)[-1].split(":")[0],
        "instance_type": entry.instance_type, "instance_count": entry.instance_count,
        "status": desc.get(f"{kind.capitalize()}JobStatus"),
    }  # fmt: skip
    if kind == "training":
        billable, seconds = desc.get("BillableTimeInSeconds"), desc.get("TrainingTimeInSeconds")
        record.update(billable_seconds=billable, training_seconds=seconds, spot=bool(desc.get("EnableManagedSpotTraining")))
        if record["spot"] and billable is not None and seconds:
            record["spot_savings_percent"] = round(100.0 * (1.0 - billable / seconds), 1)
    else:
        start, end = desc.get("TransformStartTime"), desc.get("TransformEndTime")
        record["seconds"] = (end - start).total_seconds() if start is not None and end is not None else None
    return record


def _log_group(kind: str) -> str:
    return f"/aws/sagemaker/{kind.capitalize()}Jobs"


_HINTS = {
    **dict.fromkeys(("AccessDenied", "AccessDeniedException"),
                    "check that your credentials and the execution role allow this (IAM policy)"),
    "ResourceLimitExceeded": "request a SageMaker quota increase or choose another instance type "
    "([sagemaker] train_instance_type / endpoint_instance_type / transform_instance_type)",
    "NoSuchBucket": "create the bucket or set [sagemaker] bucket to an existing one",
    "ExpiredToken": "your AWS credentials expired; refresh them",
    "ModelError": "the algorithm container rejected the request; check the endpoint's CloudWatch log",
}


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
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
                f"SageMaker {what} failed: {code}: {error.get('Message', exc)}" + (f" ({hint})" if hint else "")
            ) from exc
        if isinstance(exc, NoCredentialsError):
            raise BackendError(
                f"SageMaker {what} failed: no AWS credentials found; configure them (aws configure, "
                "AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            ) from exc
        if isinstance(exc, BotoCoreError):
            raise BackendError(f"SageMaker {what} failed: {exc}") from exc
        raise


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While something paid is alive, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C, so the
    job is stopped or the endpoint deleted on the way out. Leaves a handler someone else
    installed (e.g. the CLI's) alone, and does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
