"""Tests of the Bayesian FM sampled by Gibbs sampling (backends.local.mcmc, backends.local._gibbs).

References, all independent of the sampler's caches:

* a coordinate-wise Gibbs sampler written from the definition -- each coordinate's conditional
  from two evaluations of the brute-force FM (tests/reference.py), nothing cached -- fed the
  same standard normals: the sampler (numpy updates and the native kernel) must give the same
  chain, with one-hot groups, a multi-hot group and relation blocks;
* closed forms: with ``num_factors = 0`` and a fixed prior the FM is Bayesian linear regression,
  whose posterior is a ridge solution (fixed noise precision) or a one-dimensional integral over
  the noise precision (sampled); the Normal-Gamma hyperprior's posterior moments;
* the probit classifier against the maximum-likelihood probit fit (scipy);
* averaged predictions against the average of brute-force predictions of every kept sample.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import log_ndtr, ndtr
from scipy.stats import gamma as gamma_dist

from backends.base import TrainOptions
from backends.local import _gibbs
from backends.local.backend import TorchBackend
from backends.local.mcmc import (
    ALPHA_0,
    ALPHA_L,
    BETA_0,
    BETA_L,
    GAMMA_0,
    MU_0,
    GibbsSampler,
    train_fm_mcmc,
)
from recsys.errors import ConfigError, DataError, ModelFormatError
from recsys.feature_groups import GroupedDesign, RelationBlock
from recsys.model import FittedFM
from recsys.params import FMParams
from tests.reference import fm_brute_force

NATIVE = _gibbs.kernel() is not None
PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(not NATIVE, reason="native Gibbs kernel not built"))]


# ---------------------------------------------------------------------------------------------
# a small design with every kind of group
# ---------------------------------------------------------------------------------------------
def small_design(seed: int = 0, n: int = 14) -> tuple[GroupedDesign, np.ndarray]:
    """Rows: user one-hot (3), item one-hot (4), a multi-hot group (3 columns, 0-2 set per row,
    real values); relation blocks: a per-user table (3 x 3, several entries per user) and a
    per-row table (n x 2). Groups 0..4; y real."""
    rng = np.random.default_rng(seed)
    users = np.r_[np.arange(3), rng.integers(0, 3, n - 3)]
    items = np.r_[np.arange(4), rng.integers(0, 4, n - 4)]
    multi = sp.random(n, 3, density=0.4, random_state=seed, format="csr") * 2.0
    X = sp.hstack([sp.csr_matrix((np.ones(n), (np.arange(n), users)), shape=(n, 3)),
                   sp.csr_matrix((np.ones(n), (np.arange(n), items)), shape=(n, 4)), multi], format="csr")  # fmt: skip
    per_user = sp.csr_matrix(np.array([[0.5, 0.5, 0.0], [0.0, 0.7, 0.7], [0.4, 0.4, 0.4]]))
    per_row = sp.random(n, 2, density=0.6, random_state=seed + 1, format="csr")
    groups = np.repeat([0, 1, 2, 3, 4], [3, 4, 3, 3, 2])
    design = GroupedDesign(X, (RelationBlock(users, per_user), RelationBlock(np.arange(n), per_row)), groups)
    return design, rng.normal(3.0, 1.0, n)


def _fixed_hyper(sampler: GibbsSampler, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    G, k = sampler.n_groups, sampler.k
    sampler.hyper = _gibbs.Hyper(rng.normal(0, 0.2, G), rng.uniform(0.5, 3, G), rng.normal(0, 0.2, (G, k)), rng.uniform(0.5, 3, (G, k)))
    sampler.sample_hyper = False


def reference_sweep(design: GroupedDesign, z: np.ndarray, params: dict, hyper: _gibbs.Hyper, alpha: float,
                    groups: np.ndarray, rng: np.random.Generator) -> None:  # fmt: skip
    """One sweep in the sampler's order, every conditional from brute-force FM evaluations."""
    X = design.to_csr().toarray()
    k = params["V"].shape[1]

    def conditional(setter, lam, mu, noise):
        g0 = setter(0.0)
        h = setter(1.0) - g0
        prec = lam + alpha * float(h @ h)
        value = (alpha * float(h @ (z - g0)) + lam * mu) / prec + noise / np.sqrt(prec)
        setter(value)

    def output():
        return fm_brute_force(params["w0"], params["w"], params["V"], X)

    def set_w0(v):
        params["w0"] = v
        return output()

    def set_w(j):
        def f(v):
            params["w"][j] = v
            return output()
        return f

    def set_v(j, f_):
        def f(v):
            params["V"][j, f_] = v
            return output()
        return f

    conditional(set_w0, 0.0, 0.0, rng.standard_normal())
    dx = design.X.shape[1]
    for g in np.unique(groups[:dx]):
        feats = np.flatnonzero(groups[:dx] == g)
        noise = rng.standard_normal((len(feats), k + 1))
        for t, j in enumerate(feats):
            conditional(set_w(j), hyper.lam_w[g], hyper.mu_w[g], noise[t, 0])
            for f in range(k):
                conditional(set_v(j, f), hyper.lam_v[g, f], hyper.mu_v[g, f], noise[t, 1 + f])
    off = dx
    for block in design.relations:
        width = block.table.shape[1]
        noise = rng.standard_normal((width, k + 1))
        cols = range(off, off + width)
        for t, j in enumerate(cols):
            conditional(set_w(j), hyper.lam_w[groups[j]], hyper.mu_w[groups[j]], noise[t, 0])
        for f in range(k):
            for t, j in enumerate(cols):
                g = groups[j]
                conditional(set_v(j, f), hyper.lam_v[g, f], hyper.mu_v[g, f], noise[t, 1 + f])
        off += width


@pytest.mark.parametrize("native", PATHS)
def test_sweeps_equal_brute_force_coordinate_gibbs(native):
    design, y = small_design()
    sampler = GibbsSampler(design, y, num_factors=2, native=native, fixed_alpha=1.7, seed=3)
    _fixed_hyper(sampler)
    params = {"w0": sampler.w0, "w": sampler.w.copy(), "V": sampler.V.copy()}
    rng = copy.deepcopy(sampler.rng)
    for _ in range(2):
        sampler.sweep()
        reference_sweep(design, y, params, sampler.hyper, 1.7, design.groups, rng)
    assert sampler.w0 == pytest.approx(params["w0"], rel=1e-9)
    np.testing.assert_allclose(sampler.w, params["w"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sampler.V, params["V"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("native", PATHS)
def test_cached_residuals_and_block_sums_stay_exact(native):
    """After many sweeps (hyperparameters and noise precision sampled too) the residuals and
    the relation blocks' per-entity sums still equal their definitions."""
    design, y = small_design(seed=1, n=20)
    sampler = GibbsSampler(design, y, num_factors=3, native=native, seed=0)
    for _ in range(30):
        sampler.sweep()
    yhat = fm_brute_force(sampler.w0, sampler.w, sampler.V, design.to_csr())
    np.testing.assert_allclose(sampler.e, y - yhat, atol=1e-9)
    for rel, Q in zip(sampler.relations, sampler.Q, strict=True):
        np.testing.assert_allclose(Q, rel.T @ sampler.V[rel.offset : rel.offset + rel.width], atol=1e-12)


@pytest.mark.skipif(not NATIVE, reason="native Gibbs kernel not built")
def test_native_and_numpy_chains_agree_with_sampled_hyperparameters():
    design, y = small_design(seed=2, n=25)
    chains = [GibbsSampler(design, y, num_factors=3, native=native, seed=9) for native in (False, True)]
    for _ in range(5):
        for s in chains:
            s.sweep()
    np.testing.assert_allclose(chains[0].V, chains[1].V, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(chains[0].w, chains[1].w, rtol=1e-9, atol=1e-11)
    assert chains[0].alpha == pytest.approx(chains[1].alpha, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# closed forms: Bayesian linear regression (num_factors = 0)
# ---------------------------------------------------------------------------------------------
def _linear_problem(n: int = 60, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = 0.7 + X @ np.array([1.0, -0.5, 0.25, 0.0])[:d] + rng.normal(0, 0.5, n)
    return X, y


def _posterior(X: np.ndarray, y: np.ndarray, alpha: float, lam: float, mu: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean and covariance of (w0, w) for y ~ N(w0 + Xw, 1/alpha), w ~ N(mu, 1/lam), flat w0;
    and log p(y | alpha) up to a constant."""
    Xt = np.column_stack([np.ones(len(y)), X])
    prior = np.r_[0.0, np.full(X.shape[1], lam)]
    A = alpha * Xt.T @ Xt + np.diag(prior)
    b = alpha * Xt.T @ y + prior * np.r_[0.0, np.full(X.shape[1], mu)]
    mean = np.linalg.solve(A, b)
    m0 = np.r_[0.0, np.full(X.shape[1], mu)]
    log_evidence = (0.5 * len(y) * np.log(alpha) - 0.5 * np.linalg.slogdet(A)[1]
                    - 0.5 * (alpha * y @ y + m0 @ (prior * m0) - b @ mean))  # fmt: skip
    return mean, np.linalg.inv(A), log_evidence


def _chain_mean(sampler: GibbsSampler, sweeps: int, burn: int = 50) -> np.ndarray:
    draws = []
    for it in range(sweeps + burn):
        sampler.sweep()
        if it >= burn:
            draws.append(np.r_[sampler.w0, sampler.w])
    return np.array(draws)


def test_linear_gaussian_posterior_is_the_ridge_solution():
    X, y = _linear_problem()
    sampler = GibbsSampler(GroupedDesign(sp.csr_matrix(X)), y, num_factors=0, fixed_alpha=4.0, sample_hyper=False, seed=1)
    sampler.hyper = _gibbs.Hyper(np.array([0.1]), np.array([2.0]), np.zeros((1, 0)), np.ones((1, 0)))
    draws = _chain_mean(sampler, 6000)
    mean, cov, _ = _posterior(X, y, 4.0, 2.0, 0.1)
    sd = np.sqrt(np.diag(cov))
    # Monte Carlo error: sd / sqrt(effective draws); the chain mixes within a few sweeps here
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 6 * sd / np.sqrt(6000 / 10))
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.1)


def test_a_linear_only_group_is_bayesian_linear_regression_at_any_num_factors():
    """Columns of a group in LINEAR_GROUPS keep zero factors: with every column in one, the FM at
    num_factors = 2 is Bayesian linear regression, whose posterior is the ridge solution."""
    X, y = _linear_problem()
    design = GroupedDesign(sp.csr_matrix(X), groups=np.zeros(X.shape[1], dtype=np.int64), group_names=("recent_mean",))
    sampler = GibbsSampler(design, y, num_factors=2, fixed_alpha=4.0, sample_hyper=False, seed=1)
    sampler.hyper = _gibbs.Hyper(np.array([0.1]), np.array([2.0]), np.zeros((1, 2)), np.ones((1, 2)))
    draws = _chain_mean(sampler, 6000)
    assert not sampler.V.any()
    mean, cov, _ = _posterior(X, y, 4.0, 2.0, 0.1)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 6 * sd / np.sqrt(6000 / 10))
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.1)


@pytest.mark.parametrize("native", PATHS)
def test_a_linear_only_column_next_to_factor_groups_keeps_zero_factors_and_exact_residuals(native):
    design, y = small_design(seed=3, n=30)
    names = ("user", "item", "recent_mean", "r1", "r2")  # group 2: the multi-hot columns, linear only
    design = GroupedDesign(design.X, design.relations, design.groups, names)
    sampler = GibbsSampler(design, y, num_factors=3, seed=2, native=native)
    cols = design.groups == 2
    for _ in range(15):
        sampler.sweep()
    assert not sampler.V[cols].any() and sampler.V[~cols].any() and sampler.w[cols].any()
    full = fm_brute_force(sampler.w0, sampler.w, sampler.V, design.to_csr())
    np.testing.assert_allclose(sampler.e, y - full, atol=1e-8)


def test_sampled_noise_precision_matches_one_dimensional_quadrature():
    """Fixed prior on w, noise precision alpha ~ Gamma(ALPHA_0/2, BETA_0/2) sampled: E[w | y] is
    the integral of the ridge mean over p(alpha | y), computed on a grid."""
    X, y = _linear_problem(n=40, seed=3)
    sampler = GibbsSampler(GroupedDesign(sp.csr_matrix(X)), y, num_factors=0, sample_hyper=False, seed=2)
    sampler.hyper = _gibbs.Hyper(np.array([0.0]), np.array([1.5]), np.zeros((1, 0)), np.ones((1, 0)))
    alphas, draws = [], []
    for it in range(6050):
        sampler.sweep()
        if it >= 50:
            alphas.append(sampler.alpha)
            draws.append(np.r_[sampler.w0, sampler.w])
    grid = np.linspace(0.5, 12.0, 2000)
    logp = np.array([gamma_dist.logpdf(a, ALPHA_0 / 2, scale=2 / BETA_0) + _posterior(X, y, a, 1.5, 0.0)[2] for a in grid])
    p = np.exp(logp - logp.max())
    p /= p.sum()
    expected_w = sum(pi * _posterior(X, y, a, 1.5, 0.0)[0] for pi, a in zip(p, grid, strict=True))
    expected_alpha = float(p @ grid)
    sd_alpha = float(np.sqrt(p @ (grid - expected_alpha) ** 2))
    assert np.mean(alphas) == pytest.approx(expected_alpha, abs=6 * sd_alpha / np.sqrt(600))
    sd_w = np.sqrt(np.diag(_posterior(X, y, expected_alpha, 1.5, 0.0)[1]))
    np.testing.assert_array_less(np.abs(np.mean(draws, 0) - expected_w), 6 * sd_w / np.sqrt(600))


def test_hyperparameters_follow_the_normal_gamma_posterior():
    """With the weights held fixed, (mu, lambda) of a group is drawn from its Normal-Gamma
    posterior: E[mu] = (GAMMA_0 MU_0 + sum w) / (GAMMA_0 + n), E[lambda] = a_n / b_n."""
    rng = np.random.default_rng(0)
    sampler = GibbsSampler(GroupedDesign(sp.csr_matrix(np.eye(12))), np.zeros(12), num_factors=1, seed=4)
    sampler.w[:] = rng.normal(0.8, 0.5, 12)
    sampler.V[:, 0] = rng.normal(-0.3, 2.0, 12)
    mus, lams = [], []
    for _ in range(8000):
        sampler.sample_hyperparameters()
        mus.append([sampler.hyper.mu_w[0], sampler.hyper.mu_v[0, 0]])
        lams.append([sampler.hyper.lam_w[0], sampler.hyper.lam_v[0, 0]])
    for col, theta in enumerate((sampler.w, sampler.V[:, 0])):
        n, mean = len(theta), theta.mean()
        a_n = (ALPHA_L + n) / 2
        b_n = (BETA_L + ((theta - mean) ** 2).sum() + GAMMA_0 * n / (GAMMA_0 + n) * (mean - MU_0) ** 2) / 2
        assert np.mean(lams, 0)[col] == pytest.approx(a_n / b_n, rel=0.04)
        assert np.mean(mus, 0)[col] == pytest.approx((GAMMA_0 * MU_0 + theta.sum()) / (GAMMA_0 + n), abs=0.02)


def test_probit_classifier_matches_the_maximum_likelihood_fit():
    rng = np.random.default_rng(7)
    n, true = 3000, np.array([1.0, -2.0, 0.5])
    X = rng.normal(size=(n, 3))
    y = (0.3 + X @ true + rng.normal(size=n) > 0).astype(np.float64)
    Xt = np.column_stack([np.ones(n), X])

    def nll(b):
        z = Xt @ b
        return -np.sum(np.where(y > 0, log_ndtr(z), log_ndtr(-z)))

    mle = minimize(nll, np.zeros(4), method="BFGS").x
    params = FMParams(predictor_type="binary_classifier", solver="mcmc", num_factors=1, mcmc_burn_in=50,
                      mcmc_samples=600, mcmc_saved_samples=0, seed=0)  # fmt: skip
    fm = train_fm_mcmc(sp.csr_matrix(X), y, params)
    np.testing.assert_allclose(np.r_[fm.w0, fm.w], mle, atol=0.08)
    np.testing.assert_allclose(mle, np.r_[0.3, true], atol=0.2)  # the reference itself is sane
    assert fm.link == "probit"
    np.testing.assert_allclose(fm.predict_score(X[:5]), ndtr(fm.decision_function(X[:5])))


# ---------------------------------------------------------------------------------------------
# averaging over samples, the artifact and its persistence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classifier", [False, True])
def test_averaged_predictions_equal_the_average_of_brute_force_predictions(classifier):
    design, y = small_design(seed=4, n=24)
    if classifier:
        y = (y > 3.0).astype(np.float64)
    train, held = design.take(np.arange(18)), design.take(np.arange(18, 24))
    kept = 12
    params = FMParams(predictor_type="binary_classifier" if classifier else "regressor", solver="mcmc",
                      num_factors=2, mcmc_burn_in=3, mcmc_samples=kept, mcmc_saved_samples=kept, seed=1)  # fmt: skip
    fm = train_fm_mcmc(train, y[:18], params, eval_set=(held, y[18:]))
    assert len(fm.samples) == kept
    Xh = held.to_csr()
    link = ndtr if classifier else (lambda z: np.minimum(np.maximum(z, y[:18].min()), y[:18].max()))  # in range
    per_sample = np.array([link(fm_brute_force(fm.samples.w0[s], fm.samples.w[s], fm.samples.V[s], Xh)) for s in range(kept)])
    np.testing.assert_allclose(fm.predict_score(Xh), per_sample.mean(0), rtol=1e-5, atol=1e-6)
    # the evaluation loss recorded at fit time is that of the same average
    pred = per_sample.mean(0)
    if classifier:
        expected = -np.mean(y[18:] * np.log(pred) + (1 - y[18:]) * np.log(1 - pred))
        assert fm.metadata["history"][-1]["eval_logloss"] == pytest.approx(expected, rel=1e-5)
    else:
        assert fm.metadata["history"][-1]["eval_mse"] == pytest.approx(np.mean((pred - y[18:]) ** 2), rel=1e-5)
    # the posterior mean is the mean of the kept samples (all of them are saved here)
    np.testing.assert_allclose(fm.V, fm.samples.V.mean(0), rtol=1e-5, atol=1e-6)
    assert fm.w0 == pytest.approx(fm.samples.w0.mean(), rel=1e-9)
    # decision_function is the FM at the posterior mean (what the k-NN vectors reproduce)
    np.testing.assert_allclose(fm.decision_function(Xh), fm_brute_force(fm.w0, fm.w, fm.V, Xh), rtol=1e-5, atol=1e-5)


def test_saved_samples_are_evenly_thinned_and_round_trip(tmp_path):
    design, y = small_design(seed=5, n=20)
    params = FMParams(solver="mcmc", num_factors=2, mcmc_burn_in=2, mcmc_samples=9, mcmc_saved_samples=3, seed=2)
    fm = train_fm_mcmc(design, y, params)
    assert len(fm.samples) == 3 and fm.metadata["mcmc_kept_samples"] == 9
    fm.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["format_version"] == 2 and meta["n_samples"] == 3 and meta["link"] == "logit"
    back = FittedFM.load(tmp_path / "m")
    X = design.to_csr()
    np.testing.assert_array_equal(back.predict(X), fm.predict(X))
    np.testing.assert_array_equal(back.samples.V, fm.samples.V)
    # a model without samples or probit link is still written as version 1 (older readers)
    plain = FittedFM(0.5, np.ones(3), np.ones((3, 2)))
    plain.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["format_version"] == 1
    # a tampered sample count is a format error, not a silent mismatch
    meta["n_samples"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError):
        FittedFM.load(tmp_path / "m")


def test_backend_dispatches_on_solver():
    design, y = small_design(seed=6, n=20)
    X = design.X
    params = FMParams(solver="mcmc", num_factors=2, mcmc_burn_in=2, mcmc_samples=4, seed=3)
    fm = TorchBackend().fit_fm(X, y, params, options=TrainOptions(metadata={"n_users": 3, "n_items": 4}))
    direct = train_fm_mcmc(X, y, params, options=TrainOptions(metadata={"n_users": 3, "n_items": 4}))
    assert fm.metadata["solver"] == "mcmc"
    np.testing.assert_array_equal(fm.V, direct.V)


def test_parameters_are_validated():
    with pytest.raises(ConfigError, match="solver"):
        FMParams(solver="als").validate()
    with pytest.raises(ConfigError, match="mcmc_burn_in"):
        FMParams(mcmc_burn_in=-1).validate()
    with pytest.raises(ConfigError, match="mcmc_samples"):
        FMParams(mcmc_samples=0).validate()
    from recsys.config import config_from_dict

    # MCMC is local-only: a SageMaker configuration asking for it fails before any request
    with pytest.raises(ConfigError, match=r"\[regressor\] solver = 'mcmc' does not run on the sagemaker backend"):
        config_from_dict({"backend": "sagemaker", "regressor": {"solver": "mcmc"}})
    with pytest.raises(ConfigError, match="cannot train the 'softmax' loss"):
        config_from_dict({"ranking": {"solver": "mcmc", "loss": "softmax"}})
    assert "solver" not in FMParams.SAGEMAKER_NAMES and "mcmc_samples" not in FMParams.SAGEMAKER_NAMES


def test_bad_inputs_raise_data_errors():
    design, y = small_design()
    params = FMParams(solver="mcmc", num_factors=2, mcmc_burn_in=1, mcmc_samples=1)
    with pytest.raises(DataError, match="labels"):
        train_fm_mcmc(design, y[:-1], params)
    with pytest.raises(DataError, match="one entry per feature"):
        train_fm_mcmc(design, y, params, groups=np.zeros(3))
    bad = GroupedDesign(design.X, (RelationBlock(design.relations[0].index, sp.csr_matrix(np.full((3, 2), np.nan))),))
    with pytest.raises(DataError, match="NaN"):
        train_fm_mcmc(bad, y, params)
