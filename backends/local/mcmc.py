"""A Bayesian factorization machine trained by Gibbs sampling (``solver = "mcmc"``): libFM's
MCMC solver (Rendle 2012, "Factorization Machines with libFM"; myFM is a maintained
implementation). Every parameter is sampled from its conditional distribution, and the
regularization is integrated out instead of tuned:

* likelihood: ``y ~ N(y(x), 1/alpha)`` for a regressor, with the noise precision ``alpha ~
  Gamma`` sampled too; for a binary classifier the probit model ``P(y=1) = Phi(y(x))``, by data
  augmentation: a latent ``z ~ N(y(x), 1)`` truncated to ``z > 0`` for a positive, ``z < 0``
  for a negative, is drawn every sweep and regressed on (Albert & Chib 1993);
* priors per feature *group* (user one-hot, item one-hot, each extra group of
  :mod:`recsys.feature_groups`): ``w_j ~ N(mu_w[g], 1/lambda_w[g])`` and ``V_jf ~ N(mu_v[g, f],
  1/lambda_v[g, f])``, with libFM's Normal-Gamma hyperpriors ``lambda ~ Gamma(1/2, rate 1/2)``,
  ``mu | lambda ~ N(0, 1/lambda)`` -- the group's weights share sampled hyperparameters;
* a sweep draws ``alpha``, the hyperparameters, ``w0``, then every ``w_j`` and ``V_jf``
  (:mod:`backends.local._gibbs`: whole one-hot groups at once; a native kernel when built).

Knobs: ``mcmc_burn_in`` (sweeps discarded), ``mcmc_samples`` (sweeps kept), ``num_factors``,
``seed``, ``mcmc_init_sigma`` (the factors' starting spread). The ``eval_*`` history averages
predictions over the kept samples. The returned :class:`~recsys.model.FittedFM` holds the
posterior mean ``w0, w, V`` (used by predictions and k-NN vectors: on ``bench_quality.py``'s
folds it predicts as well as the average over every kept sample) and, with
``mcmc_saved_samples > 0``, that many kept samples, evenly thinned, for ``predict_score`` to
average over (storage: S x the model's size).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import log_ndtr, ndtr, ndtri
from threadpoolctl import threadpool_limits

from backends.base import TrainOptions
from backends.local import _gibbs
from backends.local.training import run_epochs
from recsys.errors import DataError, ModelFitError
from recsys.feature_groups import LINEAR_GROUPS, GroupedDesign
from recsys.model import FittedFM, PosteriorSamples, check_design, target_range
from recsys.params import FMParams

__all__ = ["train_fm_mcmc", "GibbsSampler", "FMOutput"]

#: Gamma(ALPHA_0 / 2, rate BETA_0 / 2) prior of the noise precision (libFM's defaults)
ALPHA_0 = BETA_0 = 1.0
#: Normal-Gamma hyperprior of every group's (mu, lambda): lambda ~ Gamma(ALPHA_L/2, rate BETA_L/2),
#: mu | lambda ~ N(MU_0, 1 / (GAMMA_0 lambda))
ALPHA_L = BETA_L = 1.0
GAMMA_0, MU_0 = 1.0, 0.0


class FMOutput:
    """``y(x)`` of every row of a design (relation blocks included) for given parameters; the
    float64 copies and squares are made once."""

    def __init__(self, design: GroupedDesign):
        self.X = sp.csr_matrix(design.X, dtype=np.float64)
        self.X2 = self.X.multiply(self.X).tocsr()
        tables = [sp.csr_matrix(b.table, dtype=np.float64) for b in design.relations]
        self.blocks = [(b.index, T, T.multiply(T).tocsr()) for b, T in zip(design.relations, tables, strict=True)]

    def __call__(self, w0: float, w: np.ndarray, V: np.ndarray) -> np.ndarray:
        off = dx = self.X.shape[1]
        lin = self.X @ w[:dx]
        q = np.asarray(self.X @ V[:dx])
        diag = np.asarray(self.X2 @ (V[:dx] ** 2)).sum(axis=1)
        for index, T, T2 in self.blocks:
            wb, Vb = w[off : off + T.shape[1]], V[off : off + T.shape[1]]
            lin = lin + (T @ wb)[index]
            q = q + np.asarray(T @ Vb)[index]
            diag = diag + np.asarray(T2 @ (Vb**2)).sum(axis=1)[index]
            off += T.shape[1]
        return w0 + lin + 0.5 * ((q * q).sum(axis=1) - diag)


def _as_design(X: Any, what: str) -> GroupedDesign:
    if isinstance(X, GroupedDesign):
        return X
    if not sp.issparse(X) and not isinstance(X, np.ndarray):
        raise DataError(f"{what}: X must be a sparse/dense matrix or a GroupedDesign, got {type(X).__name__}")
    return GroupedDesign(sp.csr_matrix(X))


def _default_groups(feature_dim: int, metadata: dict[str, Any] | None) -> np.ndarray:
    """Users, items and the rest as three groups when the metadata gives the one-hot layout
    (``n_users``, ``n_items``, as the pipeline passes it); else one group."""
    meta = metadata or {}
    n_users, n_items = meta.get("n_users"), meta.get("n_items")
    if n_users is None or n_items is None or int(n_users) + int(n_items) > feature_dim:
        return np.zeros(feature_dim, dtype=np.int64)
    sizes = [int(n_users), int(n_items), feature_dim - int(n_users) - int(n_items)]
    return np.repeat([0, 1, 2], sizes).astype(np.int64)


class GibbsSampler:
    """The chain's state: parameters, hyperparameters, the residuals ``e`` and each relation
    block's per-entity factor sums ``Q``; :meth:`sweep` draws the next sample. ``fixed_alpha``
    and ``sample_hyper=False`` freeze the noise precision and :attr:`hyper` (for checks)."""

    def __init__(self, design: GroupedDesign, y: np.ndarray, *, num_factors: int, classifier: bool = False,
                 groups: np.ndarray | None = None, init_sigma: float = 0.3, seed: int = 0, native: bool | None = None,
                 fixed_alpha: float | None = None, sample_hyper: bool = True):  # fmt: skip
        self.design, self.classifier = design, classifier
        self.n, self.d, self.k = design.n_rows, design.feature_dim, int(num_factors)
        names = design.group_names if groups is None else ()  # group names go with the design's ids
        groups = design.groups if groups is None else groups
        groups = np.zeros(self.d, dtype=np.int64) if groups is None else np.asarray(groups)
        if groups.shape != (self.d,):
            raise DataError(f"groups must have one entry per feature ({self.d}), got shape {groups.shape}")
        ids, col_group = np.unique(groups, return_inverse=True)
        self.col_group = col_group.astype(np.int64)
        self.n_groups = int(self.col_group.max()) + 1
        self.group_size = np.bincount(self.col_group, minlength=self.n_groups).astype(np.float64)
        self._group_sum = sp.csr_matrix((np.ones(self.d), (self.col_group, np.arange(self.d))), shape=(self.n_groups, self.d))
        self.rng = np.random.default_rng(seed)
        self.y = np.asarray(y, dtype=np.float64)
        self.w0, self.w = 0.0, np.zeros(self.d)
        self.V = np.ascontiguousarray(self.rng.standard_normal((self.d, self.k)) * init_sigma)
        # groups fitted with a linear weight only (recsys.feature_groups.LINEAR_GROUPS): factors 0
        linear = np.array([int(i) < len(names) and names[int(i)] in LINEAR_GROUPS for i in ids], dtype=bool)
        self.V[linear[self.col_group]] = 0.0
        G, k = self.n_groups, self.k
        self.hyper = _gibbs.Hyper(np.zeros(G), np.ones(G), np.zeros((G, k)), np.ones((G, k)))
        self.alpha = 1.0 if fixed_alpha is None else float(fixed_alpha)
        self.fixed_alpha, self.sample_hyper = fixed_alpha, sample_hyper
        # per-row columns by group, then relation blocks
        self.rows = _gibbs.Rows(design.X, [b.index for b in design.relations])
        dx = design.X.shape[1]
        self.column_groups, self.linear_groups = [], []
        for g in range(G):
            if np.any(self.col_group[:dx] == g):
                group = _gibbs.ColumnGroup(self.rows.Xc, np.flatnonzero(self.col_group[:dx] == g), g)
                (self.linear_groups if linear[g] else self.column_groups).append(group)
        self.relations: list[_gibbs.Relation] = []
        for pos, block in enumerate(design.relations):
            off = dx + sum(r.width for r in self.relations)
            cols = self.col_group[off : off + block.table.shape[1]]
            self.relations.append(_gibbs.Relation(pos, block.index, block.table, off, cols))
        # caches: residuals e = z - y(x) and each relation block's per-entity factor sums Q
        self.z = (2.0 * self.y - 1.0) if classifier else self.y
        self.Q = [rel.factor_sums(self.V) for rel in self.relations]
        self.e = np.ascontiguousarray(self.z - FMOutput(design)(self.w0, self.w, self.V))
        lib = _gibbs.kernel() if native is None or native else None
        if native and lib is None:
            raise RuntimeError("native=True but the native Gibbs kernel is not built")
        self._native = _gibbs.NativeUpdates(lib, self.rows, self.k, self.column_groups, self.relations, self.Q,
                                            zero_factors=linear[self.col_group]) if lib else None  # fmt: skip
        self.native = self._native is not None

    # -- conditionals ----------------------------------------------------------------------
    def sample_hyperparameters(self) -> None:
        """(lambda, then mu) of every group, for w and for each factor column."""
        rng, g, n_g, h = self.rng, self.col_group, self.group_size, self.hyper
        for theta, mu, lam in ((self.w[:, None], h.mu_w[:, None], h.lam_w[:, None]), (self.V, h.mu_v, h.lam_v)):
            if theta.shape[1] == 0:
                continue
            dev2 = self._group_sum @ (theta - mu[g]) ** 2
            shape = (ALPHA_L + n_g + 1.0)[:, None] / 2.0
            rate = (BETA_L + dev2 + GAMMA_0 * (mu - MU_0) ** 2) / 2.0
            lam[:] = rng.gamma(shape, 1.0 / rate)
            prec = (n_g[:, None] + GAMMA_0) * lam
            mean = (self._group_sum @ theta + GAMMA_0 * MU_0) / (n_g[:, None] + GAMMA_0)
            mu[:] = mean + rng.standard_normal(mean.shape) / np.sqrt(prec)

    def _sample_latent(self) -> None:
        """Probit: z ~ N(y(x), 1) truncated to the label's side of 0; e = z - y(x)."""
        yhat = np.clip(self.z - self.e, -30.0, 30.0)
        s = np.where(self.y > 0.5, 1.0, -1.0)
        lo = -s * yhat  # s * (z - yhat) > lo
        u = self.rng.random(self.n)
        t = np.empty(self.n)
        neg = lo <= 0
        t[neg] = ndtri(ndtr(lo[neg]) + u[neg] * ndtr(-lo[neg]))
        p = u[~neg] * ndtr(-lo[~neg])
        t[~neg] = np.where(p > 0, -ndtri(np.maximum(p, 1e-300)), lo[~neg])
        self.e = np.ascontiguousarray(s * t)
        self.z = yhat + self.e

    def sweep(self) -> None:
        """One Gibbs sweep over every parameter."""
        rng, n = self.rng, self.n
        if not self.classifier and self.fixed_alpha is None:
            self.alpha = float(rng.gamma((ALPHA_0 + n) / 2.0, 2.0 / (BETA_0 + float(self.e @ self.e))))
        if self.sample_hyper:
            self.sample_hyperparameters()
        prec = self.alpha * n  # flat prior on w0
        w0 = (self.alpha * (float(self.e.sum()) + self.w0 * n)) / prec + rng.standard_normal() / math.sqrt(prec)
        self.e -= w0 - self.w0
        self.w0 = w0
        state = {"e": self.e, "w": self.w, "V": self.V, "Q": self.Q}
        columns = self._native.columns if self._native else _gibbs.update_columns
        for group in self.column_groups:
            noise = rng.standard_normal((len(group.feats), self.k + 1))
            columns(group, self.rows, state, self.alpha, self.hyper, noise)
        for group in self.linear_groups:
            _gibbs.update_linear(group, state, self.alpha, self.hyper, rng.standard_normal(len(group.feats)))
        relation = self._native.relation if self._native else _gibbs.update_relation
        for rel in self.relations:
            noise = rng.standard_normal((rel.width, self.k + 1))
            relation(rel, self.rows, state, self.alpha, self.hyper, noise)
        if self.classifier:
            self._sample_latent()

    # -- monitoring ------------------------------------------------------------------------
    def train_loss(self) -> float:
        """Mean squared residual (regressor) or probit log loss (classifier) of this sample."""
        if not self.classifier:
            return float(self.e @ self.e) / self.n
        yhat = self.z - self.e
        return float(-np.mean(log_ndtr(np.where(self.y > 0.5, yhat, -yhat))))

    def finite(self) -> bool:
        return bool(np.isfinite(self.w0) and np.isfinite(self.w).all() and np.isfinite(self.V).all()
                    and np.isfinite(self.e).all())  # fmt: skip


def _eval_loss(classifier: bool, pred: np.ndarray, y: np.ndarray) -> float:
    if not classifier:
        return float(np.mean((pred - y) ** 2))
    p = np.clip(pred, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _check_labels(design: GroupedDesign, y: Any, what: str, classifier: bool, feature_dim: int | None) -> np.ndarray:
    """:func:`check_design` on labels and the per-row part; relation tables must be finite."""
    _, y = check_design(design.X, y, what, classifier=classifier)
    if feature_dim is not None and design.feature_dim != feature_dim:
        raise DataError(f"{what}: the design has {design.feature_dim} columns but feature_dim is {feature_dim}")
    for block in design.relations:
        if not np.isfinite(sp.csr_matrix(block.table).data).all():
            raise DataError(f"{what}: a relation table contains NaN or infinite values")
    return y


class _Posterior:
    """Running sums over the kept samples: parameters, thinned samples, evaluation predictions."""

    def __init__(self, sampler: GibbsSampler, kept: int, saved: int, eval_design: GroupedDesign | None):
        self.sampler, self.count = sampler, 0
        self.w0, self.w, self.V = 0.0, np.zeros(sampler.d), np.zeros((sampler.d, sampler.k))
        keep_at = np.unique(np.linspace(0, kept - 1, min(saved, kept)).round().astype(int))
        self.slot = {int(c): i for i, c in enumerate(keep_at)}  # sweep -> row of the arrays below
        n = len(keep_at)  # filled in place: no copy of every sample at the end
        self.saved = (np.zeros(n), np.zeros((n, sampler.d), np.float32), np.zeros((n, sampler.d, sampler.k), np.float32))
        self.eval_output = None if eval_design is None else FMOutput(eval_design)
        self.eval_sum = None if eval_design is None else np.zeros(eval_design.n_rows)
        self.bounds = target_range(sampler.y)  # a regressor's predictions stay within them

    def add(self) -> np.ndarray | None:
        """Add the sampler's current sample; return the running mean prediction on the eval set."""
        sm = self.sampler
        i = self.slot.get(self.count)
        if i is not None:
            self.saved[0][i], self.saved[1][i], self.saved[2][i] = sm.w0, sm.w, sm.V
        self.count += 1
        self.w0 += sm.w0
        self.w += sm.w  # in place: V is as large as the model
        self.V += sm.V
        if self.eval_output is None:
            return None
        raw = self.eval_output(sm.w0, sm.w, sm.V)
        self.eval_sum += ndtr(raw) if sm.classifier else np.clip(raw, *self.bounds)  # as predict_score
        return self.eval_sum / self.count

    def artifact(self, params: FMParams, meta: dict[str, Any]) -> FittedFM:
        sm, n = self.sampler, self.count
        # stopped during burn-in: the last sample stands for the posterior
        w0, w, V, n = (self.w0, self.w, self.V, n) if n else (sm.w0, sm.w, sm.V, 1)
        filled = sum(c < self.count for c in self.slot)  # fewer when the chain was stopped early
        samples = PosteriorSamples(*(a[:filled] for a in self.saved)) if filled else None
        meta["mcmc_kept_samples"] = self.count
        return FittedFM(
            w0=w0 / n, w=w / n, V=V / n, predictor_type=params.predictor_type, config=params.to_dict(),
            metadata=meta, samples=samples, link="probit" if sm.classifier else "logit",
        )  # fmt: skip


def train_fm_mcmc(X: sp.csr_matrix | GroupedDesign, y: np.ndarray, params: FMParams, *,
                  eval_set: tuple[sp.csr_matrix | GroupedDesign, np.ndarray] | None = None,
                  groups: np.ndarray | None = None, options: TrainOptions | None = None) -> FittedFM:  # fmt: skip
    """Sample a Bayesian FM on ``X, y`` (see the module docstring); return the fitted artifact.

    ``X``: a CSR design or a :class:`~recsys.feature_groups.GroupedDesign` (with its column
    groups), ``groups`` (one id per column) overrides them; a CSR design by default gets users /
    items / the rest when ``options.metadata`` gives ``n_users`` and ``n_items``. Sweeps are
    :func:`~backends.local.training.run_epochs`' epochs; the evaluation loss is the running
    average's over the kept samples (none during burn-in)."""
    options = options or TrainOptions()
    metadata = options.metadata
    params.validate()
    classifier = params.predictor_type == "binary_classifier"
    design = _as_design(X, "training data")
    y = _check_labels(design, y, "training data", classifier, params.feature_dim)
    if groups is None and design.groups is None:
        groups = _default_groups(design.feature_dim, metadata)
    X_eval, y_eval = eval_set if eval_set is not None else (None, None)
    eval_design = None if X_eval is None else _as_design(X_eval, "evaluation data")
    if eval_design is not None:
        y_eval = _check_labels(eval_design, y_eval, "evaluation data", classifier, design.feature_dim).astype(np.float64)
    burn_in, kept, metric = int(params.mcmc_burn_in), int(params.mcmc_samples), "logloss" if classifier else "mse"
    with threadpool_limits(limits=params.threads or 1):  # vector ops: BLAS threads only add waiting
        sampler = GibbsSampler(
            design, y, num_factors=params.num_factors, classifier=classifier, groups=groups,
            init_sigma=params.mcmc_init_sigma, seed=params.seed,
        )  # fmt: skip
        posterior = _Posterior(sampler, kept, int(params.mcmc_saved_samples), eval_design)
        state = {"sweep": 0, "pred": None}

        def sweep() -> float:
            sampler.sweep()
            state["sweep"] += 1
            if not sampler.finite():
                raise ModelFitError(f"the Gibbs sampler produced non-finite values in sweep {state['sweep']}; the data may "
                                    "have extreme values (rescale the targets or the feature values)")  # fmt: skip
            if state["sweep"] > burn_in:
                state["pred"] = posterior.add()
            return sampler.train_loss()

        def evaluate() -> tuple[str, float, bool] | None:
            return None if state["pred"] is None else (metric, _eval_loss(classifier, state["pred"], y_eval), False)

        loop = dataclasses.replace(params, epochs=burn_in + kept, early_stopping_patience=None)
        meta = run_epochs(sampler, loop, sweep, loss_name=metric, eval_fn=evaluate if eval_design is not None else None,
                          options=options, desc=f"FM {params.predictor_type} (MCMC)")  # fmt: skip
    meta.update({"backend": "torch", "solver": "mcmc", "train_rows": sampler.n, "native_kernel": sampler.native})
    if not classifier:
        meta.update(noise_precision=sampler.alpha, target_range=posterior.bounds)
    meta.update(metadata or {})
    return posterior.artifact(params, meta)
