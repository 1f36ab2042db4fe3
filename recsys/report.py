"""``report.html``: one self-contained page (inline CSS, plots embedded as data URIs) with the
dataset summary, the lab's plots, every metric next to its baseline and sample customers'
liked vs recommended videos."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

__all__ = ["render_report", "write_report"]

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
     color:#222;background:#f6f7f9;line-height:1.45}
header{background:#1f2d3d;color:#fff;padding:22px 36px}
header h1{margin:0 0 4px;font-size:24px} header p{margin:0;color:#c9d3dd;font-size:14px}
main{max-width:1640px;margin:0 auto;padding:20px 28px 60px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 24px;margin:18px 0}
h2{font-size:19px;margin:0 0 12px;border-bottom:1px solid #eee;padding-bottom:6px}
h3{font-size:15px;margin:16px 0 8px}
table{border-collapse:collapse;font-size:13.5px;margin:6px 0 12px}
th,td{padding:5px 10px;border-bottom:1px solid #eceff3;text-align:left;vertical-align:top}
th{background:#f1f4f8;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#1a7f37;font-weight:600} .worse{color:#b42318;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,480px),1fr));gap:14px}
.plots{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.plot{display:block;max-width:100%;height:auto;border:1px solid #eee;border-radius:4px}
.warnings{background:#fff7e6;border-left:4px solid #d97706}
.warnings li{margin:4px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:6px}
.card{background:#f1f4f8;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px} .card span{font-size:12px;color:#555}
.customer{border:1px solid #e6e9ee;border-radius:6px;padding:10px 14px;margin:10px 0}
.hit{background:#e6f4ea} .muted{color:#666;font-size:13px} code{background:#f1f4f8;padding:1px 4px;border-radius:3px}
"""


class _Raw(str):
    """Already-escaped HTML."""


def _model_line(section: dict[str, Any]) -> str:
    """Which solver and feature groups trained a rating model."""
    d = section.get("model") or {}
    if not d:
        return "settings in config.toml"
    how = (f"Bayesian FM (Gibbs sampling: {d['burn_in']} burn-in + {d['samples']} kept samples)"
           if d["solver"] == "mcmc" else f"SGD FM ({d['epochs']} epochs, {d['optimizer']})")  # fmt: skip
    return _e(f"{how}, {d['num_factors']} factors, feature groups: {', '.join(d['feature_groups'])}")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN: undefined on this test set (the warnings say why)
            return "n/a"
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return _e(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            numeric = j > 0 and (isinstance(cell, _Raw) or not isinstance(cell, str))  # not plain text
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{cell if isinstance(cell, _Raw) else _fmt(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _vs(model: float, baseline: float, higher_is_better: bool) -> str:
    if model != model or baseline != baseline:  # NaN: neither better nor worse
        return _Raw(_fmt(model))
    better = model > baseline if higher_is_better else model < baseline
    return _Raw(f'<span class="{"better" if better else "worse"}">{_fmt(model)}</span>')


def _metric_rows(pairs: list[tuple[str, float, float, bool]]) -> list[list[Any]]:
    return [[name, _vs(m, b, hib), b] for name, m, b, hib in pairs]


def render_report(result: Any, plot_dir: str | os.PathLike | None = None) -> str:
    """The report page as HTML text for a :class:`recsys.pipeline.RunResult`."""
    m, cfg, d, ex = result.metrics, result.config, result.metrics["data"], result.exploration

    def plot(name: str, alt: str) -> str:
        path = Path(plot_dir or "", name)
        if plot_dir is None or not path.is_file():
            return ""
        return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'

    parts: list[str] = []
    if m.get("warnings"):
        parts.append('<section class="warnings"><h2>Warnings: read these before the figures</h2><ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in m["warnings"]) + "</ul></section>")  # fmt: skip
    cards = [
        ("reviews read", _fmt(d["rows_read"])),
        ("malformed lines skipped", _fmt(d["rows_skipped"])),
        ("exact duplicate rows removed", _fmt(d["exact_duplicates_removed"])),
        ("re-reviews removed (latest kept)", _fmt(d["rereviews_removed"])),
        ("customers kept", _fmt(d["customers"])),
        ("videos kept", _fmt(d["products"])),
        ("train / test ratings", f"{d['train_rows']:,} / {d['test_rows']:,}"),
    ]
    parts.append(
        '<section><h2>Dataset</h2><div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b><span>{_e(k)}</span></div>' for k, v in cards)
        + f'</div><p class="muted">Source: {_e(d.get("source"))}. Long-tail filter: customers '
        f"with at least {d['min_customer_ratings']} ratings and videos with at least "
        f"{d['min_product_ratings']}. Split: {_e(d['split'])} (each customer's latest review by "
        "date is the test row).</p>"
    )
    if d.get("skipped_lines"):
        rows = [[str(n), r] for n, r in d["skipped_lines"]]
        parts[-1] += "<h3>Skipped lines (first few)</h3>" + _table(["line", "reason"], rows)
    if ex is not None:
        nulls = [[k, v] for k, v in ex.nulls.items()]
        q_c = ex.reviews_per_customer_quantiles
        q_p = ex.reviews_per_product_quantiles
        qrows = [[f"{float(q):g}", _Raw(f"{q_c[q]:,.4g}"), _Raw(f"{q_p[q]:,.4g}")] for q in q_c]
        parts[-1] += (
            '<div class="grid"><div><h3>Nulls per column</h3>' + _table(["column", "nulls"], nulls) + "</div>"
            "<div><h3>Reviews per customer / per video (quantiles)</h3>"
            + _table(["quantile", "per customer", "per video"], qrows) + "</div></div>"
            + "<h3>Summary</h3><ul>" + "".join(f"<li>{_e(line)}</li>" for line in ex.summary_lines()) + "</ul>"
        )  # fmt: skip
        before = d.get("rating_distribution_before", {})
        after = d.get("rating_distribution_after", {})
        stars = sorted(set(before) | set(after), key=float)
        parts[-1] += "<h3>Ratings before and after preparation</h3>" + _table(
            ["stars", "before", "after"], [[s, before.get(s, 0), after.get(s, 0)] for s in stars]
        )
    parts[-1] += "</section>"
    from .plots import EXPLORATION_PLOTS

    shown = "".join(plot(file, name.replace("_", " ").replace("product", "video"))
                    for name, file in EXPLORATION_PLOTS.items())
    parts.append(f'<section><h2>Exploration</h2><div class="plots">{shown}</div></section>')
    r = m["regressor"]
    reg_rows = _metric_rows([
        ("test MSE vs naive (train mean)", r["test_mse"], r["naive_mse"], False),
        ("test RMSE vs naive", r["test_rmse"], r["naive_rmse"], False),
        ("test MAE vs naive", r["test_mae"], r["naive_mae"], False),
        ("test RMSE vs per-video mean", r["test_rmse"], r["item_mean_rmse"], False),
    ])  # fmt: skip
    p = r["predictions"]
    parts.append(
        "<section><h2>FM regressor (star rating)</h2>"
        f'<p class="muted">{_model_line(r)}. RMSE is {r["rmse_improvement_over_naive"]:.1%} lower '
        "than predicting the training mean.</p>"
        + _table(["metric", "FM", "baseline"], reg_rows)
        + f'<p class="muted">Sanity check: predictions range from {p["min"]:.3f} to {p["max"]:.3f} '
        f"(mean {p['mean']:.3f}); {p.get('outside_valid_range', 0):,} outside the rating scale.</p>"
        + '<div class="plots">' + plot("regressor_predictions.png", "regressor predictions") + "</div></section>"
    )
    c = m["classifier"]
    parts.append(
        "<section><h2>FM classifier (is it 5 stars?)</h2>"
        + f'<p class="muted">{_model_line(c)}. Balanced accuracy (the mean of the two classes\' recall) is '
        "0.5 for any constant answer: an accuracy that only echoes the majority class shows there.</p>"
        + _table(["metric", "FM", "baseline (majority class)"], _metric_rows([
            ("accuracy", c["accuracy"], c["baseline_accuracy"], True),
            ("balanced accuracy", c["balanced_accuracy"], c["baseline_balanced_accuracy"], True),
            ("ROC AUC", c["auc"], c["baseline_auc"], True),
            ("log loss (baseline: training positive rate)", c["log_loss"], c["baseline_log_loss"], False),
            ("F1", c["f1"], c["baseline_f1"], True),
        ]))  # fmt: skip
        + _table(["always predict 5★", "accuracy", "precision", "recall", "F1"],
                 [["baseline", c["always1_accuracy"], c["always1_precision"], c["always1_recall"], c["always1_f1"]],
                  ["FM", c["accuracy"], c["precision"], c["recall"], c["f1"]]])  # fmt: skip
        + '<div class="plots">' + plot("confusion_matrix.png", "confusion matrix")
        + plot("classifier_probabilities.png", "classifier probabilities") + "</div></section>"
    )
    k = m["ranking"]
    rank_rows = _metric_rows([(name, k[key], k[f"popularity_{key}"], True) for name, key in (
        ("HR@10", "hr@10"), ("NDCG@10", "ndcg@10"), ("HR@100", "hr@100"), ("NDCG@100", "ndcg@100"), ("MRR", "mrr"),
        ("catalogue coverage", "coverage"))]) + [
        ["mean popularity of recommended videos", k["mean_popularity"], k["popularity_mean_popularity"]],
        ["mean overlap between customers' lists", k["mean_overlap"], k["popularity_mean_overlap"]]]  # fmt: skip
    def vs_popularity(part: dict[str, Any], model: str, keys: tuple[str, ...]) -> str:
        return _table(["metric", model, "popularity"], [[n.upper(), part[n], part[f"popularity_{n}"]] for n in keys])

    keys = ("hr@10", "ndcg@10", "hr@100", "ndcg@100")
    extra = ""
    if "ranking_classifier_knn" in m:
        extra = ("<h3>The lab's path for comparison: classifier factors + k-NN</h3>"
                 + vs_popularity(m["ranking_classifier_knn"], "classifier + k-NN", (*keys, "mrr")))  # fmt: skip
    if "liked" in k and k["liked"].get("test_rows"):
        extra += (f"<h3>Only held-out videos the customer liked (rated ≥ {k['liked']['threshold']:g})</h3>"
                  + vs_popularity(k["liked"], "FM", keys))  # fmt: skip
    if "ranking_everyone" in m:
        e, lists = m["ranking_everyone"], m.get("recommendations", {})
        rows = [[bucket, f"{part['test_rows']:,}", *(_vs(part[key], part[f"popularity_{key}"], True) for key in ("hr@10", "ndcg@10", "hr@100")),
                 *(part[f"popularity_{key}"] for key in ("hr@10", "ndcg@10", "hr@100"))]
                for bucket, part in (("all", e["all"]), *e["by_history_length"].items()) if part["test_rows"]]  # fmt: skip
        extra += (
            "<h3>Every customer, by history length</h3>"
            f'<p class="muted">Lists were written for {lists.get("customers", 0):,} customers: {lists.get("model", 0):,} '
            f"from the model, {lists.get('fold_in', 0):,} folded in from what they watched (the long-tail filter kept "
            f"them out of training), {lists.get('popularity', 0):,} the most popular videos (nothing they watched is "
            "in the catalogue). Below, every customer with at least two ratings has their latest one held out (the "
            "others' earlier ratings folded in); history length = ratings before it; "
            f"{e.get('held_out_outside_catalogue', 0):,} held-out videos are outside the catalogue (misses).</p>"
            + _table(["history length", "held-out rows", "HR@10", "NDCG@10", "HR@100",
                      "popularity HR@10", "popularity NDCG@10", "popularity HR@100"], rows)
        )
    views, view_text = m.get("customer_views", {}), ""
    for name, v in views.items():
        if name == "top_k_overlap":
            ids = v["customers"]
            view_text += "<h3>Shared videos between customers' top-K lists</h3>" + _table(
                ["customer"] + [str(i) for i in ids], [[str(a)] + list(row) for a, row in zip(ids, v["shared_videos"], strict=True)]
            )
        else:
            view_text += (f'<p class="muted">{_e(name)} FM: scores of customers {_e(v["customers"][0])} and '
                          f'{_e(v["customers"][1])} over all videos correlate with Pearson r = {v["pearson_r"]:.3f}.</p>')  # fmt: skip
    parts.append(
        f"<section><h2>Recommendations: top-{k['k']} per customer ({_e(k['objective'])} objective)</h2>"
        "<p class=\"muted\">Each customer's latest video is hidden; every video they have not rated in training is "
        "ranked, and HR@K counts how often the hidden one is in the top K. Already-rated videos are "
        f"{'excluded' if cfg.recommend.exclude_seen else 'not excluded'}.</p>"
        + _table(["metric", "FM + k-NN", "popularity"], rank_rows) + extra
        + '<div class="plots">' + plot("ranking_metrics.png", "ranking metrics")
        + "".join(plot(f"score_scatter_{n}.png", f"score scatter {n}") for n in views if n != "top_k_overlap")
        + "</div>" + view_text + "</section>"
    )
    cust = []
    for s in result.samples:
        liked = "".join(f"<li>{_e(x['product_title'] or x['product_id'])} <span class=muted>({x['rating']:g}★)</span></li>" for x in s["liked"]) or "<li class=muted>none</li>"
        held = ", ".join(f"{_e(x['product_title'] or x['product_id'])} ({x['rating']:g}★)" for x in s["held_out"]) or "–"
        recs = "".join(
            f"<li{' class=hit' if x['held_out'] else ''}>{_e(x['product_title'] or x['product_id'])} "
            f"<span class=muted>({x['score']:.3f})</span></li>" for x in s["recommended"])  # fmt: skip
        rank = s["held_out_rank_in_list"]
        cust.append(
            f'<div class="customer"><b>Customer {_e(s["customer_id"])}</b> '
            f'<span class="muted">{s["n_train_ratings"]} training ratings; held out: {held}'
            f'{f" — found at rank {rank}" if rank else ""}</span>'
            f'<div class="grid"><div><h3>Rated highly (latest first)</h3><ol>{liked}</ol></div>'
            f"<div><h3>Recommended (top 10)</h3><ol>{recs}</ol></div></div></div>"
        )
    if cust:
        parts.append("<section><h2>Sample customers</h2>" + "".join(cust) + "</section>")
    if m.get("timing"):
        parts.append("<section><h2>Timing</h2>" + _table(["stage", "seconds"], [list(t) for t in m["timing"].items()]) + "</section>")
    title = "recsys run report"
    sub = (f"backend {_e(cfg.backend)} · objective {_e(cfg.objective)} · seed {cfg.seed} · "
           f"{d['customers']:,} customers × {d['products']:,} videos")  # fmt: skip
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>"
        f"<style>{_CSS}</style></head><body><header><h1>{title}</h1><p>{sub}</p></header><main>"
        + "".join(parts) + "</main></body></html>"
    )


def write_report(result: Any, path: str | os.PathLike, plot_dir: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (atomically)."""
    from ._io import atomic_write_text

    return atomic_write_text(path, render_report(result, plot_dir))
