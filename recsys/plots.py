"""PNG plots for the lab's reports: one function ``plot_<what>(..., path) -> Path`` per plot.

Figures are plain :class:`matplotlib.figure.Figure` objects drawn by the Agg canvas: pyplot is
never imported, so making plots neither opens windows nor changes the backend or the figure list
of a notebook or script that uses recsys.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ._io import atomic_path
from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from .data.explore import Exploration

__all__ = [
    "EXPLORATION_PLOTS", "plot_count_distribution", "plot_exploration", "plot_rating_distribution",
    "plot_reviews_by_month", "plot_reviews_by_year", "plot_prediction_histogram", "plot_confusion_matrix",
    "plot_score_scatter", "plot_ranking_metrics",
]  # fmt: skip

logger = logging.getLogger(__name__)

FIGSIZE: tuple[float, float] = (7.0, 4.0)
DPI = 110
COLOR = "#4C72B0"
HIGHLIGHT = "#DD8452"
MUTED = "#8C8C8C"

#: File names written by :func:`plot_exploration`, by plot name.
EXPLORATION_PLOTS: dict[str, str] = {name: f"{name}.png" for name in (
    "rating_distribution", "reviews_by_month", "reviews_by_year", "reviews_per_customer", "reviews_per_product")}  # fmt: skip

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _new_figure(title: str, xlabel: str, ylabel: str | Sequence[str], *, figsize: tuple[float, float] = FIGSIZE,
                subtitles: Sequence[str] = ()) -> tuple[Figure, list[Axes]]:
    """A house-style figure on an Agg canvas: one panel titled ``title``, or one panel per
    subtitle under ``title``; ``ylabel`` is one for all panels or one per panel."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(1, max(len(subtitles), 1))))
    ylabels = [ylabel] * len(axes) if isinstance(ylabel, str) else ylabel
    for i, ax in enumerate(axes):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabels[i])
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#E5E5E5", linewidth=0.8)
        ax.set_axisbelow(True)
        if subtitles:
            ax.set_title(subtitles[i], fontsize="medium")
    if subtitles:
        fig.suptitle(title, fontweight="bold")
    else:
        axes[0].set_title(title, fontweight="bold")
    return fig, axes


def _thousands(ax: Axes) -> None:
    """Integer ticks with thousands separators (``12,345``) on a linear count y axis."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))


def _log_counts() -> FuncFormatter:
    """Plain numbers with thousands separators on a log count axis (``1``, ``10``, ``1,000``)."""
    return FuncFormatter(lambda x, _pos: f"{x:,.10g}" if x >= 1 else f"{x:g}")


def _no_data(fig: Figure, ax: Axes, message: str, path: str | os.PathLike) -> Path:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=MUTED)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save_figure(fig, path)


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temp file + rename), then release it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        fig.clear()
    logger.debug("wrote %s", path)
    return path


def plot_rating_distribution(exploration: Exploration, path: str | os.PathLike) -> Path:
    """Bar chart of the rows per star value, labelled with each value's share."""
    counts = exploration.rating_counts
    fig, (ax,) = _new_figure(f"Star ratings ({sum(counts.values()):,} rated reviews)", "star rating", "reviews")
    if not counts:
        return _no_data(fig, ax, "no ratings", path)
    x = np.arange(len(counts))
    bars = ax.bar(x, list(counts.values()), color=COLOR, width=0.7)
    ax.bar_label(bars, labels=[f"{exploration.rating_shares[s]:.1%}" for s in counts], padding=2, fontsize="small")
    ax.set_xticks(x, [f"{s:g}★" for s in counts])
    ax.margins(y=0.1)
    _thousands(ax)
    return _save_figure(fig, path)


def _busiest_bars(ax: Axes, x: Sequence[int], counts: Sequence[int], busiest: int, label: object) -> None:
    """Bars at ``x``, the one at ``busiest`` highlighted and named in a legend."""
    ax.bar(x, counts, color=[HIGHLIGHT if v == busiest else COLOR for v in x], width=0.7)
    ax.set_ylim(0, max(counts) * 1.15)  # headroom for the legend
    _thousands(ax)
    ax.legend(handles=[Patch(color=HIGHLIGHT, label=f"busiest: {label}")], loc="upper left", frameon=False)


def plot_reviews_by_month(exploration: Exploration, path: str | os.PathLike) -> Path:
    """Bar chart of reviews per month of the year (January..December), busiest highlighted."""
    counts = [exploration.reviews_by_month.get(m, 0) for m in range(1, 13)]
    fig, (ax,) = _new_figure("Reviews by month of the year", "month", "reviews")
    if not any(counts):
        return _no_data(fig, ax, "no dated reviews", path)
    busiest = exploration.busiest_month - 1
    _busiest_bars(ax, range(12), counts, busiest, _MONTHS[busiest])
    ax.set_xticks(np.arange(12), _MONTHS)
    return _save_figure(fig, path)


def plot_reviews_by_year(exploration: Exploration, path: str | os.PathLike) -> Path:
    """Bar chart of reviews per calendar year, the busiest year highlighted."""
    by_year = exploration.reviews_by_year
    fig, (ax,) = _new_figure("Reviews by year", "year", "reviews")
    if not by_year:
        return _no_data(fig, ax, "no dated reviews", path)
    years = list(by_year)
    _busiest_bars(ax, years, list(by_year.values()), exploration.busiest_year, exploration.busiest_year)
    step = max(1, int(np.ceil(len(years) / 20)))  # at most ~20 tick labels
    ax.set_xticks(years[::step], [str(y) for y in years[::step]])
    if len(years) > 8:
        ax.tick_params(axis="x", labelrotation=45)
    return _save_figure(fig, path)


def plot_count_distribution(counts: np.ndarray, path: str | os.PathLike, *, what: str) -> Path:
    """How many reviews each customer (or product, ``what``) has, on log-log axes.

    Left: how many have *k* reviews, averaged over logarithmic bins of *k* (bin count / bin
    width, so a power law is a straight line). Right: the share with at least *k* reviews. The
    median, 90th and 99th percentiles and the maximum are marked. Raises :class:`DataError`
    unless ``counts`` holds integers >= 1.
    """
    counts = np.asarray(counts).ravel()
    if counts.size == 0:
        raise DataError(f"no review counts to plot for {what}s (empty array)")
    if not np.issubdtype(counts.dtype, np.number) or counts.min() < 1 or not np.array_equal(counts, np.round(counts)):
        raise DataError(f"review counts per {what} must be integers >= 1 (one per {what} that has "
                        f"reviews); got min {counts.min()!r}, dtype {counts.dtype}")  # fmt: skip
    counts = counts.astype(np.int64)
    plural = f"{what}s"
    fig, (hist_ax, ccdf_ax) = _new_figure(
        f"Reviews per {what} ({counts.size:,} {plural}, {int(counts.sum()):,} reviews)", f"reviews per {what}",
        [f"{plural} with k reviews", f"share of {plural}"], figsize=(10.0, 4.0),
        subtitles=[f"{plural} with k reviews (log bins)", "share with at least k reviews"],
    )  # fmt: skip

    # Left: log-binned histogram. Integer-aligned edges so each bin holds whole counts.
    top = int(counts.max())
    edges = np.unique(np.append(np.round(np.geomspace(1, top + 1, num=min(40, top) + 1)).astype(np.int64), top + 1))
    hist, _ = np.histogram(counts, bins=edges)
    widths = np.diff(edges)
    keep = hist > 0
    density = hist[keep] / widths[keep]
    hist_ax.bar(edges[:-1][keep], density, width=widths[keep], align="edge", color=COLOR, edgecolor="white", linewidth=0.5)
    hist_ax.set(xscale="log", yscale="log")
    hist_ax.set_ylim(bottom=min(0.7, density.min() * 0.7))

    # Right: complementary CDF, P(count >= k), as a step function.
    values, value_counts = np.unique(counts, return_counts=True)
    ccdf_ax.step(values, np.cumsum(value_counts[::-1])[::-1] / counts.size, where="post", color=COLOR, linewidth=1.5)
    ccdf_ax.set(xscale="log", yscale="log")
    ccdf_ax.set_ylim(top=1.3)

    # Quantile markers: one line style each, explained by a legend (labels next to the lines
    # collide when quantiles are close, as they are for small or flat data).
    marks = {"median": (0.5, "--"), "p90": (0.9, "-."), "p99": (0.99, ":"), "max": (1.0, "-")}
    levels = np.quantile(counts, [level for level, _ in marks.values()])
    for (name, (_, style)), value in zip(marks.items(), levels, strict=True):
        hist_ax.axvline(value, color=HIGHLIGHT, linewidth=1.0, linestyle=style)
        ccdf_ax.axvline(value, color=HIGHLIGHT, linewidth=1.0, linestyle=style, label=f"{name} {value:,.4g}")
    ccdf_ax.legend(loc="lower left", fontsize="small", framealpha=0.95, edgecolor="#CCCCCC")
    for ax in (hist_ax, ccdf_ax):
        ax.set_xlim(0.8, top * 1.5 + 1)
        ax.xaxis.set_major_formatter(_log_counts())
    hist_ax.yaxis.set_major_formatter(_log_counts())
    ccdf_ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:.3g}"))
    hist_ax.text(
        0.98, 0.97, f"mean {counts.mean():,.2f}\nmedian {levels[0]:,.4g}", transform=hist_ax.transAxes, ha="right",
        va="top", fontsize="small", bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#CCCCCC"},
    )  # fmt: skip
    return _save_figure(fig, path)


def plot_exploration(exploration: Exploration, frame: pd.DataFrame, out_dir: str | os.PathLike, *,
                     item_label: str = "product") -> dict[str, Path]:
    """Write every exploration plot of ``exploration`` (of the ratings ``frame``) into ``out_dir``
    (created if needed; existing files replaced) under the names in :data:`EXPLORATION_PLOTS`;
    ``item_label`` names products in titles. Returns plot name -> written path."""
    from .data.explore import review_counts

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in EXPLORATION_PLOTS.items()}
    per_customer, per_product = review_counts(frame)
    plot_rating_distribution(exploration, paths["rating_distribution"])
    plot_reviews_by_month(exploration, paths["reviews_by_month"])
    plot_reviews_by_year(exploration, paths["reviews_by_year"])
    plot_count_distribution(per_customer, paths["reviews_per_customer"], what="customer")
    plot_count_distribution(per_product, paths["reviews_per_product"], what=item_label)
    logger.debug("wrote %d exploration plots to %s", len(paths), out_dir)
    return paths


# model plots
def plot_prediction_histogram(predictions: np.ndarray, path: str | os.PathLike, *, title: str, xlabel: str,
                              bins: int = 40, truth: np.ndarray | None = None) -> Path:
    """Histogram of a model's test predictions (the lab's sanity check), optionally next to the
    true values' histogram."""
    fig, (ax,) = _new_figure(title, xlabel, "test rows")
    p = np.asarray(predictions, dtype=np.float64)
    if p.size == 0:
        return _no_data(fig, ax, "no predictions", path)
    edges = np.histogram_bin_edges(p if truth is None else np.r_[p, np.asarray(truth, dtype=np.float64)], bins=bins)
    if truth is not None:
        ax.hist(np.asarray(truth, dtype=np.float64), bins=edges, color=MUTED, alpha=0.45, label="actual")
    ax.hist(p, bins=edges, color=COLOR, alpha=0.85, label="predicted")
    ax.axvline(p.min(), color=HIGHLIGHT, linestyle=":", linewidth=1, label="min / max")
    ax.axvline(p.max(), color=HIGHLIGHT, linestyle=":", linewidth=1)
    _thousands(ax)
    ax.legend(frameon=False, loc="upper left", fontsize="small",
              title=f"min {p.min():.3g}, max {p.max():.3g}, mean {p.mean():.3g}", title_fontsize="small")  # fmt: skip
    return _save_figure(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: str | os.PathLike, *, labels: Sequence[str] = ("not 5★", "5★")) -> Path:
    """Heatmap of ``[[tn, fp], [fn, tp]]`` with counts and row shares in each cell."""
    m = np.asarray(matrix, dtype=np.float64)
    fig, (ax,) = _new_figure("Confusion matrix (test set)", "predicted", "actual", figsize=(4.8, 4.0))
    ax.grid(False)
    ax.imshow(m, cmap="Blues")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    for (r, c), value in np.ndenumerate(m):
        ax.text(c, r, f"{int(value):,}\n{share[r, c]:.0%}", ha="center", va="center",
                color="white" if value > m.max() / 2 else "#222222", fontsize="medium")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.spines[:].set_visible(False)
    return _save_figure(fig, path)


def plot_score_scatter(a: np.ndarray, b: np.ndarray, path: str | os.PathLike, *, label_a: str, label_b: str,
                       title: str) -> Path:
    """Scatter of two customers' scores over the whole catalogue (the lab's 200 vs 201 plot)."""
    fig, (ax,) = _new_figure(title, f"score for {label_a}", f"score for {label_b}", figsize=(6.0, 4.8))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ax.scatter(a, b, s=6, alpha=0.45, color=COLOR, linewidths=0)
    if a.size > 1 and a.std() > 0 and b.std() > 0:
        ax.text(0.02, 0.97, f"Pearson r = {float(np.corrcoef(a, b)[0, 1]):.3f}", transform=ax.transAxes, va="top", fontsize="small")
    ax.grid(axis="both", color="#E5E5E5", linewidth=0.8)
    return _save_figure(fig, path)


def plot_ranking_metrics(rows: Sequence[tuple[str, dict[str, float]]], path: str | os.PathLike, *,
                         metrics: Sequence[str] = ("hr@10", "ndcg@10", "hr@100", "ndcg@100")) -> Path:
    """Grouped bars: each model's ranking metrics side by side (e.g. FM vs popularity)."""
    fig, (ax,) = _new_figure("Ranking on held-out latest ratings", "", "value")
    width = 0.8 / max(len(rows), 1)
    palette = (COLOR, HIGHLIGHT, "#55A868", MUTED, "#C44E52")
    x = np.arange(len(metrics))
    for j, (name, values) in enumerate(rows):
        heights = [values.get(m, np.nan) for m in metrics]
        bars = ax.bar(x + (j - (len(rows) - 1) / 2) * width, heights, width, label=name, color=palette[j % len(palette)])
        for bar, h in zip(bars, heights, strict=True):
            if np.isfinite(h):
                ax.text(bar.get_x() + bar.get_width() / 2, h, f"{h:.3f}", ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(x, [m.upper() for m in metrics])
    ax.legend(frameon=False)
    return _save_figure(fig, path)
