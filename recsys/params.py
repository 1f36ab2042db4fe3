"""Hyperparameters shared by every backend.

Names and defaults mirror SageMaker's built-in Factorization Machines and k-NN algorithms, so
one configuration runs on either backend. Parameters that only the local (torch) backend
understands are marked "local only"; they are never sent to SageMaker.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError

__all__ = ["FMParams", "KNNParams", "params_from_dict", "FM_LIMITS"]

PREDICTOR_TYPES = ("regressor", "binary_classifier")
INIT_METHODS = ("normal", "uniform", "constant")
OPTIMIZERS = ("adam", "sgd", "adagrad")
SOLVERS = ("sgd", "mcmc")
INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat")
INDEX_METRICS = ("INNER_PRODUCT", "L2", "COSINE")


#: Upper bounds of the size-like FM hyperparameters: far above anything that trains in useful
#: time (SageMaker suggests num_factors in [2, 1000] and feature_dim up to 10,000,000), low enough
#: that a typo fails here instead of overflowing or allocating terabytes later.
FM_LIMITS = {"num_factors": 4096, "feature_dim": 2**31 - 1, "epochs": 100_000, "mini_batch_size": 1_000_000,
             "threads": 1024, "early_stopping_patience": 100_000}  # fmt: skip


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool); an int too large for a float is not one."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def _check_number(name: str, value: Any, *, positive: bool = True, allow_none: bool = False,
                  integer: bool = False, maximum: int | None = None) -> None:
    """A finite number > 0 (>= 0 with ``positive=False``); ``integer``: also whole (1.0 passes)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:  # no math.isfinite on an int: it may be too large for a float
        ok = ok and (isinstance(value, int) or (math.isfinite(value) and value.is_integer()))
    else:
        ok = ok and is_number(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        kind = "a positive integer" if integer else "a positive number" if positive else "a non-negative number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if maximum is not None and value > maximum:
        digits = len(str(int(value)))
        shown = f"{value:,}" if digits <= 30 else f"an integer of {digits} digits"
        raise ConfigError(f"{name} must be at most {maximum:,}, got {shown}")


def check_choice(name: str, value: Any, choices: tuple[str, ...], *,
                 quote: Callable[[str], str] = repr, shown: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (listed through ``quote``)."""
    if value not in choices:
        listed = ", ".join(map(quote, choices))
        raise ConfigError(f"{name} must be one of {listed}; got {shown or repr(value)}")


@dataclass
class FMParams:
    """Factorization-machine hyperparameters (SageMaker ``factorization-machines`` names).

    ``feature_dim`` may be left ``None``: it is then taken from the design matrix.
    """

    num_factors: int = 64
    predictor_type: str = "regressor"
    feature_dim: int | None = None
    epochs: int = 1
    mini_batch_size: int = 1000
    clip_gradient: float | None = None
    eps: float | None = None
    rescale_grad: float | None = None
    bias_lr: float = 0.1
    linear_lr: float = 0.001
    factors_lr: float = 0.0001
    bias_wd: float = 0.01
    linear_wd: float = 0.001
    factors_wd: float = 0.00001
    bias_init_method: str = "normal"
    bias_init_scale: float | None = None
    bias_init_sigma: float = 0.01
    bias_init_value: float | None = None
    linear_init_method: str = "normal"
    linear_init_scale: float | None = None
    linear_init_sigma: float = 0.01
    linear_init_value: float | None = None
    factors_init_method: str = "normal"
    factors_init_scale: float | None = None
    factors_init_sigma: float = 0.001
    factors_init_value: float | None = None
    # ---- local only -------------------------------------------------------------------
    optimizer: str = "adam"
    seed: int = 0
    #: torch threads while training (None: 1 -- batches are small, see backends.local.fm)
    threads: int | None = None
    #: stop when the evaluation metric has not improved for this many epochs (keeps the best)
    early_stopping_patience: int | None = None
    #: "sgd": the optimizer above, SageMaker's semantics; "mcmc": a Bayesian FM sampled by Gibbs
    #: sampling (backends.local.mcmc) -- no learning rates or weight decays, which it ignores,
    #: as it ignores epochs, mini_batch_size and the *_init_* settings
    solver: str = "sgd"
    #: MCMC: sweeps discarded before the samples that are averaged
    mcmc_burn_in: int = 10
    #: MCMC: sweeps kept (predictions and the posterior mean average over them; more score
    #: better on validation, 60 keeps the default within 2x the SGD FM's time: benchmarks/README.md)
    mcmc_samples: int = 60
    #: MCMC: how many of the kept samples (evenly thinned) the fitted model stores for later
    #: predictions to average over; 0 stores only the posterior mean, which predicts as well as
    #: the average over every kept sample on ml-latest-small (benchmarks/README.md)
    mcmc_saved_samples: int = 0
    #: MCMC: standard deviation of the factors' random start (0.1, libFM's, leaves the factors
    #: near zero for 100+ sweeps on the full preset: benchmarks/README.md)
    mcmc_init_sigma: float = 0.3

    #: Names SageMaker's FM understands (feature_dim, then the rest above the "local only" line).
    SAGEMAKER_NAMES: ClassVar[tuple[str, ...]]

    def validate(self) -> FMParams:
        _check_number("num_factors", self.num_factors, integer=True, maximum=FM_LIMITS["num_factors"])
        check_choice("predictor_type", self.predictor_type, PREDICTOR_TYPES)
        for name in ("feature_dim", "epochs", "mini_batch_size"):
            _check_number(name, getattr(self, name), allow_none=name == "feature_dim", integer=True,
                          maximum=FM_LIMITS[name])  # fmt: skip
        for name in ("clip_gradient", "eps", "rescale_grad"):
            _check_number(name, getattr(self, name), allow_none=True)
        for part in ("bias", "linear", "factors"):
            _check_number(f"{part}_lr", getattr(self, f"{part}_lr"), positive=False)
            _check_number(f"{part}_wd", getattr(self, f"{part}_wd"), positive=False)
            method = getattr(self, f"{part}_init_method")
            check_choice(f"{part}_init_method", method, INIT_METHODS)
            if method == "constant":
                value = getattr(self, f"{part}_init_value")
                if not is_number(value):
                    raise ConfigError(f"{part}_init_method='constant' needs a finite {part}_init_value, got {value!r}")
            else:
                key = f"{part}_init_{'scale' if method == 'uniform' else 'sigma'}"
                _check_number(key, getattr(self, key), positive=False)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("threads", "early_stopping_patience"):
            _check_number(name, getattr(self, name), allow_none=True, integer=True, maximum=FM_LIMITS[name])
        check_choice("solver", self.solver, SOLVERS)
        for name in ("mcmc_burn_in", "mcmc_saved_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= FM_LIMITS["epochs"]:
                raise ConfigError(f"{name} must be an integer in 0..{FM_LIMITS['epochs']:,}, got {value!r}")
        _check_number("mcmc_samples", self.mcmc_samples, integer=True, maximum=FM_LIMITS["epochs"])
        _check_number("mcmc_init_sigma", self.mcmc_init_sigma)
        return self

    to_dict = dataclasses.asdict


_FM_NAMES = [f.name for f in dataclasses.fields(FMParams)]
_SHARED = _FM_NAMES[: _FM_NAMES.index("optimizer")]  # above the "local only" line
FMParams.SAGEMAKER_NAMES = ("feature_dim", *(name for name in _SHARED if name != "feature_dim"))


@dataclass
class KNNParams:
    """k-NN hyperparameters (SageMaker ``knn`` names). ``k`` defaults to 100 (the lab's top-100)."""

    k: int = 100
    index_type: str = "faiss.Flat"
    index_metric: str = "INNER_PRODUCT"
    predictor_type: str = "classifier"
    sample_size: int | None = None
    mini_batch_size: int = 5000
    faiss_index_ivf_nlists: int | str = "auto"
    # ---- local only -------------------------------------------------------------------
    nprobe: int = 16
    query_batch_size: int = 4096
    threads: int | None = None

    def validate(self) -> KNNParams:
        _check_number("k", self.k, integer=True)
        check_choice("index_type", self.index_type, INDEX_TYPES)
        check_choice("index_metric", self.index_metric, INDEX_METRICS)
        check_choice("predictor_type", self.predictor_type, ("classifier", "regressor"))
        for name in ("sample_size", "mini_batch_size", "faiss_index_ivf_nlists", "nprobe", "query_batch_size", "threads"):
            value = getattr(self, name)
            if name != "faiss_index_ivf_nlists" or value != "auto":
                _check_number(name, value, allow_none=name in ("sample_size", "threads"), integer=True)
        return self

    to_dict = dataclasses.asdict


def params_from_dict(cls: type, values: dict[str, Any], *, where: str) -> Any:
    """Build ``cls`` from ``values``; an unknown key raises :class:`ConfigError` naming the valid
    ones (``cls`` may also be a dict whose keys are the valid names: only the check is done)."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table of key = value pairs, got {type(values).__name__}")
    names = list(cls) if isinstance(cls, dict) else [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in [{where}]; "
            f"valid keys: {', '.join(names)}"
        )
    return cls(**values)
