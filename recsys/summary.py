"""Metrics as text: the run summary's lines, ``recsys evaluate``'s tables and the warnings a
reader needs before trusting a figure (too few held-out ratings, lists that hold the whole
catalogue, undefined metrics). Undefined (NaN) metrics print as ``n/a``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["metric_lines", "metric_warnings", "evaluation_table", "MIN_TEST_ROWS"]


def _n(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return format(value, spec)


def _change(r: dict[str, Any]) -> str:
    improvement = r["rmse_improvement_over_naive"]
    if improvement != improvement or not r["naive_rmse"]:  # undefined, or the naive guess is exact
        return "n/a"
    return f"{abs(improvement):.1%} {'better' if improvement >= 0 else 'worse'}"


def metric_lines(m: dict[str, Any]) -> list[str]:
    """The main metrics next to their baselines, one line per model."""
    lines = []
    if r := m.get("regressor"):
        lines.append(
            f"FM regressor: test RMSE {_n(r['test_rmse'])} vs naive {_n(r['naive_rmse'])} "
            f"({_change(r)}), per-video mean {_n(r.get('item_mean_rmse'))}"
        )
    if c := m.get("classifier"):
        lines.append(
            f"FM 5-star classifier: accuracy {_n(c['accuracy'])} vs baseline {_n(c['baseline_accuracy'])} "
            f"(balanced {_n(c.get('balanced_accuracy'))} vs 0.5), AUC {_n(c['auc'])}, log loss {_n(c['log_loss'])} "
            f"vs {_n(c['baseline_log_loss'])}"
        )
    if k := m.get("ranking"):
        lines.append(
            f"recommendations ({k['objective']}): HR@10 {_n(k['hr@10'])} (popularity {_n(k['popularity_hr@10'])}), "
            f"NDCG@10 {_n(k['ndcg@10'])} ({_n(k['popularity_ndcg@10'])}), HR@100 {_n(k['hr@100'])} "
            f"({_n(k['popularity_hr@100'])}), coverage {_n(k['coverage'], '.1%')}"
        )
    return lines


#: Fewer held-out ratings than this and a test metric says little (one row gives HR 0 or 1).
MIN_TEST_ROWS = 30

_UNDEFINED = {
    ("classifier", "auc"): "AUC is undefined (n/a): the held-out ratings are all in one class (all 5 stars or none)",
    ("ranking", "mean_overlap"): "the mean overlap between lists is undefined (n/a): it needs at least two customers",
}


def metric_warnings(m: dict[str, Any], *, n_items: int | None = None) -> list[str]:
    """What a reader must know before trusting the metrics, one sentence each."""
    out = []
    n = (m.get("data") or {}).get("test_rows", (m.get("ranking") or {}).get("test_rows"))
    if n is not None and n < MIN_TEST_ROWS:
        out.append(
            f"only {n} held-out rating{'s' if n != 1 else ''}: the test metrics measure next to nothing (at least "
            f"{MIN_TEST_ROWS} are needed for a figure to mean much); use more data, or relax "
            "--min-customer-ratings / --min-product-ratings"
        )
    k = m.get("ranking")
    if isinstance(k, dict) and n_items is not None and k.get("k", 0) >= n_items:
        out.append(
            f"K = {k['k']} is not smaller than the catalogue ({n_items} videos): every list holds every unrated "
            f"video, so HR@{k['k']} is 1 and coverage is complete for any model; compare HR@10 instead"
        )
    for section, values in m.items():
        if not isinstance(values, dict) or section in ("data", "timing"):
            continue
        for key, value in values.items():
            if isinstance(value, float) and value != value:
                base = "ranking" if section.startswith("ranking") else section
                why = _UNDEFINED.get((base, key.removeprefix("popularity_")))
                out.append(f"{section}: {why}" if why else f"{section}: {key} is undefined (n/a) on this test set")
    return list(dict.fromkeys(out))


#: (label, key, baseline keys) per section of ``recsys evaluate``'s table.
_TABLE: dict[str, tuple[str, list[str], list[tuple[str, str, list[str]]]]] = {
    "regressor": ("FM regressor (star rating)", ["FM", "train mean", "per-video mean"], [
        ("RMSE", "test_rmse", ["naive_rmse", "item_mean_rmse"]),
        ("MAE", "test_mae", ["naive_mae", "item_mean_mae"]),
        ("MSE", "test_mse", ["naive_mse", "item_mean_mse"]),
    ]),
    "classifier": ("FM classifier (5 stars?)", ["FM", "majority class"], [
        ("accuracy", "accuracy", ["baseline_accuracy"]),
        ("balanced accuracy", "balanced_accuracy", ["baseline_balanced_accuracy"]),
        ("AUC", "auc", ["baseline_auc"]),
        ("log loss", "log_loss", ["baseline_log_loss"]),
        ("precision", "precision", ["baseline_precision"]),
        ("recall", "recall", ["baseline_recall"]),
        ("F1", "f1", ["baseline_f1"]),
    ]),
    "ranking": ("recommendations", ["model", "popularity"], [
        (name, key, [f"popularity_{key}"]) for name, key in (
            ("HR@10", "hr@10"), ("NDCG@10", "ndcg@10"), ("HR@100", "hr@100"), ("NDCG@100", "ndcg@100"), ("MRR", "mrr"),
            ("coverage", "coverage"), ("mean popularity", "mean_popularity"), ("mean overlap", "mean_overlap"))
    ]),
}  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _n(value, ",.4f" if abs(value) < 1e5 else ",.0f")
    return str(value)


def evaluation_table(metrics: dict[str, Any]) -> Iterator[str]:
    """``recsys evaluate``'s text: one table per model (metrics next to baselines), then the warnings."""
    for section, (title, columns, rows) in _TABLE.items():
        values = metrics.get(section)
        if not values:
            continue
        extra = f" ({values['objective']} objective, top {values['k']}, {values['test_rows']:,} held-out ratings)" \
            if section == "ranking" else ""  # fmt: skip
        table = [["", *columns]] + [[name, _cell(values.get(key)), *(_cell(values.get(b)) for b in base)]
                                    for name, key, base in rows if key in values]  # fmt: skip
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        yield f"{title}{extra}"
        for r in table:
            yield "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        yield ""
    for w in metrics.get("warnings", []):
        yield f"warning: {w}"
