"""Offline SageMaker for tests: a moto server plus fakes that play the built-in algorithms.

moto accepts SageMaker's control-plane calls (jobs, models, endpoint configs, endpoints) and S3,
reports every job ``Completed`` at once, and runs nothing. :class:`FakeSageMaker` does the
algorithms' work where the backend waits for it, through the backend's seams
``_wait_for_training_job``, ``_wait_for_transform_job`` and ``_wait_for_endpoint`` (wrapped:
the fake runs, then the original wait polls moto):

* training: it reads the channels the backend uploaded back from (moto) S3 with
  :func:`backends.sagemaker.recordio.read_recordio_protobuf`, trains -- FM with the torch
  backend's :func:`backends.local.fm.train_fm`, k-NN by storing the vectors -- and writes
  ``model.tar.gz`` where ``DescribeTrainingJob`` says it is (FM in the built-in format,
  :func:`backends.sagemaker.artifacts.fm_model_tar_bytes`);
* batch transform: it loads the k-NN "model" through the SageMaker model's ``ModelDataUrl``,
  brute-forces the top k of every query and writes ``<output path>/<input name>.out`` in the
  verbose JSON-lines format, with each line's neighbours in a shuffled order;
* endpoints: it loads the FM the endpoint's model points to; every ``InvokeEndpoint`` is
  parsed strictly (the documented dense / sparse JSON) and answered with that FM's scores,
  queued just in time through moto's ``/moto-api/static/sagemaker/endpoint-results``.

Faults: :attr:`FakeSageMaker.training_failures` / ``transform_failures`` /
``endpoint_failures`` make the next job or endpoint report ``Failed`` with that
``FailureReason`` (set on moto's in-process state -- moto itself never fails a job);
``invoke_failures`` raises an exception at the n-th ``InvokeEndpoint``;
``interrupt_training`` / ``interrupt_transform`` / ``interrupt_endpoint`` raise
``KeyboardInterrupt`` while the backend waits. moto lacks ``StopTrainingJob`` / ``StopTransformJob``; the fake answers them (job
``Stopped``) and records the names in :attr:`FakeSageMaker.stopped`.

Fixtures: ``moto_server`` (session), ``aws_env``, ``sagemaker_session``, ``sagemaker_fake``,
``sagemaker_backend`` (a ready :class:`~backends.sagemaker.SageMakerBackend`) and
``make_sagemaker_backend`` (a factory taking backend options). Import them into a test module
(``from tests.sagemaker_fakes import *``) or a ``conftest.py``.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from backends.sagemaker.artifacts import fm_model_tar_bytes, read_fm_artifact, write_knn_jsonlines
from backends.sagemaker.recordio import read_recordio_protobuf
from recsys.model import FittedFM
from recsys.params import FMParams

__all__ = [
    "ACCOUNT",
    "REGION",
    "BUCKET",
    "ROLE",
    "TELEMETRY_OFF",
    "FakeSageMaker",
    "brute_force_knn",
    "moto_api",
    "moto_server",
    "aws_env",
    "sagemaker_session",
    "sagemaker_fake",
    "sagemaker_backend",
    "make_sagemaker_backend",
]

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
BUCKET = "recsys-test-bucket"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/recsys-test"
#: The SDK's own defaults config with telemetry off (the SDK would otherwise call out).
TELEMETRY_OFF = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}
RECORDIO = "application/x-recordio-protobuf"
KNN_ACCEPT = "application/jsonlines; verbose=true"
_FAKE_KNN_MEMBER = "fake_knn.npz"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def moto_api(url: str, path: str, payload: Any | None = None) -> bytes:
    """POST to moto's own API (``/moto-api/...``), never through a proxy, with a timeout."""
    data = json.dumps(payload if payload is not None else {}).encode()
    request = urllib.request.Request(
        url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    with _NO_PROXY.open(request, timeout=10) as response:
        return response.read()


def _split(uri: str) -> tuple[str, str]:
    assert uri.startswith("s3://"), uri
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def brute_force_knn(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of ``vectors`` per query: ``(row ids, scores)`` best first.

    Scores are inner products / cosine similarities (higher is better) or squared L2
    distances (lower is better), computed in float64.
    """
    V = vectors.astype(np.float64)
    Q = queries.astype(np.float64)
    if metric == "COSINE":
        V = V / np.linalg.norm(V, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    if metric == "L2":
        score = (Q * Q).sum(1)[:, None] - 2 * Q @ V.T + (V * V).sum(1)[None, :]
        order = np.argsort(score, axis=1, kind="stable")
    else:
        score = Q @ V.T
        order = np.argsort(-score, axis=1, kind="stable")
    top = order[:, :k]
    return top, np.take_along_axis(score, top, 1)


def _fm_params(hyperparameters: dict[str, str]) -> FMParams:
    fields = set(FMParams.SAGEMAKER_NAMES)
    unknown = set(hyperparameters) - fields
    assert not unknown, f"the backend sent hyperparameters SageMaker's FM does not know: {unknown}"
    values: dict[str, Any] = {}
    for key, text in hyperparameters.items():
        assert isinstance(text, str), f"hyperparameter {key} is {type(text).__name__}, not a string"
        for cast in (int, float):
            try:
                values[key] = cast(text)
                break
            except ValueError:
                pass
        else:
            values[key] = text
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


def parse_fm_request(body: bytes, feature_dim: int) -> sp.csr_matrix:
    """Strictly parse an FM JSON request (dense or sparse instances) into a CSR matrix."""
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) == {"instances"}, payload.keys()
    rows, cols, vals = [], [], []
    for i, inst in enumerate(payload["instances"]):
        if set(inst) == {"features"}:
            dense = inst["features"]
            assert isinstance(dense, list) and len(dense) == feature_dim, (i, len(dense))
            nz = [j for j, v in enumerate(dense) if v != 0]
            rows += [i] * len(nz)
            cols += nz
            vals += [dense[j] for j in nz]
        else:
            assert set(inst) == {"data"} and set(inst["data"]) == {"features"}, inst.keys()
            feat = inst["data"]["features"]
            assert set(feat) == {"keys", "shape", "values"}, feat.keys()
            assert feat["shape"] == [feature_dim], feat["shape"]
            keys, values = feat["keys"], feat["values"]
            assert len(keys) == len(values), (len(keys), len(values))
            assert all(isinstance(k, int) and 0 <= k < feature_dim for k in keys), keys
            rows += [i] * len(keys)
            cols += keys
            vals += values
    n = len(payload["instances"])
    return sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n, feature_dim))


class FakeSageMaker:
    """Plays SageMaker's built-in FM and k-NN behind a moto server (see the module docstring)."""

    def __init__(self, url: str, session: Any, *, seed: int = 0) -> None:
        self.url = url
        self.session = session
        self.s3 = session.s3_client
        self.sm = session.sagemaker_client
        self.rng = np.random.default_rng(seed)
        #: job name -> channel -> (X, y) as decoded from S3
        self.channels: dict[str, dict[str, tuple[Any, Any]]] = {}
        #: FM job name -> the FittedFM the fake trained
        self.trained: dict[str, FittedFM] = {}
        #: transform job name -> {"queries", "ids", "scores"} (ids/scores best first)
        self.transforms: dict[str, dict[str, np.ndarray]] = {}
        #: every InvokeEndpoint: {"EndpointName", "Body", "ContentType", "Accept"}
        self.requests: list[dict[str, Any]] = []
        self.endpoint_models: dict[str, FittedFM] = {}
        self.serve_endpoints = True
        self.training_failures: list[str] = []
        self.transform_failures: list[str] = []
        self.endpoint_failures: list[str] = []
        #: 1-based InvokeEndpoint call number -> exception raised instead of calling
        self.invoke_failures: dict[int, BaseException] = {}
        self.interrupt_training = False
        self.interrupt_transform = False
        self.interrupt_endpoint = False
        self.stopped: list[str] = []
        #: return at most this many neighbours per query (to exercise padding)
        self.knn_max_neighbours: int | None = None
        self._seen_bodies: set[tuple[str, str, bytes]] = set()

    # ---- wiring ---------------------------------------------------------------------------
    def install(self, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Wrap the backend's wait seams and hook the runtime / stop calls."""
        for seam, run in (
            ("_wait_for_training_job", self.run_training_job),
            ("_wait_for_transform_job", self.run_transform_job),
            ("_wait_for_endpoint", self.start_endpoint),
        ):
            original = getattr(backend, seam)

            def wrapped(name: str, _original: Callable = original, _run: Callable = run) -> Any:
                _run(name)
                return _original(name)

            monkeypatch.setattr(backend, seam, wrapped)
        # Hook the backend's own clients: it may have built its own session (as `recsys run`
        # does from [sagemaker] bucket/role/region) rather than use this fake's.
        runtime_events = backend.session.sagemaker_runtime_client.meta.events
        runtime_events.register(
            "provide-client-params.sagemaker-runtime.InvokeEndpoint", self._on_invoke
        )
        sm_events = backend.session.sagemaker_client.meta.events
        sm_events.register("before-call.sagemaker.StopTrainingJob", self._on_stop)
        sm_events.register("before-call.sagemaker.StopTransformJob", self._on_stop)

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

    def state(self) -> dict[str, list[str]]:
        """What moto holds: endpoint, endpoint config and model names."""
        return {
            "endpoints": [e["EndpointName"] for e in self.sm.list_endpoints()["Endpoints"]],
            "endpoint_configs": [
                c["EndpointConfigName"] for c in self.sm.list_endpoint_configs()["EndpointConfigs"]
            ],
            "models": [m["ModelName"] for m in self.sm.list_models()["Models"]],
        }

    # ---- training -------------------------------------------------------------------------
    def run_training_job(self, name: str) -> None:
        desc = self.sm.describe_training_job(TrainingJobName=name)
        if self.interrupt_training:
            self.interrupt_training = False
            raise KeyboardInterrupt
        if self.training_failures:
            job = self._moto().training_jobs[name]
            job.training_job_status = "Failed"
            job.failure_reason = self.training_failures.pop(0)
            return
        channels = {}
        for channel in desc["InputDataConfig"]:
            assert channel["ContentType"] == RECORDIO, channel
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            bucket = _split(uri)[0]
            keys = self._objects(uri)
            assert keys, f"channel {channel['ChannelName']} is empty: nothing under {uri}"
            raw = b"".join(self._get(f"s3://{bucket}/{key}") for key in keys)
            channels[channel["ChannelName"]] = read_recordio_protobuf(raw)
        self.channels[name] = channels
        image = desc["AlgorithmSpecification"]["TrainingImage"]
        hyperparameters = desc["HyperParameters"]
        if "/factorization-machines:" in image:
            artifact = self._train_fm(name, channels, hyperparameters)
        elif "/knn:" in image:
            artifact = self._train_knn(channels, hyperparameters)
        else:  # pragma: no cover
            raise AssertionError(f"the fake does not know image {image}")
        self._put(desc["ModelArtifacts"]["S3ModelArtifacts"], artifact)

    def _train_fm(self, name: str, channels: dict, hyperparameters: dict[str, str]) -> bytes:
        from backends.local.fm import train_fm

        assert set(channels) <= {"train", "test"}, channels.keys()
        params = _fm_params(hyperparameters)
        X, y = channels["train"]
        assert sp.issparse(X) and X.dtype == np.float32 and y.dtype == np.float32
        assert X.shape[1] == params.feature_dim
        X_eval, y_eval = channels.get("test", (None, None))
        fm = train_fm(X, y, params, eval_set=None if X_eval is None else (X_eval, y_eval))
        self.trained[name] = fm
        return fm_model_tar_bytes(fm)

    def _train_knn(self, channels: dict, hyperparameters: dict[str, str]) -> bytes:
        assert set(channels) == {"train"}, channels.keys()
        X, labels = channels["train"]
        assert isinstance(X, np.ndarray) and X.dtype == np.float32, type(X)
        assert labels is not None, "k-NN training data needs labels"
        hp = hyperparameters
        assert int(hp["feature_dim"]) == X.shape[1]
        for key in ("k", "predictor_type", "sample_size", "index_type", "index_metric"):
            assert key in hp, f"k-NN hyperparameter {key} missing: {hp}"
        sample = int(hp["sample_size"])
        if sample < X.shape[0]:
            keep = np.sort(self.rng.choice(X.shape[0], sample, replace=False))
            X, labels = X[keep], labels[keep]
        buf = io.BytesIO()
        np.savez(
            buf, vectors=X, labels=labels, k=np.array(int(hp["k"])),
            metric=np.array(hp["index_metric"]), index_type=np.array(hp["index_type"]),
        )  # fmt: skip
        return _tar_gz({_FAKE_KNN_MEMBER: buf.getvalue()})

    # ---- batch transform -------------------------------------------------------------------
    def run_transform_job(self, name: str) -> None:
        desc = self.sm.describe_transform_job(TransformJobName=name)
        if self.interrupt_transform:
            self.interrupt_transform = False
            raise KeyboardInterrupt
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
        with np.load(
            io.BytesIO(_untar(self._get(container["ModelDataUrl"]))[_FAKE_KNN_MEMBER])
        ) as art:
            vectors, labels = art["vectors"], art["labels"]
            k, metric = int(art["k"]), str(art["metric"])
        in_uri = tin["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, in_prefix = _split(in_uri)
        out_path = tout["S3OutputPath"].rstrip("/")
        for key in self._objects(in_uri):
            queries, qlabels = read_recordio_protobuf(self._get(f"s3://{bucket}/{key}"))
            assert qlabels is None and isinstance(queries, np.ndarray), (
                "queries are dense, unlabelled"
            )
            rows, scores = brute_force_knn(vectors, queries, k, metric)
            ids = labels[rows]
            if self.knn_max_neighbours is not None:
                ids, scores = (
                    ids[:, : self.knn_max_neighbours],
                    scores[:, : self.knn_max_neighbours],
                )
            self.transforms[name] = {"queries": queries, "ids": ids.copy(), "scores": scores.copy()}
            shuffled = np.argsort(self.rng.random(ids.shape), axis=1)  # prove the backend sorts
            text = write_knn_jsonlines(
                np.take_along_axis(ids, shuffled, 1), np.take_along_axis(scores, shuffled, 1)
            )
            self._put(f"{out_path}/{key[len(in_prefix) :].lstrip('/')}.out", text)

    # ---- endpoints -------------------------------------------------------------------------
    def start_endpoint(self, name: str) -> None:
        if self.interrupt_endpoint:
            self.interrupt_endpoint = False
            raise KeyboardInterrupt
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
        body = params["Body"]
        body = body.encode() if isinstance(body, str) else bytes(body)
        self.requests.append({**params, "Body": body})
        failure = self.invoke_failures.get(len(self.requests))
        if failure is not None:
            raise failure
        if not self.serve_endpoints:
            return
        name = params["EndpointName"]
        assert name in self.endpoint_models, f"InvokeEndpoint on {name}, which was never started"
        assert params.get("ContentType") == "application/json", params.get("ContentType")
        key = (name, params.get("Accept", ""), body)
        if key in self._seen_bodies:
            return  # moto answers a repeated request with its first answer
        self._seen_bodies.add(key)
        fm = self.endpoint_models[name]
        scores = fm.predict_score(parse_fm_request(body, fm.feature_dim))
        if fm.is_classifier:
            preds = [{"score": float(s), "predicted_label": int(s >= 0.5)} for s in scores]
        else:
            preds = [{"score": float(s)} for s in scores]
        self.queue_results([{"predictions": preds}])

    def queue_results(self, payloads: list[Any]) -> None:
        """Queue endpoint answers (JSON-encoded unless already str) in moto, in order."""
        results = [
            {
                "Body": p if isinstance(p, str) else json.dumps(p),
                "ContentType": "application/json",
                "InvokedProductionVariant": "AllTraffic",
                "CustomAttributes": "",
            }
            for p in payloads
        ]
        moto_api(self.url, "/moto-api/static/sagemaker/endpoint-results", {
            "account_id": ACCOUNT, "region": REGION, "results": results,
        })  # fmt: skip

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
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake credentials and every AWS endpoint pointed at the moto server (reset per test)."""
    _set_aws_env(monkeypatch, moto_server, tmp_path)
    moto_api(moto_server, "/moto-api/reset")
    return moto_server


_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 1, "mode": "standard"},
}  # fmt: skip


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
            boto_session=boto_session,
            sagemaker_client=boto_session.client("sagemaker", config=config),
            sagemaker_runtime_client=boto_session.client("sagemaker-runtime", config=config),
            default_bucket=BUCKET,
            sagemaker_config=TELEMETRY_OFF,
        )
    return _BASE_SESSIONS[url]


@pytest.fixture
def sagemaker_session(aws_env: str) -> Any:
    """A ``sagemaker.Session`` on the moto server: short timeouts, no retries, telemetry off
    (``TelemetryOptOut``), ``default_bucket`` = :data:`BUCKET` (created). Its clients are new
    for every test, so hooks registered on them do not leak."""
    import copy

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
def sagemaker_fake(aws_env: str, sagemaker_session: Any) -> FakeSageMaker:
    return FakeSageMaker(aws_env, sagemaker_session)


@pytest.fixture
def make_sagemaker_backend(
    sagemaker_session: Any, sagemaker_fake: FakeSageMaker, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    """A factory: ``make_sagemaker_backend(**options)`` -> a SageMakerBackend on moto with the
    fakes hooked in (session, role, prefix ``recsys-test`` and ``poll_seconds=0`` preset).
    Every backend made is closed at teardown."""
    from backends.sagemaker import SageMakerBackend

    made = []

    def make(**options: Any) -> Any:
        options = {
            "session": sagemaker_session, "role": ROLE, "prefix": "recsys-test",
            "poll_seconds": 0.0, **options,
        }  # fmt: skip
        backend = SageMakerBackend(**options)
        sagemaker_fake.install(backend, monkeypatch)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def sagemaker_backend(make_sagemaker_backend: Callable[..., Any]) -> Any:
    """A ready SageMakerBackend on the moto server, with the fake algorithms hooked in."""
    return make_sagemaker_backend()
