"""End-to-end tests of the ``recsys`` command line on the built-in ``tiny`` dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.config import config_from_dict, load_config
from recsys.data.schema import ITEM, USER

K = 100
TINY = ["--preset", "tiny", "-q"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(cache_dir))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_CACHE_DIR", str(cache_dir))
    try:
        assert main(["run", *TINY, "--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


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
    assert cfg.regressor.num_factors == 64 and cfg.regressor.epochs == 25 and cfg.regressor.clip_gradient == 5.0
    assert cfg.classifier.num_factors == 128 and cfg.classifier.mini_batch_size == 512
    assert cfg.to_dict() == config_from_dict(cfg.to_dict()).to_dict()


def test_same_seed_reproduces_the_metrics(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    a, b = _metrics(tiny_run), _metrics(out)
    a.pop("timing"), b.pop("timing")
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
    assert a.regressor.epochs == 2 and a.regressor.num_factors == 64  # unspecified keys keep the lab's values
    assert a.regressor.seed == 3 and a.classifier.seed == 3  # the top-level seed feeds every stage


# ---------------------------------------------------------------------------------------------
# user mistakes: one line, non-zero exit, no traceback (unless --debug), nothing half-written
# ---------------------------------------------------------------------------------------------
def _cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ, RECSYS_CACHE_DIR=str(env_cache))
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--data", "/no/such/file.tsv"], "no such file"),
        (["run", "--data", "{tmp}/bad.tsv", "--format", "amazon"], "required column"),
        (["run", "--config", "{tmp}/bad.toml"], "'epochz'"),
        (["run", "--config", "{tmp}/missing.toml"], "config file not found"),
        (["run", *TINY, "--min-customer-ratings", "100000"], "min-customer-ratings"),
        (["recommend", "--run", "{tmp}", "--customer-id", "1"], "not a recsys run directory"),
    ],
)
def test_user_mistakes_give_one_line_errors(tmp_path: Path, cache_dir: Path, args: list[str], needle: str) -> None:
    (tmp_path / "bad.tsv").write_text("a\tb\tc\n1\t2\t3\n")
    (tmp_path / "bad.toml").write_text("[regressor]\nepochz = 3\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--out", str(tmp_path / "out")] if args[0] == "run" else \
        [a.replace("{tmp}", str(tmp_path)) for a in args]  # fmt: skip
    proc = _cli(*args, env_cache=cache_dir)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_config_key_names_the_valid_ones(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "bad.toml").write_text("[regressor]\nepochz = 3\n")
    proc = _cli("run", "--config", str(tmp_path / "bad.toml"), env_cache=cache_dir)
    assert "valid keys" in proc.stderr and "epochs" in proc.stderr


def test_debug_shows_the_traceback(tmp_path: Path, cache_dir: Path) -> None:
    proc = _cli("run", "--data", "/no/such/file.tsv", "--debug", env_cache=cache_dir)
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
