"""End-to-end tests of the ``recsys`` command line on the built-in ``tiny`` dataset."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.config import config_from_dict, load_config
from recsys.data.schema import ITEM, USER
from tests.cli_helpers import run_cli

K = 100
TINY = ["--preset", "tiny", "-q"]


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(cache_dir))


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------
# outputs of a run
# ---------------------------------------------------------------------------------------------
def test_run_writes_every_output(tiny_run: Path) -> None:
    for name in ("config.toml", "metrics.json", "recommendations.parquet", "report.html", "run.json",
                 "samples.json", "exploration.json"):  # fmt: skip
        assert (tiny_run / name).is_file(), name
    for model in ("regressor", "classifier", "ranking"):
        assert (tiny_run / "models" / model / "params.npz").is_file()
    assert (tiny_run / "knn" / "index.faiss").is_file()
    for name in ("customers.parquet", "products.parquet", "train.parquet", "test.parquet"):
        assert (tiny_run / "data" / name).is_file()
    pngs = sorted(p.name for p in (tiny_run / "plots").glob("*.png"))
    for expected in ("rating_distribution.png", "reviews_by_month.png", "reviews_by_year.png",
                     "reviews_per_customer.png", "reviews_per_product.png", "regressor_predictions.png",
                     "confusion_matrix.png", "ranking_metrics.png"):  # fmt: skip
        assert expected in pngs
    assert not [p for p in tiny_run.parent.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_metrics_json_has_the_documented_keys(tiny_run: Path) -> None:
    m = _metrics(tiny_run)
    required = {
        "data": ["rows_read", "rows_skipped", "exact_duplicates_removed", "rereviews_removed", "customers", "products", "train_rows", "test_rows"],
        "regressor": ["test_mse", "test_rmse", "test_mae", "naive_mse", "naive_rmse"],
        "classifier": ["accuracy", "baseline_accuracy", "auc", "log_loss", "confusion_matrix"],
        "ranking": ["hr@10", "ndcg@10", "hr@100", "ndcg@100", "coverage", "popularity_hr@10", "popularity_hr@100"],
    }
    for section, keys in required.items():
        for key in keys:
            assert key in m[section], f"{section}.{key}"
    for stage in ("load", "explore", "prepare", "fm regressor", "fm classifier", "knn", "recommend", "total"):
        assert m["timing"][stage] >= 0
    # the high-water mark as each stage ended: never falls, and never above this process's own
    peaks = [m["peak_rss_gb"][s] for s in m["timing"] if s in m["peak_rss_gb"]]
    assert len(peaks) >= 8 and peaks == sorted(peaks) and peaks[0] > 0.05
    assert peaks[-1] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9 + 1e-3
    (tn, fp), (fn, tp) = m["classifier"]["confusion_matrix"]
    assert tn + fp + fn + tp == m["data"]["test_rows"]
    # the built-in tiny file has malformed lines on purpose; they are counted and reported
    assert m["data"]["rows_skipped"] > 0 and m["data"]["skipped_lines"]
    assert m["ranking"]["objective"] == "ranking"
    assert m["data"]["train_rows"] + m["data"]["test_rows"] == m["data"]["ratings_after_filter"]


def test_recommendations_are_complete_and_exclude_seen_items(tiny_run: Path) -> None:
    everyone = pd.read_parquet(tiny_run / "recommendations.parquet")
    assert list(everyone.columns) == ["customer_id", "rank", "product_id", "product_title", "score", "source"]
    customers = pd.read_parquet(tiny_run / "data" / "customers.parquet")
    products = pd.read_parquet(tiny_run / "data" / "products.parquet")
    train = pd.read_parquet(tiny_run / "data" / "train.parquet")
    n_items = len(products)
    recs = everyone[everyone["source"] == "model"]
    by_customer = recs.groupby("customer_id", observed=True)
    assert set(by_customer.groups) == set(customers["customer_id"])
    seen = train.groupby(USER)[ITEM].apply(set)
    item_of = dict(zip(products["product_id"], products[ITEM], strict=True))
    user_of = dict(zip(customers["customer_id"], customers[USER], strict=True))
    for cid, group in by_customer:
        u = user_of[cid]
        items = [item_of[p] for p in group["product_id"]]
        assert len(items) == len(set(items))
        assert not set(items) & seen.get(u, set()), f"customer {cid} got an already-rated video"
        # K recommendations, or every unrated video when the catalogue is smaller than K
        assert len(items) == min(K, n_items - len(seen.get(u, set())))
        assert group["rank"].tolist() == list(range(1, len(items) + 1))
        assert np.all(np.diff(group["score"].to_numpy()) <= 1e-12)


def test_every_customer_gets_a_list_and_fold_in_skips_what_they_watched(tiny_run: Path) -> None:
    """Customers outside the model (the long-tail filter dropped them) are folded in from
    what they watched; those who watched nothing in the catalogue get the popular videos."""
    from recsys.data.loaders import load_amazon_reviews
    from recsys.pipeline import builtin_dataset

    frame, _ = load_amazon_reviews(builtin_dataset("tiny"))
    everyone = pd.read_parquet(tiny_run / "recommendations.parquet")
    assert set(everyone["customer_id"]) == set(frame["customer_id"].dropna())
    assert everyone.groupby("customer_id")["source"].nunique().max() == 1  # one source per customer
    products = set(pd.read_parquet(tiny_run / "data" / "products.parquet")["product_id"])
    watched = frame.groupby("customer_id")["product_id"].apply(lambda p: set(p) & products)
    sources = everyone.groupby("customer_id")["source"].first()
    folded = sources.index[sources == "fold_in"]
    assert len(folded) and all(watched[c] for c in folded)
    for cid, group in everyone[everyone["source"] == "fold_in"].groupby("customer_id"):
        assert not set(group["product_id"]) & watched[cid], f"customer {cid} got a video they watched"
        assert np.all(np.diff(group["score"].to_numpy()) <= 1e-6)
    popular = sources.index[sources == "popularity"]
    assert all(not watched[c] for c in popular)
    assert everyone.loc[everyone["source"] == "popularity", "score"].isna().all()
    counts = _metrics(tiny_run)["recommendations"]
    assert (counts["model"], counts["fold_in"], counts["popularity"]) == (
        int((sources == "model").sum()), len(folded), len(popular))


def test_report_is_self_contained_html(tiny_run: Path) -> None:
    html = (tiny_run / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    for heading in ("Dataset", "Exploration", "FM regressor", "FM classifier", "Recommendations", "Sample customers"):
        assert heading in html
    assert html.count("data:image/png;base64,") >= 8
    assert "src=\"http" not in html and "href=\"http" not in html  # nothing fetched from elsewhere


def test_duplicate_counts_agree_in_metrics_exploration_and_report(tiny_run: Path, cache_dir: Path) -> None:
    from recsys.data.loaders import load_amazon_reviews

    frame, _ = load_amazon_reviews(next((cache_dir / "datasets").glob("amazon_reviews_tiny_*.tsv")))
    cols = ["customer_id", "product_id", "product_title", "star_rating", "review_date"]
    exact = int(frame.duplicated(cols).sum())
    rereviews = int(frame.drop_duplicates(cols).duplicated(["customer_id", "product_id"]).sum())
    d = _metrics(tiny_run)["data"]
    assert (d["exact_duplicates_removed"], d["rereviews_removed"]) == (exact, rereviews)
    ex = json.loads((tiny_run / "exploration.json").read_text())
    assert (ex["exact_duplicate_rows"], ex["rereviews"]) == (exact, rereviews)
    html = (tiny_run / "report.html").read_text()
    assert f"<b>{exact:,}</b><span>exact duplicate rows removed</span>" in html
    assert f"<b>{rereviews:,}</b><span>re-reviews removed (latest kept)</span>" in html


def test_effective_config_round_trips(tiny_run: Path) -> None:
    cfg = load_config(tiny_run / "config.toml")
    assert cfg.data.preset == "tiny"
    # locally the rating models are the Bayesian FM measured best (recsys.config.LOCAL_BEST) ...
    assert (cfg.regressor.solver, cfg.regressor.num_factors, cfg.regressor.mcmc_samples) == ("mcmc", 8, 60)
    assert (cfg.classifier.solver, cfg.classifier.num_factors, cfg.classifier.mcmc_samples) == ("mcmc", 8, 100)
    assert cfg.to_dict() == config_from_dict(cfg.to_dict()).to_dict()
    # ... and --lab (lab = true) gives the lab's SageMaker settings
    lab = config_from_dict({**cfg.to_dict(), "lab": True, "regressor": {}, "classifier": {}})
    assert lab.regressor.solver == "sgd" and lab.regressor.num_factors == 64 and lab.regressor.epochs == 25
    assert lab.regressor.clip_gradient == 5.0 and lab.classifier.num_factors == 128 and lab.classifier.mini_batch_size == 512


def test_same_seed_reproduces_the_metrics(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    a, b = _metrics(tiny_run), _metrics(out)
    for m in (a, b):  # how long and how much memory: the machine, not the seed
        m.pop("timing"), m.pop("peak_rss_gb")
    assert a == b
    pd.testing.assert_frame_equal(pd.read_parquet(tiny_run / "recommendations.parquet"),
                                  pd.read_parquet(out / "recommendations.parquet"))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the other subcommands
# ---------------------------------------------------------------------------------------------
def test_recommend_from_a_saved_run(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = pd.read_parquet(tiny_run / "recommendations.parquet")
    cid = recs["customer_id"].iloc[0]
    assert main(["recommend", "--run", str(tiny_run), "--customer-id", str(cid), "--customer-id", "no-such-customer",
                 "-k", "5", "--json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    mine = [r for r in rows if str(r["customer_id"]) == str(cid)]
    expected = recs[recs["customer_id"] == cid].head(5)
    assert [r["product_id"] for r in mine] == expected["product_id"].tolist()
    np.testing.assert_allclose([r["score"] for r in mine], expected["score"], rtol=1e-6)
    unknown = [r for r in rows if r["customer_id"] == "no-such-customer"]
    assert len(unknown) == 5 and all(r["source"] == "popularity" for r in unknown)


def test_evaluate_reproduces_the_run_metrics(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--run", str(tiny_run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    m = _metrics(tiny_run)
    for key in ("test_rmse", "naive_rmse"):
        assert again["regressor"][key] == pytest.approx(m["regressor"][key], rel=1e-6)
    assert again["classifier"]["auc"] == pytest.approx(m["classifier"]["auc"], rel=1e-6)
    for key in ("hr@10", "ndcg@10", "hr@100", "popularity_hr@10"):
        assert again["ranking"][key] == pytest.approx(m["ranking"][key], rel=1e-6)


def test_eda_writes_statistics_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "eda"
    assert main(["eda", *TINY, "--out", str(out)]) == 0
    doc = json.loads((out / "exploration.json").read_text())
    assert doc["load"]["rows_read"] == doc["exploration"]["n_rows"]
    assert len(list((out / "plots").glob("*.png"))) == 5


def test_train_saves_models_without_recommendations(tmp_path: Path) -> None:
    out = tmp_path / "train"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert (out / "models" / "regressor").is_dir() and (out / "models" / "ranking").is_dir()
    assert not (out / "recommendations.parquet").exists()
    assert "regressor" in _metrics(out) and "ranking" not in _metrics(out)


def test_classifier_objective_and_csv(tmp_path: Path) -> None:
    out = tmp_path / "clf"
    assert main(["run", *TINY, "--out", str(out), "--objective", "classifier", "-k", "7", "--csv"]) == 0
    recs = pd.read_csv(out / "recommendations.csv")
    assert recs.groupby("customer_id").size().max() == 7
    m = _metrics(out)
    assert m["ranking"]["objective"] == "classifier" and not (out / "models" / "ranking").exists()


def test_movielens_and_csv_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(1, 60, n)
    items = rng.integers(1, 40, n)
    ratings = rng.integers(1, 6, n)
    ts = 900_000_000 + rng.integers(0, 10_000_000, n)
    ml = tmp_path / "u.data"
    ml.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(users, items, ratings, ts, strict=True)))
    out = tmp_path / "ml-run"
    flags = ["--min-customer-ratings", "5", "--min-product-ratings", "5", "-q"]
    assert main(["run", "--data", str(ml), "--out", str(out), *flags]) == 0
    assert _metrics(out)["data"]["rows_read"] == n
    csv = tmp_path / "ratings.csv"
    pd.DataFrame({"who": users, "what": items, "stars": ratings, "when": ts}).to_csv(csv, index=False)
    out2 = tmp_path / "csv-run"
    assert main(["run", "--data", str(csv), "--user-col", "who", "--item-col", "what", "--rating-col", "stars",
                 "--timestamp-col", "when", "--out", str(out2), *flags]) == 0  # fmt: skip
    a, b = _metrics(out), _metrics(out2)
    assert a["data"]["customers"] == b["data"]["customers"] and a["regressor"]["test_rmse"] == pytest.approx(b["regressor"]["test_rmse"])


def test_config_files_toml_and_yaml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 3\nobjective = "classifier"\n[knn]\nk = 5\n[regressor]\nepochs = 2\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("seed: 3\nobjective: classifier\nknn:\n  k: 5\nregressor:\n  epochs: 2\n")
    a, b = load_config(toml), load_config(yaml)
    assert a.to_dict() == b.to_dict()
    assert a.regressor.epochs == 2 and a.regressor.num_factors == 8  # unspecified keys keep the defaults
    assert a.regressor.seed == 3 and a.classifier.seed == 3  # the top-level seed feeds every stage


# ---------------------------------------------------------------------------------------------
# user mistakes: one line, non-zero exit, no traceback (unless --debug), nothing half-written
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--data", "/no/such/file.tsv"], "no such file"),
        (["run", "--data", "{tmp}/bad.tsv", "--format", "amazon"], "required column"),
        (["run", "--config", "{tmp}/bad.toml"], "'epochz'"),
        (["run", "--config", "{tmp}/missing.toml"], "config file not found"),
        (["run", *TINY, "--min-customer-ratings", "100000"], "min-customer-ratings"),
        (["recommend", "--run", "{tmp}", "--customer-id", "1"], "not a recsys run directory"),
        (["run", "--config", "{tmp}/latin1.toml"], "is not UTF-8 text (line 2"),
        (["run", *TINY, "--seed", "-1"], "seed must be an integer from 0 to 4294967295, got -1"),
        (["run", "--preset", "full", "--data", "{tmp}/bad.tsv"], "--preset chooses a built-in dataset"),
        (["eda", "--out", "{tmp}/bad.tsv", *TINY], "is a file, not a folder"),
    ],
)
def test_user_mistakes_give_one_line_errors(tmp_path: Path, cache_dir: Path, args: list[str], needle: str) -> None:
    (tmp_path / "bad.tsv").write_text("a\tb\tc\n1\t2\t3\n")
    (tmp_path / "bad.toml").write_text("[regressor]\nepochz = 3\n")
    (tmp_path / "latin1.toml").write_bytes("seed = 1\n# réglages\n".encode("latin-1"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--out", str(tmp_path / "out")] if args[0] == "run" else \
        [a.replace("{tmp}", str(tmp_path)) for a in args]  # fmt: skip
    proc = run_cli(*args, cache=cache_dir)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_config_key_names_the_valid_ones(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "bad.toml").write_text("[regressor]\nepochz = 3\n")
    proc = run_cli("run", "--config", str(tmp_path / "bad.toml"), cache=cache_dir)
    assert "valid keys" in proc.stderr and "epochs" in proc.stderr


def test_debug_shows_the_traceback(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_cli("run", "--data", "/no/such/file.tsv", "--debug", cache=cache_dir)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["run", *TINY, "--out", str(tmp_path)]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_interrupt_leaves_previous_outputs_untouched(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiny_run, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import recsys.report

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the outputs are being written

    monkeypatch.setattr(recsys.report, "write_report", interrupted)
    assert main(["run", *TINY, "--out", str(out), "--seed", "1"]) == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "temporary files left behind"


def test_an_unexpected_failure_is_one_line_without_its_message(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A bug (not a user mistake) exits with 1 and names where, not the message (it may quote data)."""
    import recsys.pipeline

    def broken(*_a: object, **_k: object) -> None:
        raise KeyError("first line of somebody's file")

    monkeypatch.setattr(recsys.pipeline, "run", broken)
    assert main(["run", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: KeyError in test_cli.py:") and "somebody" not in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# help and output texts
# ---------------------------------------------------------------------------------------------
def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_help_lists_only_the_options_a_command_uses(capsys: pytest.CaptureFixture[str]) -> None:
    train = _help("train", capsys)
    assert "(default recsys-train)" in train and "No k-NN" in train
    for unused in ("-k N", "--csv"):
        assert unused not in train
    assert "--test-data" not in _help("eda", capsys)
    for command in ("evaluate", "recommend"):
        assert "a folder written by `recsys run`" in _help(command, capsys)


def test_evaluate_prints_a_table_of_the_main_metrics_next_to_their_baselines(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--run", str(tiny_run)]) == 0
    out = capsys.readouterr().out.splitlines()
    m = _metrics(tiny_run)
    rows = {line.split()[0]: line.split()[1:] for line in out if line.startswith("  ") and line.split()}
    assert rows["RMSE"] == [f"{m['regressor'][k]:,.4f}" for k in ("test_rmse", "naive_rmse", "item_mean_rmse")]
    assert rows["accuracy"] == [f"{m['classifier'][k]:,.4f}" for k in ("accuracy", "baseline_accuracy")]
    assert rows["HR@10"] == [f"{m['ranking'][k]:,.4f}" for k in ("hr@10", "popularity_hr@10")]
    assert "FM regressor (star rating)" in out and any(line.startswith("recommendations (ranking objective") for line in out)
    # the tiny catalogue (196 videos) is larger than K = 100: no whole-catalogue warning
    assert not any(line.startswith("warning: K = 100 is not smaller than the catalogue") for line in out)
    assert max(len(line) for line in out if not line.startswith("warning")) < 100


def test_summary_lines_say_worse_and_n_a_instead_of_negative_better_and_nan() -> None:
    from recsys.summary import metric_lines, metric_warnings

    reg = {"test_rmse": 2.0, "naive_rmse": 0.6227, "rmse_improvement_over_naive": 1 - 2.0 / 0.6227, "item_mean_rmse": 1.0}
    clf = {"accuracy": 1.0, "baseline_accuracy": 1.0, "auc": float("nan"), "log_loss": 0.2, "baseline_log_loss": 0.3}
    lines = metric_lines({"regressor": reg, "classifier": clf})
    assert "(221.2% worse)" in lines[0] and "AUC n/a," in lines[1]
    exact = metric_lines({"regressor": {**reg, "naive_rmse": 0.0, "rmse_improvement_over_naive": 0.0}})
    assert "vs naive 0.0000 (n/a)" in exact[0]
    warnings = metric_warnings({"data": {"test_rows": 1}, "classifier": clf}, n_items=5)
    assert warnings[0].startswith("only 1 held-out rating:") and "AUC is undefined (n/a)" in warnings[1]
    assert metric_warnings({"data": {"test_rows": 30}, "classifier": {**clf, "auc": 0.7}}) == []


# ---------------------------------------------------------------------------------------------
# logs: one line per event, stage times, -q
# ---------------------------------------------------------------------------------------------
def test_logs_have_one_line_per_event_and_stage_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    assert main(["run", "--preset", "tiny", "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if lines.count(line) > 1] == []
    assert sum(line.startswith("read 36,000 rows") for line in lines) == 1
    stages = [line for line in lines if line.startswith("stage: ") and not line.endswith("so far")]
    names = [re.fullmatch(r"stage: (.+) \.\.\. \d+\.\d s(?: \(peak RSS so far \d+\.\d\d GB\))?", line).group(1) for line in stages]  # type: ignore[union-attr]
    assert names[:5] == ["load", "explore", "prepare", "fm regressor", "fm classifier"] and names[-1] == "write outputs"
    assert main(["run", "--preset", "tiny", "-q", "--out", str(tmp_path / "b")]) == 0
    quiet = capsys.readouterr()
    kept = quiet.err.splitlines()
    # -q keeps the warnings (the built-in file has malformed lines on purpose) and drops the rest
    assert kept and len(kept) < len(lines) and all("malformed" in line or "invalid UTF-8" in line for line in kept)
    assert quiet.out.startswith("data: ")


def test_a_long_stage_reports_progress_when_nothing_else_does() -> None:
    """The heartbeat of a stage (used when stderr is not a terminal): waits for its line."""
    import logging
    import threading

    from recsys.pipeline import _Timer

    seen = threading.Event()
    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if "so far" in record.getMessage():
                seen.set()

    logger = logging.getLogger("recsys")
    handler, level = Catch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        timer = _Timer(heartbeat=0.05)
        with timer("slow stage"):
            assert seen.wait(60)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert lines[0].startswith("stage: slow stage ... ") and lines[0].endswith(" s so far")
    assert lines[-1].startswith("stage: slow stage ... ") and timer.seconds["slow stage"] > 0


# ---------------------------------------------------------------------------------------------
# small data
# ---------------------------------------------------------------------------------------------
def _small_sample(path: Path, customers: int, per_customer: int, singles: int = 0) -> Path:
    """A real-looking Amazon TSV: ``customers`` customers with ``per_customer`` reviews each and
    ``singles`` customers with one."""
    from recsys.data.synthetic import generate_reviews, write_reviews_tsv

    frame = generate_reviews("tiny", 0)
    counts = frame.groupby("customer_id").size()
    many = counts[counts >= per_customer].index[:customers]
    one = counts.index.difference(many)[:singles]
    rows = [frame[frame["customer_id"] == c].head(per_customer) for c in many] + [frame[frame["customer_id"] == c].head(1) for c in one]
    write_reviews_tsv(pd.concat(rows), path, malformed=0, non_utf8=0)
    return path


SMALL = ["--min-customer-ratings", "1", "--min-product-ratings", "1", "-q"]


def test_the_ranking_objective_trains_on_small_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """49 reviews, 24 customers with 2 and one with 1: each customer's latest rating is held out,
    so no one has two training ratings to stop early on."""
    data = _small_sample(tmp_path / "small.tsv", 24, 2, singles=1)
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out"), *SMALL]) == 0
    captured = capsys.readouterr()
    assert "no validation rows to stop early on; training all 30 epochs" in captured.err
    m = _metrics(tmp_path / "out")
    n = m["data"]["test_rows"]
    assert 20 <= n <= 24 and m["ranking"]["objective"] == "ranking" and m["ranking"]["test_rows"] == n
    assert (tmp_path / "out" / "models" / "ranking" / "params.npz").is_file()
    assert any(w.startswith(f"only {n} held-out ratings") for w in m["warnings"])


def test_metrics_on_one_held_out_row_come_with_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _small_sample(tmp_path / "small.tsv", 1, 2, singles=3)
    out = tmp_path / "out"
    assert main(["run", "--data", str(data), "--out", str(out), "--objective", "classifier", *SMALL]) == 0
    stdout = capsys.readouterr().out
    m = _metrics(out)
    assert m["data"]["test_rows"] == 1 and np.isnan(m["classifier"]["auc"])
    expected = ["only 1 held-out rating: the test metrics measure next to nothing",
                "AUC is undefined (n/a): the held-out ratings are all in one class"]  # fmt: skip
    html = (out / "report.html").read_text()
    for needle in expected:
        assert any(needle in w for w in m["warnings"])
        assert any(line.startswith("warning: ") and needle in line for line in stdout.splitlines())
        assert needle in html
    assert "nan" not in stdout.lower() and "AUC n/a" in stdout
    assert "% better" not in stdout or "-" not in stdout.split("% better")[0].split("(")[-1]


def test_overrides_leave_the_callers_config_unchanged(tmp_path: Path) -> None:
    from recsys.pipeline import eda

    cfg = config_from_dict({"data": {"preset": "tiny"}, "knn": {"k": 12}})
    before = cfg.to_dict()
    eda(cfg, out=str(tmp_path / "eda"), k=7, min_customer_ratings=3)
    assert cfg.to_dict() == before
