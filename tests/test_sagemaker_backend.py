"""The SageMaker backend, fully offline.

A moto server stands in for SageMaker and S3; ``tests/sagemaker_fakes.py`` plays the built-in
algorithms (it reads back the RecordIO channels the backend uploaded, trains FM with the torch
engine / brute-forces k-NN, writes the artifacts and transform outputs, serves endpoints). So
every test below runs the backend's real code paths: serialization, S3, the SageMaker API
requests, waiting, downloading and parsing.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sagemaker")
pytest.importorskip("moto")
pytest.register_assert_rewrite("tests.sagemaker_fakes")

from backends.base import TrainOptions  # noqa: E402
from backends.sagemaker import (  # noqa: E402
    FMEndpoint,
    SageMakerBackend,
    predictions_to_arrays,
)
from backends.sagemaker.artifacts import parse_knn_jsonlines  # noqa: E402
from recsys.errors import (  # noqa: E402
    BackendError,
    ConfigError,
    DataError,
    MissingDependencyError,
)
from recsys.model import FittedFM  # noqa: E402
from recsys.params import FMParams, KNNParams  # noqa: E402
from recsys.serving.protocol import batch_payloads, encode_rows, parse_predictions  # noqa: E402
from tests.reference import knn_brute_force  # noqa: E402
from tests.sagemaker_fakes import BUCKET, REGION, ROLE  # noqa: E402

# The moto server and fake-algorithm fixtures (sagemaker_backend, sagemaker_fake, ...).
pytest_plugins = ["tests.sagemaker_fakes"]

FM_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/factorization-machines:1"
KNN_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/knn:1"
PREFIX = f"s3://{BUCKET}/recsys-test"


def one_hot_problem(
    n_users: int = 12, n_items: int = 9, n: int = 80, seed: int = 0, classifier: bool = False
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users-then-items one-hot rows with ratings (or 0/1 labels) from a planted FM."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([users, n_users + items], 1).ravel()
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (rows, cols)), shape=(n, n_users + n_items))
    U, W = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    raw = (U[users] * W[items]).sum(1)
    y = (raw > 0).astype(np.float32) if classifier else (3 + raw).astype(np.float32)
    return X, y


def state(session) -> dict[str, list[str]]:
    sm = session.sagemaker_client
    return {
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
        "endpoint_configs": [
            c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]
        ],
        "models": [m["ModelName"] for m in sm.list_models()["Models"]],
    }


NOTHING_LEFT = {"endpoints": [], "endpoint_configs": [], "models": []}


def client_error(code: str, message: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}}, "InvokeEndpoint")


# ---- factorization machines -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ptype", "with_eval"), [("regressor", True), ("binary_classifier", False)]
)
def test_fit_fm_round_trip_is_lossless(
    sagemaker_backend, sagemaker_fake, sagemaker_session, ptype, with_eval
):
    classifier = ptype == "binary_classifier"
    X, y = one_hot_problem(classifier=classifier)
    Xe, ye = one_hot_problem(n=20, seed=1, classifier=classifier)
    params = FMParams(num_factors=4, epochs=3, predictor_type=ptype, mini_batch_size=16)
    eval_kw = {"eval_set": (Xe, ye)} if with_eval else {}
    fm = sagemaker_backend.fit_fm(X, y, params, options=TrainOptions(metadata={"n_users": 12, "n_items": 9}), **eval_kw)

    job = fm.metadata["training_job_name"]
    # The channels decode to exactly the X and y given.
    channels = sagemaker_fake.channels[job]
    assert list(channels) == (["train", "test"] if with_eval else ["train"])
    X_sent, y_sent = channels["train"]
    assert X_sent.dtype == np.float32 and y_sent.dtype == np.float32
    np.testing.assert_array_equal(X_sent.toarray(), X.toarray())
    np.testing.assert_array_equal(X_sent.indices, X.indices)
    np.testing.assert_array_equal(y_sent, y)
    if with_eval:
        np.testing.assert_array_equal(channels["test"][0].toarray(), Xe.toarray())
        np.testing.assert_array_equal(channels["test"][1], ye)
    # model.tar.gz -> download -> read_fm_artifact loses nothing (w0 is stored as float32).
    trained = sagemaker_fake.trained[job]
    assert fm.w0 == float(np.float32(trained.w0))
    np.testing.assert_array_equal(fm.w, trained.w)
    np.testing.assert_array_equal(fm.V, trained.V)
    assert fm.predictor_type == ptype and fm.V.shape == (21, 4)
    np.testing.assert_allclose(fm.predict_score(X), trained.predict_score(X), rtol=1e-6)

    desc = sagemaker_session.sagemaker_client.describe_training_job(TrainingJobName=job)
    assert fm.metadata["model_s3_uri"] == desc["ModelArtifacts"]["S3ModelArtifacts"]
    assert fm.metadata["model_s3_uri"] == f"{PREFIX}/models/{job}/output/model.tar.gz"
    assert fm.metadata["backend"] == "sagemaker"
    assert (fm.metadata["n_users"], fm.metadata["n_items"]) == (12, 9)
    assert fm.one_hot_layout() == (12, 9)
    sent = {"feature_dim": "21", "num_factors": "4", "epochs": "3", "mini_batch_size": "16", "predictor_type": ptype}
    assert sent.items() <= desc["HyperParameters"].items()
    assert desc["AlgorithmSpecification"]["TrainingImage"] == FM_IMAGE
    assert desc["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert desc["ResourceConfig"]["InstanceType"] == "ml.m4.xlarge"
    assert desc["ResourceConfig"]["InstanceCount"] == 1
    assert desc["RoleArn"] == ROLE
    assert [c["ChannelName"] for c in desc["InputDataConfig"]] == list(channels)
    for channel in desc["InputDataConfig"]:
        assert channel["ContentType"] == "application/x-recordio-protobuf"
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        assert uri == f"{PREFIX}/data/{job}/{channel['ChannelName']}/"
    # What the plan recorded is what moto received.
    (entry,) = [e for e in sagemaker_backend.plan if e.kind == "training_job"]
    assert entry.executed and entry.name == job
    for key in (
        "HyperParameters",
        "InputDataConfig",
        "OutputDataConfig",
        "ResourceConfig",
        "StoppingCondition",
    ):
        assert desc[key] == entry.request[key]
    assert [e.kind for e in sagemaker_backend.plan] == ["upload"] * len(channels) + ["training_job"]


def test_failed_training_job_raises_with_its_failure_reason(sagemaker_backend, sagemaker_fake):
    sagemaker_fake.training_failures.append(
        "AlgorithmError: the label is not 0 or 1 (caused by ValueError)"
    )
    X, y = one_hot_problem()
    with pytest.raises(
        BackendError, match=r"training job recsys-fm-reg-\S+ failed: AlgorithmError: the label"
    ):
        sagemaker_backend.fit_fm(X, y, FMParams(num_factors=2))
    with pytest.raises(BackendError, match="CloudWatch"):
        sagemaker_fake.training_failures.append("InternalServerError")
        sagemaker_backend.fit_fm(X, y, FMParams(num_factors=2))


def test_ctrl_c_while_training_stops_the_job(
    sagemaker_backend, sagemaker_fake, sagemaker_session, caplog
):
    sagemaker_fake.interrupt_training = True
    X, y = one_hot_problem()
    with pytest.raises(KeyboardInterrupt):
        sagemaker_backend.fit_fm(X, y, FMParams(num_factors=2))
    job = sagemaker_backend.plan[-1].name
    assert sagemaker_fake.stopped == [job]
    desc = sagemaker_session.sagemaker_client.describe_training_job(TrainingJobName=job)
    assert desc["TrainingJobStatus"] == "Stopped"
    assert f"stopping SageMaker training job {job}" in caplog.text


def test_fit_fm_rejects_bad_input_before_touching_aws(sagemaker_backend):
    X, y = one_hot_problem()
    with pytest.raises(DataError, match="80 rows but y has 79"):
        sagemaker_backend.fit_fm(X, y[:-1], FMParams())
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        sagemaker_backend.fit_fm(X, y, FMParams(predictor_type="binary_classifier"))
    with pytest.raises(DataError, match="21 columns but feature_dim is 5"):
        sagemaker_backend.fit_fm(X, y, FMParams(feature_dim=5))
    assert sagemaker_backend.plan == []


def test_callbacks_and_local_only_options_are_ignored_with_a_warning(sagemaker_backend, caplog):
    X, y = one_hot_problem()
    fm = sagemaker_backend.fit_fm(
        X, y, FMParams(num_factors=2, seed=3), options=TrainOptions(callbacks=[lambda info: None])
    )
    assert "cannot call per-epoch callbacks" in caplog.text
    assert "seed only apply to the torch backend" in caplog.text
    assert "seed" not in fm.metadata["hyperparameters"]


# ---- k-NN ---------------------------------------------------------------------------------------
def expected_top_k(
    V: np.ndarray, Q: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """numpy argsort of the exact scores (the reference the backend must reproduce)."""
    V, Q = V.astype(np.float64), Q.astype(np.float64)
    if metric == "L2":
        score = ((Q[:, None, :] - V[None, :, :]) ** 2).sum(-1)
        ids = np.argsort(score, axis=1)[:, :k]
    else:
        if metric == "COSINE":
            V = V / np.linalg.norm(V, axis=1, keepdims=True)
            Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        score = Q @ V.T
        ids = np.argsort(-score, axis=1)[:, :k]
    return np.take_along_axis(score, ids, 1), ids


@pytest.mark.parametrize("metric", ["INNER_PRODUCT", "L2", "COSINE"])
def test_knn_search_equals_brute_force(
    sagemaker_backend, sagemaker_fake, sagemaker_session, metric
):
    rng = np.random.default_rng(7)
    V = rng.normal(size=(40, 6)).astype(np.float32)
    Q = rng.normal(size=(9, 6)).astype(np.float32)
    index = sagemaker_backend.build_knn(V, KNNParams(k=10, index_metric=metric))
    assert (index.ntotal, index.dim, index.k, index.metric) == (40, 6, 10, metric)
    ids, scores = index.search(Q, 7)

    want_scores, want_ids = expected_top_k(V, Q, 7, metric)
    assert scores.shape == ids.shape == (9, 7)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    steps = np.diff(scores, axis=1)
    assert (steps >= 0).all() if metric == "L2" else (steps <= 0).all()

    # The training channel: the vectors, labelled with their row numbers 0..n-1.
    job = index.job_name
    X_sent, labels_sent = sagemaker_fake.channels[job]["train"]
    np.testing.assert_array_equal(X_sent, V)
    np.testing.assert_array_equal(labels_sent, np.arange(40))
    sm = sagemaker_session.sagemaker_client
    desc = sm.describe_training_job(TrainingJobName=job)
    assert desc["AlgorithmSpecification"]["TrainingImage"] == KNN_IMAGE
    assert desc["HyperParameters"] == {
        "feature_dim": "6", "k": "10", "predictor_type": "classifier", "sample_size": "40",
        "index_type": "faiss.Flat", "index_metric": metric, "mini_batch_size": "5000",
    }  # fmt: skip
    # The batch transform: RecordIO in, verbose JSON lines out, on the configured instances.
    (tjob,) = index.transform_jobs
    tdesc = sm.describe_transform_job(TransformJobName=tjob)
    assert tdesc["ModelName"] == job
    assert tdesc["TransformInput"]["ContentType"] == "application/x-recordio-protobuf"
    assert tdesc["TransformInput"]["SplitType"] == "RecordIO"
    assert tdesc["TransformOutput"]["Accept"] == "application/jsonlines; verbose=true"
    assert tdesc["TransformOutput"]["AssembleWith"] == "Line"
    assert tdesc["TransformResources"] == {"InstanceType": "ml.m4.xlarge", "InstanceCount": 1}
    container = sm.describe_model(ModelName=job)["PrimaryContainer"]
    assert container == {"Image": KNN_IMAGE, "ModelDataUrl": index.model_s3_uri}
    # The output lines were shuffled, so the order above is the backend's own sort.
    out = sagemaker_session.s3_client.get_object(
        Bucket=BUCKET, Key=f"recsys-test/transform/{tjob}/part-00000.protobuf.out"
    )["Body"].read()
    raw_labels, _ = parse_knn_jsonlines(out)
    assert raw_labels.shape == (9, 10)
    assert not np.array_equal(raw_labels[:, :7], ids)
    assert all(set(ids[r]) <= set(raw_labels[r]) for r in range(9))


def test_searches_deeper_than_k_are_completed_from_the_local_vectors(sagemaker_backend, sagemaker_fake):
    rng = np.random.default_rng(0)
    V, Q = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    index = sagemaker_backend.build_knn(V, KNNParams(k=5))
    assert index.max_k == 5
    ids, scores = index.search(Q, 9)  # SageMaker returns 5; the rest is exact, from the vectors kept
    want_ids, want_scores = knn_brute_force(V, Q, 9)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert len(index.transform_jobs) == 1 and index.report()["completed_rows"] == 3
    with pytest.raises(DataError, match="dimension 3 but the index holds 4-d"):
        index.search(rng.normal(size=(2, 3)), 2)
    with pytest.raises(DataError, match="positive integer"):
        index.search(Q, 0)
    assert len(index.transform_jobs) == 1


def test_knn_more_neighbours_than_vectors_and_short_lines(sagemaker_backend, sagemaker_fake, sagemaker_session):
    rng = np.random.default_rng(1)
    V = rng.normal(size=(5, 3)).astype(np.float32)
    Q = rng.normal(size=(4, 3)).astype(np.float32)
    index = sagemaker_backend.build_knn(V, KNNParams(k=10))
    desc = sagemaker_session.sagemaker_client.describe_training_job(TrainingJobName=index.job_name)
    assert desc["HyperParameters"]["k"] == "5"  # capped at the number of vectors
    ids, scores = index.search(Q, 8)
    assert ids.shape == (4, 5)  # min(k, ntotal)
    np.testing.assert_array_equal(ids, knn_brute_force(V, Q, 5)[0])
    # A 1-D query is one row (answered from the last job); no query at all runs no job.
    assert index.search(Q[0], 2)[1].shape == (1, 2)
    empty_ids, empty_scores = index.search(np.empty((0, 3)), 2)
    assert empty_scores.shape == empty_ids.shape == (0, 2)
    assert len(index.transform_jobs) == 1
    # Lines shorter than k (a sampled or approximate index): completed from the local vectors.
    for metric in ("INNER_PRODUCT", "L2"):
        index = sagemaker_backend.build_knn(V, KNNParams(k=4, index_metric=metric))
        sagemaker_fake.knn_max_neighbours = 1
        ids, scores = index.search(Q, 3)
        want_ids, want_scores = knn_brute_force(V, Q, 3, metric)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
        assert index.report()["completed_rows"] == 4


def test_labels_outside_the_index_are_refused(sagemaker_backend, sagemaker_fake):
    rng = np.random.default_rng(3)
    index = sagemaker_backend.build_knn(rng.normal(size=(6, 2)), KNNParams(k=6))
    sagemaker_fake.knn_label_offset = 1  # 1-based labels, as another tool might write
    with pytest.raises(BackendError, match=r"label 6 .* only 6 vectors .* another tool"):
        index.search(rng.normal(size=(2, 2)), 3)


def test_knn_model_is_created_once_and_deleted_on_close(sagemaker_backend, sagemaker_session):
    rng = np.random.default_rng(3)
    index = sagemaker_backend.build_knn(rng.normal(size=(10, 3)), KNNParams(k=3))
    Q = rng.normal(size=(2, 3))
    index.search(Q, 3)
    index.search(Q[1], 2)  # answered by the first job: no second paid job for the same queries
    assert len(index.transform_jobs) == 1
    index.search(Q + 1, 2)
    assert len(index.transform_jobs) == 2
    assert [e.kind for e in sagemaker_backend.plan].count("model") == 1
    assert state(sagemaker_session)["models"] == [index.job_name]
    sagemaker_backend.close()
    assert state(sagemaker_session) == NOTHING_LEFT
    index.search(Q, 1)  # the model is created again on demand
    assert len(index.transform_jobs) == 3
    index.close()
    assert state(sagemaker_session) == NOTHING_LEFT


def test_failed_and_interrupted_transform_jobs(sagemaker_backend, sagemaker_fake):
    rng = np.random.default_rng(4)
    index = sagemaker_backend.build_knn(rng.normal(size=(10, 3)), KNNParams(k=3))
    sagemaker_fake.transform_failures.append("ClientError: See job logs for more information")
    with pytest.raises(
        BackendError, match=r"transform job recsys-knn-tf-\S+ failed: ClientError: See job logs"
    ):
        index.search(rng.normal(size=(2, 3)), 3)
    sagemaker_fake.interrupt_transform = True
    with pytest.raises(KeyboardInterrupt):
        index.search(rng.normal(size=(2, 3)), 3)
    assert sagemaker_fake.stopped == [index.transform_jobs[-1]]


# ---- endpoints ----------------------------------------------------------------------------------
def greedy_batches_are_full(bodies: list[bytes], fragments: list[bytes], limit: int) -> bool:
    """Each request but the last had no room for the next row."""
    start = 0
    for body in bodies[:-1]:
        n = len(json.loads(body)["instances"])
        nxt = fragments[start + n]
        if len(body) + 2 + len(nxt) <= limit:
            return False
        start += n
    return True


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_endpoint_predictions_are_batched_by_size_and_cleaned_up(
    make_sagemaker_backend, sagemaker_fake, sagemaker_session, fmt
):
    limit = 3000
    backend = make_sagemaker_backend(max_payload_bytes=limit)
    X, y = one_hot_problem(n=150, classifier=True)
    fm = backend.fit_fm(X, y, FMParams(num_factors=3, predictor_type="binary_classifier", epochs=2))
    Xq = X[:70]
    with backend.deploy(fm) as endpoint:
        assert isinstance(endpoint, FMEndpoint)
        live = state(sagemaker_session)
        assert live["endpoints"] == live["endpoint_configs"] == live["models"] == [endpoint.name]
        config = sagemaker_session.sagemaker_client.describe_endpoint_config(
            EndpointConfigName=endpoint.name
        )
        (variant,) = config["ProductionVariants"]
        assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 1)
        predictions = endpoint.predict(Xq if fmt == "sparse" else Xq.toarray())
    assert state(sagemaker_session) == NOTHING_LEFT
    assert endpoint.deleted

    requests = sagemaker_fake.requests
    assert len(requests) > 1
    bodies = [r["Body"] for r in requests]
    assert all(len(b) <= limit for b in bodies)
    assert all(r["ContentType"] == r["Accept"] == "application/json" for r in requests)
    assert all(r["EndpointName"] == endpoint.name for r in requests)
    instances = [inst for b in bodies for inst in json.loads(b)["instances"]]
    assert len(instances) == 70
    row = Xq[0]
    if fmt == "sparse":
        assert instances[0] == {
            "data": {
                "features": {"keys": row.indices.tolist(), "shape": [21], "values": [1.0, 1.0]}
            }
        }
    else:
        assert instances[0] == {"features": row.toarray().ravel().tolist()}
    fragments = list(encode_rows(Xq, format=fmt))
    assert greedy_batches_are_full(bodies, fragments, limit)
    assert (
        bodies[0]
        == json.dumps({"instances": instances[: len(json.loads(bodies[0])["instances"])]}).encode()
    )

    scores, labels = predictions_to_arrays(predictions)
    np.testing.assert_allclose(scores, fm.predict_score(Xq), rtol=1e-6)
    np.testing.assert_array_equal(labels, (scores >= 0.5).astype(float))
    assert set(predictions[0]) == {"score", "predicted_label"}


def test_queued_endpoint_results_are_parsed(sagemaker_backend, sagemaker_fake, sagemaker_session):
    fm = FittedFM(w0=0.0, w=np.zeros(4), V=np.zeros((4, 2)), predictor_type="binary_classifier")
    sagemaker_fake.serve_endpoints = False
    queued = [
        {"score": 0.91, "predicted_label": 1},
        {"score": 0.12, "predicted_label": 0},
        {"score": 0.5, "predicted_label": 1},
    ]
    sagemaker_fake.queue_results([{"predictions": queued}])
    with sagemaker_backend.deploy(fm) as endpoint:
        predictions = endpoint.predict(np.eye(4)[:3])
        uploaded = [e for e in sagemaker_backend.plan if e.kind == "upload"]
    assert predictions == queued
    scores, labels = predictions_to_arrays(predictions)
    np.testing.assert_array_equal(scores, [0.91, 0.12, 0.5])
    np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0])
    assert predictions_to_arrays([{"score": 3.5}, {"score": 4.0}])[1] is None
    # A model from elsewhere (no model_s3_uri) was uploaded as a SageMaker FM model.tar.gz.
    assert len(uploaded) == 1 and uploaded[0].name.endswith("/model.tar.gz")
    assert state(sagemaker_session) == NOTHING_LEFT


def test_locally_trained_model_is_uploaded_and_served(sagemaker_backend, sagemaker_fake):
    rng = np.random.default_rng(5)
    fm = FittedFM(
        w0=0.3, w=rng.normal(size=7), V=rng.normal(size=(7, 2)), metadata={"backend": "torch"}
    )
    X = sp.random(9, 7, density=0.4, format="csr", random_state=1, dtype=np.float32)
    with sagemaker_backend.deploy(fm) as endpoint:
        scores, labels = endpoint.predict_arrays(X)
    assert labels is None
    np.testing.assert_allclose(scores, fm.predict_score(X), rtol=1e-6)


def test_endpoint_error_midway_deletes_everything(
    sagemaker_backend, sagemaker_fake, sagemaker_session
):
    X, y = one_hot_problem(n=60)
    fm = sagemaker_backend.fit_fm(X, y, FMParams(num_factors=2))
    backend = sagemaker_backend
    backend.config.max_payload_bytes = 1024
    sagemaker_fake.invoke_failures[2] = client_error(
        "ModelError", 'Received server error (500) from primary with message "boom"'
    )
    with pytest.raises(
        BackendError,
        match=r"invoking endpoint recsys-fm-ep-\S+ \(rows \d+-\d+, request 2\).*ModelError",
    ):
        with backend.deploy(fm) as endpoint:
            endpoint.predict(X)
    assert state(sagemaker_session) == NOTHING_LEFT
    with pytest.raises(BackendError, match="was deleted"):
        endpoint.predict(X)


def test_ctrl_c_mid_prediction_deletes_everything(
    sagemaker_backend, sagemaker_fake, sagemaker_session
):
    X, y = one_hot_problem(n=60)
    fm = sagemaker_backend.fit_fm(X, y, FMParams(num_factors=2))
    sagemaker_backend.config.max_payload_bytes = 1024
    sagemaker_fake.invoke_failures[2] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        with sagemaker_backend.deploy(fm) as endpoint:
            endpoint.predict(X)
    assert len(sagemaker_fake.requests) == 2
    assert state(sagemaker_session) == NOTHING_LEFT


def test_malformed_endpoint_response_is_a_backend_error(
    sagemaker_backend, sagemaker_fake, sagemaker_session
):
    fm = FittedFM(w0=0.0, w=np.zeros(3), V=np.zeros((3, 1)))
    sagemaker_fake.serve_endpoints = False
    sagemaker_fake.queue_results(["<html>502 Bad Gateway</html>"])
    with pytest.raises(BackendError, match="not JSON"):
        with sagemaker_backend.deploy(fm) as endpoint:
            endpoint.predict(np.eye(3))
    assert state(sagemaker_session) == NOTHING_LEFT
    with pytest.raises(BackendError, match="2 predictions for 3 rows"):
        parse_predictions(b'{"predictions": [{"score": 1}, {"score": 2}]}', 3)


def test_endpoint_that_fails_to_start_is_deleted(
    sagemaker_backend, sagemaker_fake, sagemaker_session
):
    fm = FittedFM(w0=0.0, w=np.zeros(3), V=np.zeros((3, 1)))
    sagemaker_fake.endpoint_failures.append(
        "The primary container for production variant AllTraffic did not pass the ping health check."
    )
    with pytest.raises(
        BackendError, match=r"endpoint recsys-fm-ep-\S+ is Failed: The primary container"
    ):
        sagemaker_backend.deploy(fm)
    assert state(sagemaker_session) == NOTHING_LEFT


def test_ctrl_c_while_the_endpoint_starts_deletes_it(
    sagemaker_backend, sagemaker_fake, sagemaker_session
):
    fm = FittedFM(w0=0.0, w=np.zeros(3), V=np.zeros((3, 1)))
    sagemaker_fake.interrupt_endpoint = True
    with pytest.raises(KeyboardInterrupt):
        sagemaker_backend.deploy(fm, instance_type="ml.m5.large", instance_count=2)
    assert state(sagemaker_session) == NOTHING_LEFT
    config = [e for e in sagemaker_backend.plan if e.kind == "endpoint_config"][0]
    variant = config.request["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 2)


def test_kept_endpoint_survives_until_deleted(make_sagemaker_backend, sagemaker_session, caplog):
    backend = make_sagemaker_backend(keep_endpoint=True)
    fm = FittedFM(w0=0.0, w=np.zeros(3), V=np.zeros((3, 1)))
    with backend.deploy(fm) as endpoint:
        pass
    assert state(sagemaker_session)["endpoints"] == [endpoint.name]
    assert "billed until deleted" in caplog.text
    backend.close()
    assert state(sagemaker_session)["endpoints"] == [endpoint.name]
    endpoint.delete()
    assert state(sagemaker_session) == NOTHING_LEFT


def test_close_deletes_an_endpoint_left_open(sagemaker_backend, sagemaker_session):
    fm = FittedFM(w0=0.0, w=np.zeros(3), V=np.zeros((3, 1)))
    endpoint = sagemaker_backend.deploy(fm)
    assert state(sagemaker_session)["endpoints"] == [endpoint.name]
    sagemaker_backend.close()
    sagemaker_backend.close()
    assert state(sagemaker_session) == NOTHING_LEFT and endpoint.deleted


def test_batch_payloads_respect_the_limit_exactly():
    rng = np.random.default_rng(0)
    X = sp.random(300, 50, density=0.1, format="csr", random_state=2, dtype=np.float32)
    for fmt, limit in (("sparse", 1500), ("dense", 5000)):
        batches = list(batch_payloads(X, max_bytes=limit, format=fmt))
        assert batches[0][0] == 0 and batches[-1][1] == 300
        assert all(a[1] == b[0] for a, b in zip(batches, batches[1:], strict=False))
        assert all(len(body) <= limit for _, _, body in batches)
        sizes = {stop - start for start, stop, _ in batches}
        assert len(sizes) > 1  # cut by encoded size, not by a fixed row count
        rows = [inst for _, _, body in batches for inst in json.loads(body)["instances"]]
        assert len(rows) == 300
    with pytest.raises(DataError, match=r"row 0 alone encodes to .* \(format='sparse'\)"):
        list(batch_payloads(rng.normal(size=(2, 400)), max_bytes=1024))
    with pytest.raises(DataError, match="NaN"):
        list(batch_payloads(np.array([[np.nan, 1.0]]), max_bytes=1024))


# ---- configuration ------------------------------------------------------------------------------
def test_defaults_and_registry():
    from backends import get_backend

    backend = get_backend("sagemaker", dry_run=True, region="eu-west-1", bucket="my-bucket")
    assert isinstance(backend, SageMakerBackend) and backend.name == "sagemaker"
    cfg = backend.config
    assert (cfg.train_instance_type, cfg.train_instance_count) == ("ml.m4.xlarge", 1)
    assert (cfg.endpoint_instance_type, cfg.transform_instance_type) == (
        "ml.c5.xlarge",
        "ml.m4.xlarge",
    )
    assert cfg.max_payload_bytes == 5 * 1024 * 1024 and cfg.keep_endpoint is False
    assert backend.image_uri("knn") == "438346466558.dkr.ecr.eu-west-1.amazonaws.com/knn:1"


def test_real_run_needs_a_role_and_a_region(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="role is required.*dry_run"):
        SageMakerBackend(region=REGION, bucket="my-bucket")
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="region is not set"):
        SageMakerBackend(dry_run=True, bucket="my-bucket")


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'recsys\[sagemaker\]'"):
        SageMakerBackend(dry_run=True, region=REGION)


def test_dry_run_fm_cannot_be_deployed_for_real(sagemaker_backend):
    placeholder = FittedFM(w0=0.0, w=np.zeros(3), V=np.zeros((3, 1)), metadata={"dry_run": True})
    with pytest.raises(ConfigError, match="dry-run placeholder"):
        sagemaker_backend.deploy(placeholder)


# ---- logs, costs, the endpoint check ------------------------------------------------------------
def test_job_logs_are_streamed_unless_turned_off(make_sagemaker_backend, caplog):
    X, y = one_hot_problem()
    with caplog.at_level(logging.INFO, logger="recsys"):
        fm = make_sagemaker_backend(stream_logs=True).fit_fm(X, y, FMParams(num_factors=2))
    job = fm.metadata["training_job_name"]
    assert f"[{job}/algo-1-1700000000] fake factorization-machines:1: 1 object(s) read" in caplog.text
    assert f"[{job}/algo-1-1700000000] fake: training done" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsys"):
        make_sagemaker_backend(stream_logs=False).fit_fm(X, y, FMParams(num_factors=2))
    assert "algo-1-" not in caplog.text


def test_report_records_every_job_and_endpoint(make_sagemaker_backend, sagemaker_session):
    backend = make_sagemaker_backend(train_instance_type="ml.c5.xlarge", transform_instance_count=2)
    X, y = one_hot_problem()
    fm = backend.fit_fm(X, y, FMParams(num_factors=2))
    index = backend.build_knn(np.random.default_rng(0).normal(size=(8, 3)), KNNParams(k=4))
    index.search(np.ones((3, 3)), 2)
    with backend.deploy(fm, instance_type="ml.m5.large") as endpoint:
        endpoint.predict(X[:3])
    report = backend.report()
    json.dumps(report)
    training = [j for j in report["jobs"] if j["kind"] == "training"]
    assert [j["name"] for j in training] == [fm.metadata["training_job_name"], index.job_name]
    assert [j["algorithm"] for j in training] == ["factorization-machines", "knn"]
    assert all((j["instance_type"], j["instance_count"], j["status"]) == ("ml.c5.xlarge", 1, "Completed") for j in training)
    assert all(j["billable_seconds"] == 100 and not j["spot"] for j in training) and report["billable_seconds"] == 200
    (transform,) = [j for j in report["jobs"] if j["kind"] == "transform"]
    assert (transform["instance_type"], transform["instance_count"], transform["seconds"]) == ("ml.m4.xlarge", 2, 0.0)
    (ep,) = report["endpoints"]
    assert (ep["name"], ep["instance_type"], ep["instance_count"]) == (endpoint.name, "ml.m5.large", 1)
    assert ep["lifetime_seconds"] >= 0 and not ep["kept"]
    (knn,) = report["knn"]
    assert (knn["k_sent"], knn["queries"], knn["transform_jobs"]) == (4, 3, index.transform_jobs)
    assert fm.metadata["billable_seconds"] == 100


def test_evaluate_on_endpoint_compares_the_hosted_model_with_the_local_one(
    make_sagemaker_backend, sagemaker_fake, sagemaker_session
):
    backend = make_sagemaker_backend(evaluate_on_endpoint=True, max_payload_bytes=1500)
    X, y = one_hot_problem(n=60)
    Xe, ye = one_hot_problem(n=30, seed=1)
    fm = backend.fit_fm(X, y, FMParams(num_factors=3), eval_set=(Xe, ye))
    assert state(sagemaker_session) == NOTHING_LEFT
    (check,) = backend.report()["endpoint_checks"]
    assert (check["model"], check["rows"], check["predictor_type"]) == (fm.metadata["training_job_name"], 30, "regressor")
    assert check["requests"] > 1 and check["max_abs_difference"] < 1e-5
    sagemaker_fake.endpoint_offset = 0.25  # a hosted model that answers differently is seen
    backend.fit_fm(X, y, FMParams(num_factors=3), eval_set=(Xe, ye))
    assert abs(backend.report()["endpoint_checks"][1]["max_abs_difference"] - 0.25) < 1e-5
    backend.fit_fm(X, y, FMParams(num_factors=3))  # no evaluation rows: no endpoint
    assert len(backend.report()["endpoints"]) == 2
    assert all(e["lifetime_seconds"] is not None for e in backend.report()["endpoints"])


@pytest.mark.parametrize("fault", ["error", "ctrl-c", "SIGTERM"])
def test_the_evaluation_endpoint_is_deleted_on_every_path(make_sagemaker_backend, sagemaker_fake, sagemaker_session, fault):
    backend = make_sagemaker_backend(evaluate_on_endpoint=True, max_payload_bytes=1024)
    X, y = one_hot_problem(n=60)
    sagemaker_fake.invoke_failures[2] = {
        "error": client_error("ModelError", "boom"), "ctrl-c": KeyboardInterrupt(), "SIGTERM": "SIGTERM",
    }[fault]  # fmt: skip
    with pytest.raises(BackendError if fault == "error" else KeyboardInterrupt):
        backend.fit_fm(X, y, FMParams(num_factors=2), eval_set=(X, y))
    assert len(sagemaker_fake.requests) == 2
    assert state(sagemaker_session) == NOTHING_LEFT
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
