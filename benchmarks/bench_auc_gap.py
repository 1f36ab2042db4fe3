"""How sure is "our classifier's AUC is below the logistic regression's" on ml-latest-small?

Usage::

    python benchmarks/bench_auc_gap.py [--data ratings.csv] [--seeds 5] [--boot 2000] [--folds 5]

On the test rows of ``bench_quality.py`` (leave-last-out, 5/5 filter) it fits the default MCMC
probit classifier (``--seeds`` seeds) and scikit-learn's ``LogisticRegression`` on the one-hots
(the issue's peer), then resamples the test rows with replacement (a paired bootstrap: both
models score the same resampled rows) and prints the AUC difference ours - peer (ours: the mean
of the per-seed AUCs, as the benchmark reports), its 95 % interval and how often it is above 0.
It fits nothing on the resampled rows, so the interval is the test set's own noise.

``--folds K`` also runs the models under a K-fold protocol on the same filtered ratings (every
rating is a test row once; folds drawn at random with seed 0; ours with seed = fold): a
different task (random rows, not each customer's latest), but ~150x the test rows. Ours runs on
the default design and on the plain one-hots (the peer's features): the default design's rating
level is the mean of a customer's latest ratings, which for a random row is partly its future.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_quality import DEFAULT_DATA, MCMC_CLASSIFIER, Split, fit_logreg, fit_mcmc, prepared
from sklearn.metrics import roc_auc_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="MovieLens ratings.csv (ml-latest-small)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--folds", type=int, default=0, help="also run a K-fold protocol (0: no)")
    args = parser.parse_args()

    d = prepared("movielens", args.data)
    s = Split(d.train, d.test, d.n_users, d.n_items, None)
    y, peer = s.ct, fit_logreg(s, 0)[0]
    ours = [fit_mcmc(s, seed, True, MCMC_CLASSIFIER)[0] for seed in range(args.seeds)]

    def gap(rows: np.ndarray) -> float:
        return float(np.mean([roc_auc_score(y[rows], p[rows]) for p in ours]) - roc_auc_score(y[rows], peer[rows]))

    rng = np.random.default_rng(0)
    boots = [rows for rows in (rng.integers(0, len(y), len(y)) for _ in range(args.boot)) if 0 < y[rows].sum() < len(rows)]
    diffs = np.array([gap(rows) for rows in boots])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    print(f"test rows {len(y)}, positives {int(y.sum())}; AUC ours {np.mean([roc_auc_score(y, p) for p in ours]):.4f} "
          f"(per seed {', '.join(f'{roc_auc_score(y, p):.4f}' for p in ours)}), logistic regression "
          f"{roc_auc_score(y, peer):.4f}")
    print(f"difference ours - peer {gap(np.arange(len(y))):+.4f}; bootstrap ({len(diffs)} resamples) 95 % interval "
          f"[{lo:+.4f}, {hi:+.4f}], above 0 in {np.mean(diffs > 0):.0%}")
    if args.folds:
        kfold(d, args.folds)


def kfold(d, k: int) -> None:
    """Ours and the peer on K random folds of all the filtered ratings (train and test rows)."""
    import pandas as pd

    rows = pd.concat([d.train, d.test], ignore_index=True)
    fold = np.random.default_rng(0).permutation(len(rows)) % k
    gaps: dict[str, list[float]] = {"default": [], "plain": []}
    for f in range(k):
        s = Split(rows[fold != f].reset_index(drop=True), rows[fold == f].reset_index(drop=True), d.n_users, d.n_items, None)
        peer = roc_auc_score(s.ct, fit_logreg(s, 0)[0])
        line = f"fold {f + 1}/{k}: {len(s.ct)} test rows ({int(s.ct.sum())} positives); AUC logistic regression {peer:.4f}"
        for design, out in gaps.items():
            ours = roc_auc_score(s.ct, fit_mcmc(s, f, True, MCMC_CLASSIFIER, design)[0])
            out.append(ours - peer)
            line += f", ours ({design}) {ours:.4f} ({ours - peer:+.4f})"
        print(line)
    for design, out in gaps.items():  # 2.776: t(0.975) with 4 degrees of freedom
        half = f"+-{2.776 * np.std(out, ddof=1) / np.sqrt(k):.4f}" if k == 5 else "(5 folds only)"
        print(f"{k}-fold mean difference ours ({design} design) - peer {np.mean(out):+.4f}, 95 % interval over the folds {half}")


if __name__ == "__main__":
    main()
