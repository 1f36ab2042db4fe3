"""A live check on a real AWS account (``pytest -m aws``): costs a few cents, takes ~20 minutes.

Skipped (and says why) unless ``RECSYS_AWS_LIVE=1``, AWS credentials are found and
``RECSYS_AWS_ROLE`` names a SageMaker execution role. Optional: ``RECSYS_AWS_BUCKET`` (default:
the session's default bucket), ``AWS_DEFAULT_REGION``, ``RECSYS_AWS_LIVE_DIR`` (where the real
artifacts are saved; default ``./sagemaker-live-artifacts``).

On 300 rows: an FM regressor and an FM classifier for one epoch (each scored on an endpoint
that is then deleted: ``evaluate_on_endpoint``), a k-NN index with INNER_PRODUCT and one batch
transform, all on ``ml.m5.large``. It saves the real ``model.tar.gz`` files, their
``meta.json`` / ``symbol.json``, the transform ``.out`` files, the requests sent and the
backend's report into the folder, so they can replace the reconstructed fixtures; and it
settles what the fakes assume (which way k-NN distances run, endpoint answers = local scores).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

pytestmark = pytest.mark.aws

INSTANCE = "ml.m5.large"


@pytest.fixture
def live() -> dict:
    if os.environ.get("RECSYS_AWS_LIVE") != "1":
        pytest.skip("live AWS test: set RECSYS_AWS_LIVE=1 (and RECSYS_AWS_ROLE) to run it on your account; it costs money")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("sagemaker")
    if boto3.Session().get_credentials() is None:
        pytest.skip("live AWS test: no AWS credentials found (aws configure, AWS_PROFILE or AWS_ACCESS_KEY_ID)")
    role = os.environ.get("RECSYS_AWS_ROLE")
    if not role:
        pytest.skip("live AWS test: set RECSYS_AWS_ROLE to a SageMaker execution role ARN")
    out = Path(os.environ.get("RECSYS_AWS_LIVE_DIR", "sagemaker-live-artifacts")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return {"role": role, "bucket": os.environ.get("RECSYS_AWS_BUCKET"), "out": out}


def one_hot(n_users: int = 30, n_items: int = 20, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), np.stack([users, n_users + items], 1).ravel())),
                      shape=(n, n_users + n_items))  # fmt: skip
    raw = (rng.normal(size=(n_users, 3))[users] * rng.normal(size=(n_items, 3))[items]).sum(1)
    return X, (3 + raw).astype(np.float32), (raw > 0).astype(np.float32)


def test_live_round_trip(live: dict) -> None:
    from backends.sagemaker import SageMakerBackend
    from recsys.params import FMParams, KNNParams
    from tests.reference import knn_brute_force

    out: Path = live["out"]
    backend = SageMakerBackend(role=live["role"], bucket=live["bucket"], job_name_prefix="recsys-live",
                               train_instance_type=INSTANCE, transform_instance_type=INSTANCE,
                               endpoint_instance_type=INSTANCE, evaluate_on_endpoint=True, poll_seconds=15)  # fmt: skip
    try:
        X, y, yc = one_hot()
        reg = backend.fit_fm(X, y, FMParams(num_factors=4, epochs=1), eval_set=(X[:50], y[:50]))
        clf = backend.fit_fm(X, yc, FMParams(num_factors=4, epochs=1, predictor_type="binary_classifier"),
                             eval_set=(X[:50], yc[:50]))  # fmt: skip
        items, users = clf.V[30:].astype(np.float32), clf.V[:30].astype(np.float32)
        index = backend.build_knn(items, KNNParams(k=10, index_metric="INNER_PRODUCT"))
        ids, _ = index.search(users, 5)
        report = backend.report()
    finally:
        backend.close()
    s3 = backend.aws.client("s3")
    for name, fm in (("regressor", reg), ("classifier", clf)):
        bucket, _, key = fm.metadata["model_s3_uri"][5:].partition("/")
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        (out / name).mkdir(exist_ok=True)
        (out / name / "model.tar.gz").write_bytes(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            algo = tf.extractfile("model_algo-1").read()
        with zipfile.ZipFile(io.BytesIO(algo)) as zf:
            for member in zf.namelist():
                if member.endswith(".json"):
                    (out / name / member).write_bytes(zf.read(member))
    for job in index.transform_jobs:
        bucket, _, prefix = backend.aws.uri("transform", job)[5:].partition("/")
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            (out / "transform").mkdir(exist_ok=True)
            (out / "transform" / obj["Key"].rsplit("/", 1)[-1]).write_bytes(
                s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "requests.json").write_text(json.dumps(backend.plan_requests(), indent=2, default=str))
    print(f"\nreal SageMaker artifacts saved in {out}")

    np.testing.assert_array_equal(ids, knn_brute_force(items, users, 5)[0])
    assert all(c["max_abs_difference"] < 1e-4 for c in report["endpoint_checks"]) and len(report["endpoint_checks"]) == 2
    (knn,) = report["knn"]
    assert knn["distances_match_local"] is not None  # the first real run settles the question
