"""Offline SageMaker for tests: a moto server plus fakes that play the built-in algorithms.

moto accepts SageMaker's control-plane calls (jobs, models, endpoint configs, endpoints), S3 and
CloudWatch Logs, reports every job ``Completed`` at once, and runs nothing. :class:`FakeSageMaker`
does the algorithms' work right after the backend creates a job or an endpoint (botocore
``after-call`` hooks on the backend's own clients; the backend then waits with botocore's
waiters as it would on AWS):

* training: it reads the channels the backend uploaded back from (moto) S3, decoding RecordIO
  with the SDK's :func:`sagemaker.amazon.common.read_records`, distributes the objects over the
  job's instances as the channel's ``S3DataDistributionType`` says, trains -- FM with the torch
  backend, k-NN by storing, per instance, ``sample_size / N`` points of what that instance
  reads (the docs' rule) -- writes ``model.tar.gz`` where ``DescribeTrainingJob`` says it is,
  writes a CloudWatch log stream and sets billable / training seconds on the job;
* batch transform: it loads the k-NN "model" through the SageMaker model's ``ModelDataUrl``,
  brute-forces the top k of every query (:func:`tests.reference.knn_brute_force`) and writes
  ``<output path>/<input object>.out`` in the verbose JSON-lines format, each line's neighbours
  in the order :attr:`FakeSageMaker.knn_order` says (``"shuffled"``, ``"ascending"`` or
  ``"descending"`` distances);
* endpoints: it loads the FM the endpoint's model points to; every ``InvokeEndpoint`` is
  decoded strictly (:func:`recsys.serving.protocol.decode_request`) and answered with that FM's
  scores (by the fake itself: moto's canned answers are keyed by the body alone).

Every request the backend sends that creates, uses, stops or deletes something is recorded in
:attr:`FakeSageMaker.sent` (``(api, params)``; S3 puts as ``Bucket`` / ``Key``). The fake reads
and writes through clients of its own, so only the backend's calls are recorded.

Faults: ``training_failures`` / ``transform_failures`` / ``endpoint_failures`` make the next job
or endpoint report ``Failed`` with that ``FailureReason``; ``invoke_failures`` raises an
exception at the n-th ``InvokeEndpoint``; ``interrupt_training`` / ``interrupt_transform`` /
``interrupt_endpoint`` raise ``KeyboardInterrupt`` while the backend waits. moto lacks
``StopTrainingJob`` / ``StopTransformJob``; the fake answers them (job ``Stopped``) and records
the names in :attr:`FakeSageMaker.stopped`.

Fixtures: ``moto_server`` (session), ``aws_env``, ``sagemaker_session``, ``sagemaker_fake``,
``sagemaker_backend`` and ``make_sagemaker_backend`` (a factory taking backend options).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import signal
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from backends.sagemaker.artifacts import fm_model_tar_bytes, read_fm_artifact
from recsys.model import FittedFM
from recsys.params import FMParams
from tests.reference import knn_brute_force

__all__ = [
    "ACCOUNT", "REGION", "BUCKET", "ROLE", "TELEMETRY_OFF", "FakeSageMaker", "read_recordio", "moto_api",
    "moto_server", "aws_env", "no_aws", "sagemaker_session", "sagemaker_fake", "sagemaker_backend", "make_sagemaker_backend",
]  # fmt: skip

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
BUCKET = "recsys-test-bucket"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/recsys-test"
#: The SDK's own defaults config with telemetry off (the SDK would otherwise call out).
TELEMETRY_OFF = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
RECORDIO = "application/x-recordio-protobuf"
KNN_ACCEPT = "application/jsonlines; verbose=true"
_FAKE_KNN_MEMBER = "fake_knn.npz"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_MUTATING = ("Create", "Delete", "Stop", "Put", "Invoke")
#: What the fake bills for a job: seconds of training, and the share billed for spot jobs.
TRAINING_SECONDS, SPOT_SHARE = 100, 0.3


def moto_api(url: str, path: str, payload: Any | None = None) -> bytes:
    """POST to moto's own API (``/moto-api/...``), never through a proxy, with a timeout."""
    data = json.dumps(payload if payload is not None else {}).encode()
    request = urllib.request.Request(url + path, data=data, method="POST", headers={"Content-Type": "application/json"})
    with _NO_PROXY.open(request, timeout=10) as response:
        return response.read()


def _split(uri: str) -> tuple[str, str]:
    assert uri.startswith("s3://"), uri
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def read_recordio(raw: bytes) -> tuple[Any, np.ndarray | None]:
    """RecordIO-protobuf records as ``(X, labels)`` with the SDK's ``read_records``: a float32
    CSR matrix when the records carry keys (sparse), else a dense float32 array."""
    from sagemaker.amazon.common import read_records

    records = read_records(io.BytesIO(raw))
    dtypes = {"float32_tensor": np.float32, "float64_tensor": np.float64, "int32_tensor": np.int32}
    rows, labels, sparse, width, label_dtype = [], [], False, 0, None
    for record in records:
        tensor = record.features["values"]
        kind = tensor.WhichOneof("value")
        values = getattr(tensor, kind)
        sparse = sparse or bool(values.keys)
        width = max(width, *values.shape) if values.shape else max(width, len(values.values))
        rows.append((np.asarray(values.keys, np.int64), np.asarray(values.values, dtypes[kind])))
        if "values" in record.label:
            label = record.label["values"]
            label_dtype = dtypes[label.WhichOneof("value")]
            labels.append(getattr(label, label.WhichOneof("value")).values[0])
    if sparse:
        indptr = np.cumsum([0] + [len(v) for _, v in rows])
        X: Any = sp.csr_matrix((np.concatenate([v for _, v in rows]), np.concatenate([k for k, _ in rows]), indptr),
                               shape=(len(rows), width))  # fmt: skip
    else:
        X = np.stack([v for _, v in rows]) if rows else np.zeros((0, 0), np.float32)
    assert not labels or len(labels) == len(rows), "every record or none carries a label"
    return X, (np.asarray(labels, label_dtype) if labels else None)


def _fm_params(hyperparameters: dict[str, str]) -> FMParams:
    unknown = set(hyperparameters) - set(FMParams.SAGEMAKER_NAMES)
    assert not unknown, f"the backend sent hyperparameters SageMaker's FM does not know: {unknown}"
    values: dict[str, Any] = {}
    for key, text in hyperparameters.items():
        assert isinstance(text, str), f"hyperparameter {key} is {type(text).__name__}, not a string"
        for cast in (int, float, str):
            try:
                values[key] = cast(text)
                break
            except ValueError:
                pass
    return FMParams(**values).validate()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def write_knn_jsonlines(labels: np.ndarray, distances: np.ndarray) -> bytes:
    """k-NN results as SageMaker's verbose JSON lines: one ``{"distances": [...], "labels": [...],
    "predicted_label": x}`` per row, labels as floats, padding (label -1) left out.
    ``predicted_label`` is the most frequent label, ties going to the one seen first (nearest) --
    the fake's choice; the real tie rule is not documented."""
    lines = []
    distances = np.asarray(distances, dtype=np.float32)
    for lab_row, dist_row in zip(np.asarray(labels), distances, strict=True):
        keep = lab_row != -1
        row: dict[str, Any] = {
            "distances": [float(x) for x in dist_row[keep]],
            "labels": [float(x) for x in lab_row[keep]],
        }
        if row["labels"]:  # the first of the most frequent
            row["predicted_label"] = Counter(row["labels"]).most_common(1)[0][0]
        lines.append(json.dumps(row) + "\n")
    return "".join(lines).encode("utf-8")


class FakeSageMaker:
    """Plays SageMaker's built-in FM and k-NN behind a moto server (see the module docstring)."""

    def __init__(self, url: str, *, seed: int = 0) -> None:
        from botocore.config import Config

        self.url = url
        config = Config(**_CLIENT_CONFIG)
        boto = _fake_boto_session()
        self.s3, self.sm, self.logs = (boto.client(s, config=config) for s in ("s3", "sagemaker", "logs"))
        self.rng = np.random.default_rng(seed)
        #: job name -> channel -> (X, y) as decoded from S3 (all objects, in key order)
        self.channels: dict[str, dict[str, tuple[Any, Any]]] = {}
        #: job name -> channel -> instance -> the object keys that instance read
        self.reads: dict[str, dict[str, list[list[str]]]] = {}
        #: FM job name -> the FittedFM the fake trained; k-NN job name -> the labels indexed
        self.trained: dict[str, FittedFM] = {}
        self.indexed: dict[str, np.ndarray] = {}
        #: transform job name -> {"queries", "ids", "scores"} (ids/scores best first)
        self.transforms: dict[str, dict[str, np.ndarray]] = {}
        #: every request the backend sent that creates, uses, stops or deletes: (api, params)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        #: every InvokeEndpoint: {"EndpointName", "Body", "ContentType", "Accept"}
        self.requests: list[dict[str, Any]] = []
        self.endpoint_models: dict[str, FittedFM] = {}
        self.serve_endpoints = True
        self.training_failures: list[str] = []
        self.transform_failures: list[str] = []
        self.endpoint_failures: list[str] = []
        #: 1-based InvokeEndpoint call number -> exception raised instead of calling, or
        #: "SIGTERM": this process is sent SIGTERM (as a scheduler stopping the run would)
        self.invoke_failures: dict[int, BaseException | str] = {}
        self.interrupt_training = self.interrupt_transform = self.interrupt_endpoint = False
        self.stopped: list[str] = []
        #: return at most this many neighbours per query (to exercise padding)
        self.knn_max_neighbours: int | None = None
        #: the order of each output line's neighbours, and the sign of the distances written
        self.knn_order = "shuffled"
        self.knn_distance_sign = 1.0
        #: added to every label written (1-based labels, as another tool might write)
        self.knn_label_offset = 0
        #: added to every score an endpoint returns (to see the endpoint check)
        self.endpoint_offset = 0.0
        #: answers for the next invocations, before the fake's own (see queue_results)
        self.canned: list[str] = []
        self._answer: str | None = None

    # ---- wiring ---------------------------------------------------------------------------
    def install(self, backend: Any) -> None:
        """Hook the algorithms, the faults and the request log into the backend's clients."""
        sm = backend.aws.client("sagemaker").meta.events
        sm.register("after-call.sagemaker.CreateTrainingJob", self._after_create(self.run_training_job))
        sm.register("after-call.sagemaker.CreateTransformJob", self._after_create(self.run_transform_job))
        sm.register("after-call.sagemaker.CreateEndpoint", self._after_create(self.start_endpoint))
        for operation, flag in (("DescribeTrainingJob", "interrupt_training"),
                                ("DescribeTransformJob", "interrupt_transform"), ("DescribeEndpoint", "interrupt_endpoint")):  # fmt: skip
            sm.register(f"before-call.sagemaker.{operation}", self._interrupt_if(flag))
        sm.register("before-call.sagemaker.StopTrainingJob", self._on_stop)
        sm.register("before-call.sagemaker.StopTransformJob", self._on_stop)
        runtime = backend.aws.client("sagemaker-runtime").meta.events
        runtime.register("provide-client-params.sagemaker-runtime.InvokeEndpoint", self._on_invoke)
        runtime.register("before-call.sagemaker-runtime.InvokeEndpoint", self._answer_invoke)
        for service in ("sagemaker", "sagemaker-runtime", "s3"):
            backend.aws.client(service).meta.events.register("provide-client-params", self._log_request)

    def _log_request(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if not model.name.startswith(_MUTATING):
            return
        service = model.service_model.service_name
        if service == "s3":
            kept = {k: params[k] for k in ("Bucket", "Key")}
        else:
            kept = {k: copy.deepcopy(v) for k, v in params.items() if k != "Body"}
            if "Body" in params:
                kept["Body"] = params["Body"]
        operation = "".join(f"_{c.lower()}" if c.isupper() else c for c in model.name).lstrip("_")
        self.sent.append((f"{service}.{operation}", kept))

    @staticmethod
    def _after_create(run: Callable[[str], None]) -> Callable[..., None]:
        def hook(parsed: dict[str, Any], **_: Any) -> None:
            arn = next((v for k, v in parsed.items() if k.endswith("Arn")), None)
            if arn:
                run(arn.rsplit("/", 1)[-1])

        return hook

    def _interrupt_if(self, flag: str) -> Callable[..., None]:
        def hook(**_: Any) -> None:
            if getattr(self, flag):
                setattr(self, flag, False)
                raise KeyboardInterrupt

        return hook

    @staticmethod
    def _moto() -> Any:
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT][REGION]

    def _get(self, uri: str) -> bytes:
        bucket, key = _split(uri)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def _put(self, uri: str, data: bytes) -> None:
        bucket, key = _split(uri)
        self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    def _objects(self, prefix_uri: str) -> list[str]:
        bucket, prefix = _split(prefix_uri)
        listing = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def _log(self, group: str, stream: str, messages: list[str]) -> None:
        from botocore.exceptions import ClientError

        for create, args in ((self.logs.create_log_group, {"logGroupName": group}),
                             (self.logs.create_log_stream, {"logGroupName": group, "logStreamName": stream})):  # fmt: skip
            try:
                create(**args)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                    raise
        now = int(time.time() * 1000)  # CloudWatch refuses events older than 14 days
        events = [{"timestamp": now + i, "message": m} for i, m in enumerate(messages)]
        self.logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)

    def state(self) -> dict[str, list[str]]:
        """What moto holds: endpoint, endpoint config and model names."""
        return {
            "endpoints": [e["EndpointName"] for e in self.sm.list_endpoints()["Endpoints"]],
            "endpoint_configs": [c["EndpointConfigName"] for c in self.sm.list_endpoint_configs()["EndpointConfigs"]],
            "models": [m["ModelName"] for m in self.sm.list_models()["Models"]],
        }

    # ---- training -------------------------------------------------------------------------
    def run_training_job(self, name: str) -> None:
        desc = self.sm.describe_training_job(TrainingJobName=name)
        job = self._moto().training_jobs[name]
        job.training_time_in_seconds = TRAINING_SECONDS
        spot = bool(desc.get("EnableManagedSpotTraining"))
        job.billable_time_in_seconds = int(TRAINING_SECONDS * (SPOT_SHARE if spot else 1))
        if self.training_failures:
            job.training_job_status = "Failed"
            job.failure_reason = self.training_failures.pop(0)
            return
        instances = desc["ResourceConfig"]["InstanceCount"]
        self.channels[name], self.reads[name] = {}, {}
        for channel in desc["InputDataConfig"]:
            assert channel["ContentType"] == RECORDIO, channel
            source = channel["DataSource"]["S3DataSource"]
            keys = self._objects(source["S3Uri"])
            assert keys, f"channel {channel['ChannelName']} is empty: nothing under {source['S3Uri']}"
            sharded = source["S3DataDistributionType"] == "ShardedByS3Key"
            self.reads[name][channel["ChannelName"]] = [keys[i::instances] if sharded else keys for i in range(instances)]
            self.channels[name][channel["ChannelName"]] = self._read_objects(source["S3Uri"], keys)
        image = desc["AlgorithmSpecification"]["TrainingImage"]
        if "/factorization-machines:" in image:
            artifact = self._train_fm(name, self.channels[name], desc["HyperParameters"])
        elif "/knn:" in image:
            uri = desc["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
            parts = [self._read_objects(uri, keys) for keys in self.reads[name]["train"]]
            artifact = self._train_knn(name, parts, desc["HyperParameters"], instances)
        else:  # pragma: no cover
            raise AssertionError(f"the fake does not know image {image}")
        self._put(desc["ModelArtifacts"]["S3ModelArtifacts"], artifact)
        self._log("/aws/sagemaker/TrainingJobs", f"{name}/algo-1-1700000000",
                  [f"fake {image.rsplit('/', 1)[-1]}: {len(keys)} object(s) read", "fake: training done"])  # fmt: skip

    def _read_objects(self, prefix_uri: str, keys: list[str]) -> tuple[Any, Any]:
        bucket = _split(prefix_uri)[0]
        return _concat([read_recordio(self._get(f"s3://{bucket}/{key}")) for key in keys])

    def _train_fm(self, name: str, channels: dict, hyperparameters: dict[str, str]) -> bytes:
        from backends import get_backend

        assert set(channels) <= {"train", "test"}, channels.keys()
        params = _fm_params(hyperparameters)
        X, y = channels["train"]
        assert sp.issparse(X) and X.dtype == np.float32 and y.dtype == np.float32
        assert X.shape[1] == params.feature_dim
        fm = get_backend("torch").fit_fm(X, y, params, eval_set=channels.get("test"))
        self.trained[name] = fm
        return fm_model_tar_bytes(fm)

    def _train_knn(self, name: str, parts: list, hp: dict[str, str], instances: int) -> bytes:
        assert set(self.channels[name]) == {"train"}, self.channels[name].keys()
        for key in ("feature_dim", "k", "predictor_type", "sample_size", "index_type", "index_metric"):
            assert key in hp, f"k-NN hyperparameter {key} missing: {hp}"
        assert 1 <= int(hp["k"]) <= 1024, f"SageMaker's k-NN refuses k = {hp['k']}"
        quota = int(hp["sample_size"]) // instances  # each instance samples sample_size / N points
        vectors, labels = [], []
        for X, y in parts:  # what each instance reads
            assert isinstance(X, np.ndarray) and X.dtype == np.float32 and y is not None, "dense float32, labelled"
            assert X.shape[1] == int(hp["feature_dim"])
            keep = np.sort(self.rng.choice(len(X), min(quota, len(X)), replace=False))
            vectors.append(X[keep])
            labels.append(y[keep])
        self.indexed[name] = np.concatenate(labels)
        buf = io.BytesIO()
        np.savez(buf, vectors=np.concatenate(vectors), labels=self.indexed[name], k=np.array(int(hp["k"])),
                 metric=np.array(hp["index_metric"]))  # fmt: skip
        return _tar_gz({_FAKE_KNN_MEMBER: buf.getvalue()})

    # ---- batch transform -------------------------------------------------------------------
    def run_transform_job(self, name: str) -> None:
        desc = self.sm.describe_transform_job(TransformJobName=name)
        if self.transform_failures:
            job = self._moto().transform_jobs[name]
            job.transform_job_status = "Failed"
            job.failure_reason = self.transform_failures.pop(0)
            return
        tin, tout = desc["TransformInput"], desc["TransformOutput"]
        assert tin["ContentType"] == RECORDIO and tin["SplitType"] == "RecordIO", tin
        assert tout["Accept"] == KNN_ACCEPT and tout["AssembleWith"] == "Line", tout
        container = self.sm.describe_model(ModelName=desc["ModelName"])["PrimaryContainer"]
        assert "/knn:" in container["Image"], container
        with np.load(io.BytesIO(_untar(self._get(container["ModelDataUrl"]))[_FAKE_KNN_MEMBER])) as art:
            vectors, labels, k, metric = art["vectors"], art["labels"], int(art["k"]), str(art["metric"])
        in_uri = tin["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, in_prefix = _split(in_uri)
        out_path = tout["S3OutputPath"].rstrip("/")
        queries_all, ids_all, scores_all = [], [], []
        for key in self._objects(in_uri):
            queries, qlabels = read_recordio(self._get(f"s3://{bucket}/{key}"))
            assert qlabels is None and isinstance(queries, np.ndarray), "queries are dense, unlabelled"
            rows, scores = knn_brute_force(vectors, queries, k, metric)
            ids = np.where(rows >= 0, labels[np.maximum(rows, 0)], -1)
            if self.knn_max_neighbours is not None:
                ids, scores = ids[:, : self.knn_max_neighbours], scores[:, : self.knn_max_neighbours]
            queries_all.append(queries)
            ids_all.append(ids)
            scores_all.append(scores)
            distances = self.knn_distance_sign * scores
            order = {"shuffled": np.argsort(self.rng.random(ids.shape), axis=1),
                     "ascending": np.argsort(distances, axis=1, kind="stable"),
                     "descending": np.argsort(-distances, axis=1, kind="stable")}[self.knn_order]  # fmt: skip
            shown = np.where(ids >= 0, ids + self.knn_label_offset, -1)
            text = write_knn_jsonlines(np.take_along_axis(shown, order, 1), np.take_along_axis(distances, order, 1))
            self._put(f"{out_path}/{key[len(in_prefix):].lstrip('/')}.out", text)
        self.transforms[name] = {"queries": np.concatenate(queries_all), "ids": np.concatenate(ids_all),
                                 "scores": np.concatenate(scores_all)}  # fmt: skip
        self._log("/aws/sagemaker/TransformJobs", f"{name}/i-0123456789", ["fake knn: transform done"])

    # ---- endpoints -------------------------------------------------------------------------
    def start_endpoint(self, name: str) -> None:
        if self.endpoint_failures:
            endpoint = self._moto().endpoints[name]
            endpoint.endpoint_status = "Failed"
            endpoint.failure_reason = self.endpoint_failures.pop(0)
            return
        ep = self.sm.describe_endpoint(EndpointName=name)
        config = self.sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
        (variant,) = config["ProductionVariants"]
        container = self.sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
        assert "/factorization-machines:" in container["Image"], container
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.tar.gz"
            path.write_bytes(self._get(container["ModelDataUrl"]))
            self.endpoint_models[name] = read_fm_artifact(path)

    def _on_invoke(self, params: dict[str, Any], **_: Any) -> None:
        """Record the request and work out its answer (sent by :meth:`_answer_invoke`)."""
        from recsys.serving.protocol import decode_request

        body = params["Body"]
        body = body.encode() if isinstance(body, str) else bytes(body)
        self.requests.append({**params, "Body": body})
        self._answer = None
        failure = self.invoke_failures.get(len(self.requests))
        if failure == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
        elif failure is not None:
            raise failure
        if self.canned:
            self._answer = self.canned.pop(0)
            return
        if not self.serve_endpoints:
            return
        name = params["EndpointName"]
        assert name in self.endpoint_models, f"InvokeEndpoint on {name}, which was never started"
        fm = self.endpoint_models[name]
        X = decode_request(body, params.get("ContentType"), fm.feature_dim, max_instances=10**9)
        scores = fm.predict_score(X) + self.endpoint_offset
        if fm.is_classifier:
            preds = [{"score": float(s), "predicted_label": int(s >= 0.5)} for s in scores]
        else:
            preds = [{"score": float(s)} for s in scores]
        self._answer = json.dumps({"predictions": preds})

    def _answer_invoke(self, **_: Any) -> tuple[Any, dict] | None:
        """Answer the InvokeEndpoint in place of moto (whose canned answers are keyed by body only)."""
        from botocore.awsrequest import AWSResponse
        from botocore.response import StreamingBody

        if self._answer is None:
            return None
        data, self._answer = self._answer.encode(), None
        parsed = {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": "application/json",
                  "InvokedProductionVariant": "AllTraffic", "ResponseMetadata": {"HTTPStatusCode": 200}}  # fmt: skip
        return AWSResponse(self.url, 200, {}, None), parsed

    def queue_results(self, payloads: list[Any]) -> None:
        """Answer the next invocations with these (JSON-encoded unless already str), in order."""
        self.canned += [p if isinstance(p, str) else json.dumps(p) for p in payloads]

    def _on_stop(self, params: dict[str, Any], model: Any, **_: Any) -> tuple[Any, dict]:
        from botocore.awsrequest import AWSResponse

        request = json.loads(params["body"])
        if model.name == "StopTrainingJob":
            name = request["TrainingJobName"]
            self._moto().training_jobs[name].training_job_status = "Stopped"
        else:
            name = request["TransformJobName"]
            self._moto().transform_jobs[name].transform_job_status = "Stopped"
        self.stopped.append(name)
        return AWSResponse(self.url, 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}


_FAKE_SESSION: list[Any] = []


def _fake_boto_session() -> Any:
    """The fake's own boto3 session (apart from the backend's, so only the backend's calls are
    recorded), made once: a new session would parse the service models again (~1 s)."""
    if not _FAKE_SESSION:
        import boto3

        _FAKE_SESSION.append(boto3.Session(region_name=REGION))
    return _FAKE_SESSION[0]


def _concat(parts: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    Xs = [X for X, _ in parts]
    X = sp.vstack(Xs, format="csr") if sp.issparse(Xs[0]) else np.concatenate(Xs)
    ys = [y for _, y in parts]
    return X, (None if ys[0] is None else np.concatenate(ys))


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (a free port) for the whole session; yields its URL."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _set_aws_env(monkeypatch: pytest.MonkeyPatch, url: str, tmp: Path) -> None:
    env = {
        "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake credentials and every AWS endpoint pointed at the moto server (reset per test)."""
    _set_aws_env(monkeypatch, moto_server, tmp_path)
    moto_api(moto_server, "/moto-api/reset")
    return moto_server


_CLIENT_CONFIG: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 30,
                                  "retries": {"max_attempts": 1, "mode": "standard"}}  # fmt: skip
_BASE_SESSIONS: dict[str, Any] = {}


def _base_session(url: str) -> Any:
    # Building a sagemaker.Session costs ~1 s (the SDK validates its config schema several
    # times), so one is built per moto server and copied per test with fresh clients.
    if url not in _BASE_SESSIONS:
        boto3 = pytest.importorskip("boto3")
        sagemaker = pytest.importorskip("sagemaker")
        from botocore.config import Config

        boto_session = boto3.Session(region_name=REGION)
        config = Config(**_CLIENT_CONFIG)
        _BASE_SESSIONS[url] = sagemaker.Session(
            boto_session=boto_session, sagemaker_client=boto_session.client("sagemaker", config=config),
            sagemaker_runtime_client=boto_session.client("sagemaker-runtime", config=config),
            default_bucket=BUCKET, sagemaker_config=TELEMETRY_OFF,
        )  # fmt: skip
    return _BASE_SESSIONS[url]


@pytest.fixture
def sagemaker_session(aws_env: str) -> Any:
    """A ``sagemaker.Session`` on the moto server: short timeouts, no retries, telemetry off,
    ``default_bucket`` = :data:`BUCKET` (created). Its clients are new for every test, so hooks
    registered on them do not leak."""
    from botocore.config import Config

    session = copy.copy(_base_session(aws_env))
    boto_session = session.boto_session
    config = Config(**_CLIENT_CONFIG)
    session.sagemaker_client = boto_session.client("sagemaker", config=config)
    session.sagemaker_runtime_client = boto_session.client("sagemaker-runtime", config=config)
    session.s3_client = boto_session.client("s3", config=config)
    session.s3_resource = boto_session.resource("s3", config=config)
    session.s3_client.create_bucket(Bucket=BUCKET)
    return session


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """AWS pointed at a closed port, no credentials, and every socket connect or boto client
    creation recorded and refused (what a dry run must never do)."""
    import socket

    import botocore.session
    import sagemaker.amazon.common  # noqa: F401 - the SDK's import-time setup happens first
    import sagemaker.image_uris  # noqa: F401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., None]:
        def fail(*args: Any, **kwargs: Any) -> None:
            attempts.append(what)
            raise AssertionError(f"{what} during a dry run")

        return fail

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(botocore.session.Session, "create_client", refuse("boto client"))
    return attempts


@pytest.fixture
def sagemaker_fake(aws_env: str) -> FakeSageMaker:
    return FakeSageMaker(aws_env)


@pytest.fixture
def make_sagemaker_backend(sagemaker_session: Any, sagemaker_fake: FakeSageMaker) -> Iterator[Callable[..., Any]]:
    """A factory: ``make_sagemaker_backend(**options)`` -> a SageMakerBackend on moto with the
    fakes hooked in (session, role, prefix ``recsys-test``, ``poll_seconds=0`` and, fewer calls,
    ``stream_logs=False`` preset).
    Every backend made is closed at teardown."""
    from backends.sagemaker import SageMakerBackend

    made = []

    def make(**options: Any) -> Any:
        options = {"session": sagemaker_session, "role": ROLE, "prefix": "recsys-test", "poll_seconds": 0.0,
                   "stream_logs": False, **options}  # fmt: skip
        backend = SageMakerBackend(**options)
        sagemaker_fake.install(backend)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def sagemaker_backend(make_sagemaker_backend: Callable[..., Any]) -> Any:
    """A ready SageMakerBackend on the moto server, with the fake algorithms hooked in."""
    return make_sagemaker_backend()
