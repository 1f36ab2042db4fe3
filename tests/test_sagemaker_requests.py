"""What the SageMaker backend sends: the dry-run plan is exactly what a (moto) run sends, data is
sharded over the instances, every request is checked against botocore's service model before
anything is paid for, spot / VPC / KMS reach the requests, and the hyperparameters and images
are those of the SageMaker Python SDK's own estimators."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sagemaker")
pytest.importorskip("moto")
pytest.register_assert_rewrite("tests.sagemaker_fakes")

from backends.base import TrainOptions  # noqa: E402
from backends.sagemaker import SageMakerBackend, format_plan  # noqa: E402
from backends.sagemaker.fm import fm_hyperparameters  # noqa: E402
from backends.sagemaker.knn import knn_hyperparameters  # noqa: E402
from backends.sagemaker.plan import body_summary  # noqa: E402
from recsys.errors import ConfigError  # noqa: E402
from recsys.params import FMParams, KNNParams  # noqa: E402
from tests.reference import knn_brute_force  # noqa: E402
from tests.sagemaker_fakes import BUCKET, REGION, ROLE  # noqa: E402
from tests.test_sagemaker_backend import FM_IMAGE, KNN_IMAGE, one_hot_problem  # noqa: E402

pytest_plugins = ["tests.sagemaker_fakes"]


def run_pipeline(backend, X, y, yc, V, Q):
    """What a run does on a backend: two FMs (one scored on an endpoint), a k-NN index and a search."""
    fm = backend.fit_fm(X, y, FMParams(num_factors=4), eval_set=(X[:10], y[:10]),
                        options=TrainOptions(metadata={"n_users": 12, "n_items": 9}))  # fmt: skip
    fmc = backend.fit_fm(X, yc, FMParams(num_factors=4, predictor_type="binary_classifier"))
    index = backend.build_knn(V, KNNParams(k=10))
    found = index.search(Q, 5)
    with backend.deploy(fmc) as endpoint:
        predictions = endpoint.predict(X[:20])
    backend.close()
    return fm, fmc, index, found, predictions


def problem():
    X, y = one_hot_problem()
    _, yc = one_hot_problem(classifier=True)
    rng = np.random.default_rng(0)
    return X, y, yc, rng.normal(size=(9, 5)), rng.normal(size=(12, 5))


# ---- the dry run --------------------------------------------------------------------------------
def test_dry_run_plans_everything_without_any_network_call(no_aws):
    backend = SageMakerBackend(dry_run=True, bucket="my-bucket", prefix="exp/1", region=REGION)
    fm, fmc, index, (ids, scores), predictions = run_pipeline(backend, *problem())
    assert no_aws == []

    assert [e.kind for e in backend.plan] == [
        "upload", "upload", "training_job",                         # FM regressor (train + test)
        "upload", "training_job",                                   # FM classifier
        "upload", "training_job",                                   # k-NN index
        "model", "upload", "transform_job",                         # k-NN search
        "model", "endpoint_config", "endpoint", "invoke_endpoint",  # deploy + predict
        "delete_endpoint", "delete_endpoint_config", "delete_model",  # ... and delete
        "delete_model",                                             # the k-NN model, at close()
    ]  # fmt: skip
    assert not any(e.executed for e in backend.plan)
    train = [e for e in backend.plan if e.kind == "training_job"]
    assert [e.image_uri for e in train] == [FM_IMAGE, FM_IMAGE, KNN_IMAGE]
    assert all((e.instance_type, e.instance_count) == ("ml.m4.xlarge", 1) for e in train)
    assert train[0].hyperparameters == fm_hyperparameters(FMParams(num_factors=4), 21)
    assert train[1].request["HyperParameters"]["predictor_type"] == "binary_classifier"
    assert train[2].hyperparameters["k"] == "9" and train[2].hyperparameters["sample_size"] == "9"
    assert list(train[0].inputs) == ["train", "test"]
    channels = train[0].request["InputDataConfig"]
    assert [c["DataSource"]["S3DataSource"]["S3DataDistributionType"] for c in channels] == ["FullyReplicated"] * 2
    uris = [u for e in backend.plan for u in (*e.inputs.values(), e.output_path, e.name) if u and u.startswith("s3://")]
    assert uris and all(u.startswith("s3://my-bucket/exp/1/") for u in uris)
    transform = backend.plan[9]
    assert (transform.accept, transform.content_type) == ("application/jsonlines; verbose=true",
                                                          "application/x-recordio-protobuf")  # fmt: skip
    assert (transform.instance_type, transform.details["split_type"]) == ("ml.m4.xlarge", "RecordIO")
    assert (backend.plan[12].instance_type, backend.plan[12].instance_count) == ("ml.c5.xlarge", 1)
    assert backend.plan[10].request["PrimaryContainer"]["ModelDataUrl"] == fmc.metadata["model_s3_uri"]
    assert backend.plan[13].details["rows"] == 20 and len(backend.plan[13].bodies) == 1
    assert train[0].request["RoleArn"].startswith("<role")  # no role needed to plan

    # Placeholders of the right shapes let a whole pipeline run through.
    assert fm.metadata["dry_run"] and fm.metadata["n_users"] == 12
    assert fm.V.shape == (21, 4) and not fm.V.any() and fmc.is_classifier
    assert scores.shape == ids.shape == (12, 5) and (ids == -1).all() and np.isneginf(scores).all()
    assert predictions == [{"score": 0.0, "predicted_label": 0.0}] * 20
    assert backend.report() == {}

    text = format_plan(backend.plan, dry_run=True)
    assert text.startswith("SageMaker plan: 18 steps (dry run: nothing was created)")
    for needle in (FM_IMAGE, KNN_IMAGE, "1 x ml.m4.xlarge", "1 x ml.c5.xlarge", "feature_dim=21",
                   "index_metric=INNER_PRODUCT", "application/jsonlines; verbose=true", "s3://my-bucket/exp/1/models",
                   "deleted with its endpoint config and model", "1 object, FullyReplicated"):  # fmt: skip
        assert needle in text
    assert backend.format_plan() == text
    requests = backend.plan_requests()
    assert [r["api"] for r in requests][:3] == ["s3.upload_file", "s3.upload_file", "sagemaker.create_training_job"]
    assert requests[2]["request"] == train[0].request
    json.dumps(requests)  # plan.json material


_STAMP = re.compile(r"-\d{8}-\d{6}-[0-9a-f]{4}")


def _normal(value):
    """Names without their time stamp (a dry run and a real run differ in those only)."""
    return json.loads(_STAMP.sub("-<stamp>", json.dumps(value, sort_keys=True)))


def sent_as_plan(sent):
    """The fake's record of what the backend sent, in the plan's vocabulary."""
    out, rows = [], {}
    for api, params in sent:
        if api == "s3.put_object":
            api = "s3.upload_file"
        if api == "sagemaker-runtime.invoke_endpoint":
            start = rows.get(params["EndpointName"], 0)
            n = len(json.loads(params["Body"])["instances"])
            params = {**params, "Body": body_summary(start, start + n, len(params["Body"]))}
            rows[params["EndpointName"]] = start + n
        out.append({"api": api, "request": params})
    return _normal(out)


def test_dry_run_requests_are_exactly_what_a_moto_run_sends(make_sagemaker_backend, sagemaker_fake):
    options = {"bucket": BUCKET, "prefix": "recsys-test", "role": ROLE, "region": REGION,
               "evaluate_on_endpoint": True, "max_payload_bytes": 1500, "tags": {"team": "recs"}}  # fmt: skip
    real = make_sagemaker_backend(**options)
    dry = SageMakerBackend(dry_run=True, **options)
    for backend in (real, dry):
        run_pipeline(backend, *problem())
    planned = _normal([{"api": r["api"], "request": r["request"]} for r in dry.plan_requests()])
    assert sent_as_plan(sagemaker_fake.sent) == planned
    apis = [r["api"] for r in planned]
    assert apis.count("sagemaker-runtime.invoke_endpoint") > 2  # batched under max_payload_bytes
    assert apis.count("sagemaker.create_endpoint") == 2  # the regressor's check, then deploy()
    assert all(e.executed for e in real.plan) and not any(e.executed for e in dry.plan)


def test_run_writes_plan_json(tmp_path, no_aws):
    from recsys.pipeline import run

    out = tmp_path / "out"
    result = run({"sagemaker": {"bucket": BUCKET, "role": ROLE, "region": REGION}}, dry_run=True, show_progress=False,
                 backend="sagemaker", preset="tiny", out=str(out))  # fmt: skip
    assert no_aws == []
    written = json.loads((out / "plan.json").read_text())
    assert result.files["plan"] == out / "plan.json" and sorted(p.name for p in out.iterdir()) == ["plan.json"]
    assert [r["api"] for r in written] == [r["api"] for r in _plan_of(result)]
    assert written[-1]["api"] == "sagemaker.delete_model"  # the k-NN model, deleted when the run ends
    assert all(r["request"] for r in written)


def _plan_of(result):
    text = result.plan.splitlines()
    steps = [line for line in text if re.match(r"^\s*\d+\. ", line)]
    apis = [line.split()[-1] for line in text if line.strip().startswith("api ")]
    assert len(steps) == len(apis)
    return [{"api": a} for a in apis]


# ---- scale-out -----------------------------------------------------------------------------------
def test_dry_run_shards_training_and_transform_over_the_instances(no_aws):
    backend = SageMakerBackend(dry_run=True, bucket="my-bucket", region=REGION, train_instance_count=3,
                               transform_instance_count=2)  # fmt: skip
    run_pipeline(backend, *problem())
    fm_job, _, knn_job = [e for e in backend.plan if e.kind == "training_job"]
    distribution = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3DataDistributionType"]
                    for c in fm_job.request["InputDataConfig"]}  # fmt: skip
    assert distribution == {"train": "ShardedByS3Key", "test": "FullyReplicated"}
    uploads = [e.name for e in backend.plan if e.kind == "upload"]
    train_prefix = fm_job.inputs["train"]
    assert len([u for u in uploads if u.startswith(train_prefix)]) >= 3
    assert len([u for u in uploads if u.startswith(fm_job.inputs["test"])]) == 1
    assert knn_job.request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert len([u for u in uploads if u.startswith(knn_job.inputs["train"])]) == 3
    assert knn_job.hyperparameters["sample_size"] == "9"  # 3 instances x the largest shard (3 of 9 items)
    (transform,) = [e for e in backend.plan if e.kind == "transform_job"]
    assert transform.details["input objects"] == 2 and transform.request["TransformResources"]["InstanceCount"] == 2
    assert len([u for u in uploads if u.startswith(transform.inputs["data"])]) >= 2
    text = backend.format_plan()
    assert "train data" in text and "3 objects, ShardedByS3Key" in text and "input objects          2" in text


def test_sharded_run_indexes_every_item_once_and_trains_on_every_row(make_sagemaker_backend, sagemaker_fake):
    backend = make_sagemaker_backend(train_instance_count=3, transform_instance_count=2)
    X, y = one_hot_problem(n=50)
    fm = backend.fit_fm(X, y, FMParams(num_factors=2), eval_set=(X[:7], y[:7]))
    job = fm.metadata["training_job_name"]
    reads = sagemaker_fake.reads[job]
    assert [len(keys) for keys in reads["train"]] == [1, 1, 1]  # one shard per instance
    assert len({k for keys in reads["train"] for k in keys}) == 3
    assert all(keys == reads["test"][0] for keys in reads["test"])  # the test channel is replicated
    X_sent, y_sent = sagemaker_fake.channels[job]["train"]
    rows = lambda A, b: sorted(map(tuple, np.column_stack([A.toarray(), b]).tolist()))  # noqa: E731
    assert rows(X_sent, y_sent) == rows(X, y)  # every row once, shuffled over the shards
    assert not np.array_equal(X_sent.toarray(), X.toarray())

    rng = np.random.default_rng(4)
    V, Q = rng.normal(size=(31, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    index = backend.build_knn(V, KNNParams(k=9))  # one deeper than searched: a tie at the cut would show
    np.testing.assert_array_equal(np.sort(sagemaker_fake.indexed[index.job_name]), np.arange(31))
    ids, scores = index.search(Q, 8)
    np.testing.assert_array_equal(ids, knn_brute_force(V, Q, 8)[0])
    (tjob,) = index.transform_jobs
    assert len(sagemaker_fake.transforms[tjob]["queries"]) == 5
    assert index.report()["completed_rows"] == 0


# ---- checked before anything is paid for ----------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"train_instance_type": "ml.m4.xlarg"}, r"train_instance_type: .*'ml.m4.xlarg' is not a valid TrainingInstanceType; did you mean ml.m4.xlarge"),
    ({"transform_instance_type": "ml.c5.huge"}, r"transform_instance_type: .*TransformInstanceType"),
    ({"endpoint_instance_type": "c5.xlarge"}, r"endpoint_instance_type: .*ProductionVariantInstanceType.*ml.c5.xlarge"),
    ({"role": "SageMakerRole"}, r"\[sagemaker\] role: .*RoleArn"),
    ({"volume_kms_key": "key with spaces"}, r"\[sagemaker\] volume_kms_key: .*VolumeKmsKeyId"),
    ({"output_kms_key": "alias/my key"}, r"\[sagemaker\] output_kms_key: .*KmsKeyId"),
    ({"subnets": ["subnet_1"], "security_group_ids": ["sg-1"]}, r"\[sagemaker\] subnets: .*Subnets\[0\]"),
    ({"subnets": ["subnet-1"]}, r"subnets and security_group_ids go together"),
    ({"job_name_prefix": "my_jobs"}, r"\[sagemaker\] job_name_prefix: .*Name 'my_jobs-"),
    ({"use_spot_instances": True, "max_wait": 7200}, r"max_wait is 7200 s .* 3600 s"),
    ({"max_wait": 600}, r"max_wait only applies to spot training"),
    ({"region": "US East"}, r"no 'factorization-machines' image for region 'US East'.*\[sagemaker\] region"),
    ({"buckt": "x"}, r"unknown \[sagemaker\] option 'buckt'; valid options: bucket, prefix"),
    ({"train_instance_count": "2"}, r"train_instance_count must be a positive integer"),
    ({"bucket": "s3://my-bucket/data"}, r"bucket must be a bucket name only"),
    ({"max_payload_bytes": 7_000_000}, r"max_payload_bytes must be at least 1024 and at most 6291456"),
    ({"tags": {"team": 1}}, r"tags must map non-empty strings"),
    ({"keep_endpoint": "yes"}, r"keep_endpoint must be true or false"),
    ({"poll_seconds": -1}, r"poll_seconds must be a non-negative number"),
    ({"poll_seconds": 10**400}, r"poll_seconds must be a non-negative number"),  # too large for a float
])  # fmt: skip
def test_a_bad_configuration_fails_before_any_call(no_aws, options, message):
    with pytest.raises(ConfigError, match=message):
        SageMakerBackend(dry_run=True, **{"region": REGION, **options})
    if "region" not in options:  # the configuration check alone catches it, without building a backend
        with pytest.raises(ConfigError, match=message):
            SageMakerBackend.check_options(options)
    assert no_aws == []


def test_option_names_of_mixed_types_are_named_not_sorted_into_a_crash(no_aws):
    with pytest.raises(ConfigError, match=r"unknown \[sagemaker\] options 1, 'buckt'"):
        SageMakerBackend.check_options({1: "x", "buckt": "y"})  # a YAML key may be a number


def test_a_valid_production_configuration_passes(no_aws):
    options = {"use_spot_instances": True, "subnets": ["subnet-0a1b2c3d"], "security_group_ids": ["sg-0a1b2c3d"],
               "volume_kms_key": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
               "output_kms_key": "alias/recsys", "train_instance_type": "ml.c5.2xlarge", "train_instance_count": 2,
               "transform_instance_type": "ml.m5.large", "endpoint_instance_type": "ml.t2.medium"}  # fmt: skip
    SageMakerBackend.check_options(options)
    backend = SageMakerBackend(dry_run=True, region=REGION, **options)
    assert backend.config.max_wait == 3600 and backend.config.runtime_seconds == 3600


def test_spot_vpc_and_kms_reach_every_request(make_sagemaker_backend, sagemaker_fake):
    kms, out_kms = "arn:aws:kms:us-east-1:123456789012:key/volume", "alias/recsys-out"
    backend = make_sagemaker_backend(use_spot_instances=True, max_wait=1800, subnets=["subnet-1", "subnet-2"],
                                     security_group_ids=["sg-1"], volume_kms_key=kms, output_kms_key=out_kms)  # fmt: skip
    X, y = one_hot_problem()
    backend.fit_fm(X, y, FMParams(num_factors=2))
    index = backend.build_knn(np.random.default_rng(0).normal(size=(6, 3)), KNNParams(k=3))
    index.search(np.ones((2, 3)), 2)
    sent = {api: params for api, params in sagemaker_fake.sent}
    job = sent["sagemaker.create_training_job"]
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800, "MaxWaitTimeInSeconds": 1800}
    assert job["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    assert job["ResourceConfig"]["VolumeKmsKeyId"] == kms and job["OutputDataConfig"]["KmsKeyId"] == out_kms
    assert sent["sagemaker.create_model"]["VpcConfig"] == job["VpcConfig"]
    transform = sent["sagemaker.create_transform_job"]
    assert transform["TransformOutput"]["KmsKeyId"] == out_kms and transform["TransformResources"]["VolumeKmsKeyId"] == kms
    jobs = backend.report()["jobs"]
    training = [j for j in jobs if j["kind"] == "training"]
    assert all(j["spot"] and j["billable_seconds"] == 30 and j["training_seconds"] == 100 for j in training)
    assert all(j["spot_savings_percent"] == 70.0 for j in training)  # (1 - 30 / 100) * 100, as AWS defines it


# ---- the SDK as the reference ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdk():
    """The SDK's FactorizationMachines and KNN estimators, built once on an offline session
    (building one costs seconds; the tests set their hyperparameters as ``fit()`` would)."""
    import boto3
    import sagemaker

    from tests.sagemaker_fakes import TELEMETRY_OFF

    boto = boto3.Session(region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    session = sagemaker.Session(boto_session=boto, sagemaker_config=TELEMETRY_OFF, default_bucket="b")
    common = {"role": ROLE, "instance_count": 1, "instance_type": "ml.m4.xlarge", "sagemaker_session": session,
              "data_location": "s3://b/x/"}  # fmt: skip
    return {"fm": sagemaker.FactorizationMachines(**common), "knn": sagemaker.KNN(**common)}


def sdk_hyperparameters(estimator, values):
    for name, value in values.items():  # None unsets, as in the constructor
        setattr(estimator, name, value)
    return estimator.hyperparameters()


FM_GRID = [
    FMParams(),
    FMParams(num_factors=4, predictor_type="binary_classifier", epochs=3, mini_batch_size=16),
    FMParams(bias_lr=1, linear_lr=0, factors_lr=2, bias_wd=0, linear_wd=1, factors_wd=3),  # ints where floats go
    FMParams(clip_gradient=5.0, eps=1e-8, rescale_grad=0.5, bias_init_method="uniform", bias_init_scale=0.3,
             linear_init_method="constant", linear_init_value=-1, factors_init_method="normal", factors_init_sigma=1e-3),
    FMParams(num_factors=128, factors_init_method="uniform", factors_init_scale=2, epochs=50),
]  # fmt: skip


@pytest.mark.parametrize("params", FM_GRID, ids=range(len(FM_GRID)))
def test_fm_hyperparameters_equal_the_sdk_estimators(sdk, params):
    values = {n: getattr(params, n) for n in FMParams.SAGEMAKER_NAMES}
    assert fm_hyperparameters(params, 377) == sdk_hyperparameters(sdk["fm"], {**values, "feature_dim": 377})


KNN_GRID = [
    (KNNParams(), 1000, 1),
    (KNNParams(k=5000, index_metric="L2"), 3000, 1),  # k above SageMaker's limit: 1024 is sent
    (KNNParams(k=10, index_type="faiss.IVFFlat", faiss_index_ivf_nlists=16, index_metric="COSINE"), 500, 3),
    (KNNParams(k=7, sample_size=40, predictor_type="regressor", mini_batch_size=100), 50, 2),
]


@pytest.mark.parametrize(("params", "n", "instances"), KNN_GRID, ids=range(len(KNN_GRID)))
def test_knn_hyperparameters_equal_the_sdk_estimators(sdk, params, n, instances):
    ours = knn_hyperparameters(params, n, 33, instances)
    ivf = params.index_type == "faiss.IVFFlat"
    values = {"feature_dim": 33, "k": min(params.k, n, 1024), "mini_batch_size": params.mini_batch_size,
              "sample_size": params.sample_size or -(-n // instances) * instances, "predictor_type": params.predictor_type,
              "index_type": params.index_type, "index_metric": params.index_metric,
              "faiss_index_ivf_nlists": params.faiss_index_ivf_nlists if ivf else None}  # fmt: skip
    assert ours == sdk_hyperparameters(sdk["knn"], values)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-northeast-2", "us-gov-west-1", "cn-north-1"])
def test_image_uris_equal_the_sdk_estimators(sdk, region):
    from types import SimpleNamespace

    backend = SageMakerBackend(dry_run=True, region=region)
    for estimator, name in ((sdk["fm"], "factorization-machines"), (sdk["knn"], "knn")):
        session, estimator.sagemaker_session = estimator.sagemaker_session, SimpleNamespace(boto_region_name=region)
        try:  # the region is all training_image_uri() reads from the session
            assert backend.image_uri(name) == estimator.training_image_uri()
        finally:
            estimator.sagemaker_session = session


def test_sparse_rows_round_trip_through_the_sdk_reader(make_sagemaker_backend, sagemaker_fake):
    """What the backend uploads decodes, with the SDK's read_records, to exactly what it was given."""
    X = sp.random(40, 13, density=0.3, format="csr", random_state=3, dtype=np.float32)
    y = np.arange(40, dtype=np.float32) / 7
    fm = make_sagemaker_backend().fit_fm(X, y, FMParams(num_factors=2))
    X_sent, y_sent = sagemaker_fake.channels[fm.metadata["training_job_name"]]["train"]
    np.testing.assert_array_equal(X_sent.toarray(), X.toarray())
    np.testing.assert_array_equal(y_sent, y)
