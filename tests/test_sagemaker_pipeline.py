"""The main job (``recsys run``) on the SageMaker backend, fully offline.

The run goes through the command line exactly as a user would start it: a TOML file with a
``[sagemaker]`` section (bucket, role, region), no session passed in -- the backend builds its
own boto3/SageMaker session, which ``AWS_ENDPOINT_URL`` points at the moto server. The fake
algorithms of ``tests/sagemaker_fakes.py`` are hooked into the backend the pipeline builds
(they train the FMs with the torch engine from the RecordIO the backend uploaded and
brute-force the k-NN transform). The torch run on the same data is the reference: with the
same trainer and seed the models, and so the metrics and recommendations, must agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sagemaker")
pytest.importorskip("moto")
pytest.register_assert_rewrite("tests.sagemaker_fakes")

from backends.sagemaker.artifacts import fm_model_tar_bytes  # noqa: E402
from backends.sagemaker.fm import fm_hyperparameters  # noqa: E402
from recsys.cli import main  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.data.schema import ITEM, USER  # noqa: E402
from recsys.model import FittedFM  # noqa: E402
from tests.sagemaker_fakes import BUCKET, REGION, ROLE  # noqa: E402

# The moto server and fake-algorithm fixtures (aws_env, sagemaker_fake, ...).
pytest_plugins = ["tests.sagemaker_fakes"]

TINY = ["--preset", "tiny", "-q"]
K = 100  # the default [knn] k; the tiny catalogue (44 videos) is smaller
PREFIX = "recsys-run"
FM_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/factorization-machines:1"
KNN_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/knn:1"
NOTHING_LEFT = {"endpoints": [], "endpoint_configs": [], "models": []}
RECOMMENDATION_COLUMNS = ["customer_id", "rank", "product_id", "product_title", "score", "source"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(cache_dir))


def sagemaker_config(path: Path) -> Path:
    """What a user writes to run on SageMaker: bucket, role, region (+ a prefix, no polling
    delay since the fake jobs finish at once)."""
    path.write_text(
        f'backend = "sagemaker"\n[sagemaker]\nbucket = "{BUCKET}"\nrole = "{ROLE}"\nregion = "{REGION}"\n'
        f'prefix = "{PREFIX}"\npoll_seconds = 0.0\n'
    )
    return path


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The reference: the torch backend with the settings SageMaker runs (the lab's SGD FM) and
    the ranking loss SageMaker resolves "auto" to."""
    root = tmp_path_factory.mktemp("torch")
    config = root / "torch.toml"
    config.write_text('lab = true\n[ranking]\nloss = "classifier"\n')
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_CACHE_DIR", str(cache_dir))
        assert main(["run", *TINY, "--config", str(config), "--out", str(out)]) == 0
    return out


@pytest.fixture
def on_sagemaker(
    sagemaker_fake, sagemaker_session, monkeypatch: pytest.MonkeyPatch
) -> SimpleNamespace:
    """Hook the fake algorithms into every real SageMakerBackend the pipeline builds.

    Returns ``fake`` (the :class:`FakeSageMaker`), ``backends`` (those built) and ``sm`` (a
    SageMaker client on moto, to look at what is left)."""
    from backends.sagemaker import SageMakerBackend

    original = SageMakerBackend.__init__
    made: list = []

    def init(self, **options):
        original(self, **options)
        if not self.dry_run:
            assert options.get("session") is None  # the backend builds its own session
            sagemaker_fake.install(self)
            made.append(self)

    monkeypatch.setattr(SageMakerBackend, "__init__", init)
    return SimpleNamespace(
        fake=sagemaker_fake, backends=made, sm=sagemaker_session.sagemaker_client
    )


def recsys_run_on_sagemaker(config: Path, out: Path, *flags: str) -> int:
    """``recsys run --preset tiny -q --backend sagemaker --config CONFIG --out OUT [flags]``."""
    return main(
        ["run", *TINY, "--backend", "sagemaker", "--config", str(config), "--out", str(out), *flags]
    )


def training_jobs(sm) -> list[dict]:
    jobs = sm.list_training_jobs(SortBy="CreationTime", SortOrder="Ascending")[
        "TrainingJobSummaries"
    ]
    return [sm.describe_training_job(TrainingJobName=j["TrainingJobName"]) for j in jobs]


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def no_leftovers(parent: Path) -> list[str]:
    """Temporary directories a run would leave next to its --out (none expected)."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
def test_run_on_sagemaker_writes_what_the_torch_run_writes_and_agrees_with_it(
    on_sagemaker: SimpleNamespace,
    torch_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "sagemaker"
    config = sagemaker_config(tmp_path / "sagemaker.toml")
    assert recsys_run_on_sagemaker(config, out) == 0
    stdout = capsys.readouterr().out
    assert "FM regressor: test RMSE" in stdout and f"outputs in {out}/" in stdout

    # -- the same outputs (the k-NN index stays in SageMaker; nothing else differs) --
    sm_files, torch_files = files_under(out), files_under(torch_run)
    assert sm_files == {f for f in torch_files if not f.startswith("knn/")}
    assert {"config.toml", "metrics.json", "recommendations.parquet", "report.html"} <= sm_files
    assert no_leftovers(tmp_path) == []
    cfg = load_config(out / "config.toml")
    assert cfg.backend == "sagemaker"
    assert cfg.sagemaker == load_config(config).sagemaker  # bucket, role, region, ...
    assert (cfg.sagemaker["bucket"], cfg.sagemaker["role"]) == (BUCKET, ROLE)
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["backend"] == "sagemaker" and "knn_index" not in run_info["files"]
    html = (out / "report.html").read_text()
    assert (
        html.startswith("<!DOCTYPE html>") and "FM regressor" in html and "Recommendations" in html
    )

    # -- metrics.json: same keys; the same numbers (same trainer, same seed, lossless I/O) --
    m_sm = json.loads((out / "metrics.json").read_text())
    m_torch = json.loads((torch_run / "metrics.json").read_text())
    assert m_sm.keys() - {"sagemaker"} == m_torch.keys()
    for section in m_torch:
        if isinstance(m_torch[section], dict):
            assert m_sm[section].keys() == m_torch[section].keys(), section
    assert m_sm["run"]["backend"] == "sagemaker" and m_sm["run"]["objective"] == "ranking"
    same = (
        "data",
        "regressor",
        "classifier",
        "ranking",
        "ranking_classifier_knn",
        "customer_views",
    )
    for section in same:
        assert m_sm[section] == m_torch[section], section

    # -- the models: SageMaker's (read back from model.tar.gz) equal torch's bit for bit --
    jobs = training_jobs(on_sagemaker.sm)
    assert [j["TrainingJobStatus"] for j in jobs] == ["Completed"] * 4
    names = [j["TrainingJobName"] for j in jobs]
    for model, kind in (("regressor", "fm-reg"), ("classifier", "fm-bin"), ("ranking", "fm-bin")):
        fm_sm = FittedFM.load(out / "models" / model)
        fm_torch = FittedFM.load(torch_run / "models" / model)
        assert fm_sm.metadata["backend"] == "sagemaker" and fm_torch.metadata["backend"] == "torch"
        job = fm_sm.metadata["training_job_name"]
        assert job in names and f"-{kind}-" in job
        assert fm_sm.predictor_type == fm_torch.predictor_type
        assert fm_sm.w0 == fm_torch.w0
        np.testing.assert_array_equal(fm_sm.w, fm_torch.w)
        np.testing.assert_array_equal(fm_sm.V, fm_torch.V)
    ranking = FittedFM.load(out / "models" / "ranking")
    assert ranking.metadata["ranking_loss"] == "classifier"  # what "auto" means on SageMaker
    assert "-knn-" in names[3]

    # -- recommendations: identical lists; scores equal up to float32 k-NN distances --
    recs = pd.read_parquet(out / "recommendations.parquet")
    ref = pd.read_parquet(torch_run / "recommendations.parquet")
    assert list(recs.columns) == RECOMMENDATION_COLUMNS
    pd.testing.assert_frame_equal(recs.drop(columns=["score", "product_id", "product_title"]),
                                  ref.drop(columns=["score", "product_id", "product_title"]))  # fmt: skip
    np.testing.assert_allclose(recs["score"], ref["score"], rtol=0, atol=1e-5)
    # the same videos, except where two of them score the same to float32 rounding (SageMaker's
    # labels are re-scored locally, FAISS sums in another order): then they may swap places
    differ = np.flatnonzero(recs["product_id"].astype(str).to_numpy() != ref["product_id"].astype(str).to_numpy())
    assert len(differ) <= 1e-3 * len(recs)
    for i in differ:
        swapped = [j for j in (i - 1, i + 1) if 0 <= j < len(ref) and ref["product_id"].iloc[j] == recs["product_id"].iloc[i]]
        assert swapped and abs(ref["score"].iloc[swapped[0]] - ref["score"].iloc[i]) <= 1e-5
    assert_complete_and_unseen(recs[recs["source"] == "model"], out)

    # -- on SageMaker: one transform searched for everyone; nothing left running --
    transforms = on_sagemaker.sm.list_transform_jobs()["TransformJobSummaries"]
    # one k-NN search for the model's customers, one for everyone folded in
    assert len(transforms) == 2 and {t["TransformJobStatus"] for t in transforms} == {"Completed"}
    (backend,) = on_sagemaker.backends
    steps = [e.kind for e in backend.plan if e.kind != "upload"]
    assert steps == ["training_job"] * 4 + ["model", "transform_job", "transform_job", "delete_model"]
    assert all(e.executed for e in backend.plan)
    assert on_sagemaker.fake.state() == NOTHING_LEFT  # the k-NN model was deleted by close()

    # -- metrics.json["sagemaker"]: what every job cost, and how the k-NN search went --
    report = m_sm["sagemaker"]
    assert [j["name"] for j in report["jobs"]][:4] == names
    assert {j["name"] for j in report["jobs"][4:]} == {t["TransformJobName"] for t in transforms}
    assert all((j["instance_type"], j["instance_count"]) == ("ml.m4.xlarge", 1) for j in report["jobs"])
    assert [j["billable_seconds"] for j in report["jobs"][:4]] == [100] * 4 and report["billable_seconds"] == 400
    (knn,) = report["knn"]
    n_items = len(pd.read_parquet(out / "data" / "products.parquet"))
    n_model = len(pd.read_parquet(out / "data" / "customers.parquet"))
    assert knn["k_sent"] == n_items and knn["queries"] > n_model and knn["distances_match_local"] == "equal"
    assert knn["distance_order"] == "unsorted"  # the fake shuffles each line; the lists are right anyway
    assert report["endpoints"] == [] and report["requests"] == len(backend.plan) - 1  # the last: deleting the k-NN model


def assert_complete_and_unseen(recs: pd.DataFrame, out: Path) -> None:
    """Every customer: K recommendations or every video they have not rated; none rated."""
    customers = pd.read_parquet(out / "data" / "customers.parquet")
    products = pd.read_parquet(out / "data" / "products.parquet")
    train = pd.read_parquet(out / "data" / "train.parquet")
    seen = train.groupby(USER)[ITEM].apply(set)
    item_of = dict(zip(products["product_id"], products[ITEM], strict=True))
    user_of = dict(zip(customers["customer_id"], customers[USER], strict=True))
    assert set(recs["customer_id"]) == set(customers["customer_id"])
    for cid, group in recs.groupby("customer_id", observed=True):
        rated = seen.get(user_of[cid], set())
        items = [item_of[p] for p in group["product_id"]]
        assert len(items) == len(set(items)) == min(K, len(products) - len(rated))
        assert not set(items) & rated, f"customer {cid} was recommended a video they rated"
        assert group["rank"].tolist() == list(range(1, len(items) + 1))
        assert np.all(np.diff(group["score"].to_numpy()) <= 0)


# ---------------------------------------------------------------------------------------------
# --dry-run: the plan, and no AWS call at all
# ---------------------------------------------------------------------------------------------
def plan_blocks(text: str) -> list[dict[str, str]]:
    """Parse the printed plan into one dict per step: kind, name, purpose and its rows."""
    blocks: list[dict[str, str]] = []
    head = re.compile(
        r"^\s*\d+\. (upload|training job|model|batch transform job|delete model) (\S+)(?:  \[(.*)\])?$"
    )
    for line in text.splitlines()[1:]:
        match = head.match(line)
        if match:
            blocks.append({"kind": match[1], "name": match[2], "purpose": match[3] or ""})
        else:
            label, _, value = line.strip().partition("  ")
            blocks[-1][label.strip()] = value.strip()
    return blocks


def test_dry_run_prints_the_whole_plan_without_calling_aws(
    no_aws: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    config = sagemaker_config(tmp_path / "sagemaker.toml")
    assert recsys_run_on_sagemaker(config, out, "--dry-run") == 0
    assert no_aws == []
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]  # the requests; nothing else is written
    text = capsys.readouterr().out
    assert text.startswith("SageMaker plan: 14 steps (dry run: nothing was created)\n")
    assert text.rstrip().endswith(f"requests in {out / 'plan.json'}")
    requests = json.loads((out / "plan.json").read_text())
    assert [r["name"] for r in requests] == [b["name"] for b in plan_blocks(text.rsplit("\n", 2)[0])]

    blocks = plan_blocks(text)
    assert [b["kind"] for b in blocks] == [
        "upload", "upload", "training job",   # FM regressor: train + test channels
        "upload", "upload", "training job",   # FM classifier: train + test channels
        "upload", "training job",             # ranking FM (sampled-negatives classifier)
        "upload", "training job",             # k-NN index over the ranking model's video vectors
        "model", "upload", "batch transform job",  # k-NN search for every customer
        "delete model",                       # the k-NN model, when the run ends
    ]  # fmt: skip
    cfg = load_config(config)
    n_users, n_items = 448, 196  # the tiny preset after preparation
    train = [b for b in blocks if b["kind"] == "training job"]
    expected = [
        fm_hyperparameters(cfg.regressor, n_users + n_items),
        fm_hyperparameters(cfg.classifier, n_users + n_items),
        fm_hyperparameters(cfg.ranking.fm, n_users + 2 * n_items),  # + recent-history block
    ]
    for block, hyperparameters in zip(train, expected, strict=False):
        assert block["image"] == FM_IMAGE and block["instances"] == "1 x ml.m4.xlarge"
        assert block["hyperparameters"] == ", ".join(
            f"{k}={v}" for k, v in sorted(hyperparameters.items())
        )
        assert block["role"] == ROLE
    purposes = [b["purpose"] for b in train[:3]]
    assert purposes == ["FM regressor training", "FM classifier training", "FM ranking training"]
    knn = train[3]
    assert knn["image"] == KNN_IMAGE and knn["instances"] == "1 x ml.m4.xlarge"
    assert knn["hyperparameters"] == (
        f"feature_dim={cfg.ranking.fm.num_factors + 1}, index_metric=INNER_PRODUCT, index_type=faiss.Flat, "
        f"k={n_items}, mini_batch_size=5000, predictor_type=classifier, sample_size={n_items}"
    )
    transform = blocks[-2]
    assert transform["image"] == KNN_IMAGE and transform["instances"] == "1 x ml.m4.xlarge"
    assert transform["accept"] == "application/jsonlines; verbose=true"
    assert transform["content type"] == "application/x-recordio-protobuf"
    assert transform["model"] == knn["name"] == blocks[-4]["name"] == blocks[-1]["name"]
    assert blocks[-3]["rows"] == str(n_users)  # every customer in one transform
    for block in train:
        job = block["name"]
        assert block["output"] == f"s3://{BUCKET}/{PREFIX}/models"
        assert block["model artifact"] == f"s3://{BUCKET}/{PREFIX}/models/{job}/output/model.tar.gz"
        assert block["input train"] == f"s3://{BUCKET}/{PREFIX}/data/{job}/train/"
    uris = [v for b in blocks for v in b.values() if v.startswith("s3://")]
    assert len(uris) > 20 and all(u.startswith(f"s3://{BUCKET}/{PREFIX}/") for u in uris)


# ---------------------------------------------------------------------------------------------
# failures and Ctrl-C: clean exit status, nothing left on AWS, no outputs
# ---------------------------------------------------------------------------------------------
def test_a_failed_training_job_exits_2_with_its_failure_reason(
    on_sagemaker: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = (
        "AlgorithmError: the data has 240 features but feature_dim is 241 (caused by ValueError)"
    )
    fake = on_sagemaker.fake
    run_training_job = fake.run_training_job
    calls = []

    def second_job_fails(name: str) -> None:  # the regressor trains; the classifier fails
        calls.append(name)
        if len(calls) == 2:
            fake.training_failures.append(reason)
        run_training_job(name)

    monkeypatch.setattr(fake, "run_training_job", second_job_fails)
    out = tmp_path / "out"
    config = sagemaker_config(tmp_path / "sagemaker.toml")
    assert recsys_run_on_sagemaker(config, out, "--objective", "classifier") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    expected = rf"error: SageMaker training job recsys-fm-bin-\S+ failed: {re.escape(reason)}\. "
    assert re.match(expected, errors[0]), errors[0]
    statuses = [j["TrainingJobStatus"] for j in training_jobs(on_sagemaker.sm)]
    assert statuses == ["Completed", "Failed"]
    assert on_sagemaker.fake.state() == NOTHING_LEFT
    assert not out.exists() and no_leftovers(tmp_path) == []


def test_ctrl_c_during_the_knn_transform_exits_130_and_cleans_up(
    on_sagemaker: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    on_sagemaker.fake.interrupt_transform = True
    out = tmp_path / "out"
    config = sagemaker_config(tmp_path / "sagemaker.toml")
    assert recsys_run_on_sagemaker(config, out, "--objective", "classifier") == 130
    assert "interrupted" in capsys.readouterr().err
    (backend,) = on_sagemaker.backends
    model = [e for e in backend.plan if e.kind == "model"]
    transform = [e for e in backend.plan if e.kind == "transform_job"]
    assert len(model) == 1 and model[0].executed  # the k-NN model existed...
    assert on_sagemaker.fake.state() == NOTHING_LEFT  # ...and close() deleted it
    assert on_sagemaker.fake.stopped == [transform[0].name]  # the transform job was stopped
    desc = on_sagemaker.sm.describe_transform_job(TransformJobName=transform[0].name)
    assert desc["TransformJobStatus"] == "Stopped"
    assert not out.exists() and no_leftovers(tmp_path) == []


def test_a_surprise_in_the_first_model_stops_the_run_before_the_next_paid_job(
    on_sagemaker: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = on_sagemaker.fake
    train_fm = fake._train_fm

    def one_factor_too_many(name: str, channels: dict, hyperparameters: dict) -> bytes:
        train_fm(name, channels, hyperparameters)
        d, k = int(hyperparameters["feature_dim"]), int(hyperparameters["num_factors"])
        return fm_model_tar_bytes(FittedFM(w0=0.0, w=np.zeros(d), V=np.zeros((d, k + 1))))

    monkeypatch.setattr(fake, "_train_fm", one_factor_too_many)
    out = tmp_path / "out"
    assert recsys_run_on_sagemaker(sagemaker_config(tmp_path / "sagemaker.toml"), out) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: training job recsys-fm-reg-\S+ produced a model of shape \(644, 65\) but "
                     r"\(644, 64\) was asked for", err), err  # fmt: skip
    assert len(training_jobs(on_sagemaker.sm)) == 1  # nothing else was paid for
    assert not out.exists()
