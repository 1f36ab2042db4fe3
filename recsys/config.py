"""The run configuration: every parameter of ``recsys run``, from TOML/YAML files and flags.

A config file has top-level keys and one table per stage::

    seed = 0
    backend = "torch"          # or "sagemaker"
    objective = "ranking"      # or "classifier" (the lab's classifier + k-NN path)
    out = "recsys-output"

    [data]        path, format, preset, test_path, user_column, item_column, ...
    [prepare]     min_customer_ratings = 18, min_product_ratings = 95, split, ...
    [regressor]   SageMaker FM hyperparameters (lab: num_factors 64, epochs 25, ...)
    [classifier]  SageMaker FM hyperparameters (lab: num_factors 128, batch 512, 25 epochs)
    [ranking]     loss, negatives, history_length, ... and FM hyperparameters
    [knn]         SageMaker k-NN hyperparameters (k = 100, index_type, index_metric)
    [recommend]   exclude_seen, csv, sample_customers
    [evaluation]  liked_threshold
    [sagemaker]   bucket, role, prefix, instance types, ... (only for backend = "sagemaker")

Unknown keys are errors that name the key and list the valid ones. ``seed`` feeds every stage
that has no seed of its own in the file. :func:`dump_toml` writes the effective config back.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.prepare import PrepareConfig
from .errors import ConfigError
from .feature_groups import FeatureGroupsConfig
from .features import HISTORY_WEIGHTINGS
from .params import FMParams, KNNParams, check_choice, is_number, params_from_dict

__all__ = [
    "RunConfig", "DataConfig", "RankingConfig", "RecommendConfig", "EvaluationConfig", "load_config",
    "config_from_dict", "dump_toml", "apply_overrides", "apply_seed", "OBJECTIVES", "BACKENDS",
]  # fmt: skip

#: Seeds go to numpy, torch and FAISS; all take this range.
MAX_SEED = 2**32 - 1
#: A larger config file is refused before parsing (configs are a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20

OBJECTIVES = ("ranking", "classifier")
BACKENDS = ("torch", "sagemaker")
DATA_FORMATS = ("amazon", "movielens", "csv", "parquet")
PRESETS = ("tiny", "default", "full")
RANKING_LOSSES = ("auto", "softmax", "bpr", "classifier")


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (messages never carry long input)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class DataConfig:
    """Where the ratings come from. No ``path``: the built-in dataset ``preset``."""

    path: str | None = None
    format: str | None = None
    preset: str = "default"
    test_path: str | None = None
    user_column: str | None = None
    item_column: str | None = None
    rating_column: str | None = None
    timestamp_column: str | None = None
    title_column: str | None = None
    sep: str | None = None

    def validate(self) -> DataConfig:
        if self.format is not None:
            check_choice("data.format", self.format, DATA_FORMATS, quote=str)
        shown = repr(str(self.preset)[:40])
        check_choice("data.preset", self.preset, PRESETS, quote=str, shown=shown)
        if self.path is not None and self.preset != DataConfig.preset:
            raise ConfigError(
                f"data.preset = {self.preset!r} chooses a built-in dataset, but data.path is set too (--data); "
                "drop one of them (--preset applies only without --data)"
            )
        for name in (f.name for f in dataclasses.fields(self) if f.name not in ("format", "preset")):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or "\x00" in value):
                raise ConfigError(f"data.{name} must be a non-empty text, got {_short(value)}")
        return self

    def mapping(self) -> dict[str, str]:
        """Column-mapping options for CSV/Parquet loaders (only those that were set)."""
        names = ("user_column", "item_column", "rating_column", "timestamp_column", "title_column")
        out = {k.removesuffix("_column"): getattr(self, k) for k in names if getattr(self, k)}
        if self.sep:
            out["sep"] = self.sep
        return out


@dataclass
class RankingConfig:
    """The ranking objective: an FM over [user | video | recent videos] trained to put each
    customer's next video first (see :mod:`recsys.features` and the README)."""

    loss: str = "auto"
    negatives: int | None = None
    history_length: int = 5
    history_weighting: str = "uniform"
    fm: FMParams = field(
        default_factory=lambda: FMParams(
            predictor_type="binary_classifier", num_factors=64, epochs=30, mini_batch_size=1024,
            linear_lr=0.003, factors_lr=0.003, factors_init_sigma=0.01, early_stopping_patience=3,
        )  # fmt: skip
    )

    OWN_KEYS = ("loss", "negatives", "history_length", "history_weighting")

    def resolved_loss(self, backend: Any) -> str:
        """``auto`` means the backend's best ranking loss (:attr:`backends.base.Backend.ranking_losses`):
        sampled softmax locally, the sampled-negatives classifier on SageMaker (whose built-in
        FM only has regression and classification losses)."""
        return backend.ranking_losses[0] if self.loss == "auto" else self.loss

    def validate(self) -> RankingConfig:
        check_choice("ranking.loss", self.loss, RANKING_LOSSES, quote=str)
        # negatives = None: the loss's default (recsys.objectives.DEFAULT_NEGATIVES)
        for name, v, low in (("negatives", self.negatives, 1), ("history_length", self.history_length, 0)):
            if not (v is None and name == "negatives") and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise ConfigError(f"ranking.{name} must be an integer >= {low}, got {v!r}")
        check_choice("ranking.history_weighting", self.history_weighting, HISTORY_WEIGHTINGS)
        self.fm.validate()
        if self.fm.solver != "sgd" and self.loss in ("softmax", "bpr"):
            raise ConfigError(f"[ranking] solver = {self.fm.solver!r} cannot train the {self.loss!r} loss; "
                              "set solver = 'sgd' (or loss = 'classifier')")  # fmt: skip
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.OWN_KEYS}
        out.update({k: v for k, v in self.fm.to_dict().items() if k != "predictor_type"})
        return out


@dataclass
class RecommendConfig:
    """The recommendations written (``k`` lives in ``[knn]``). ``customers = "all"``: every
    customer with a rating gets a list (the model's customers from the model, the others by
    fold-in from what they watched, :mod:`recsys.fold_in`); ``"trained"``: only the model's."""

    exclude_seen: bool = True
    csv: bool = False
    sample_customers: int = 5
    customers: str = "all"

    def validate(self) -> RecommendConfig:
        if self.customers not in ("all", "trained"):
            raise ConfigError(f"recommend.customers must be 'all' or 'trained', got {self.customers!r}")
        for name in ("exclude_seen", "csv"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"recommend.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.sample_customers, int) or isinstance(self.sample_customers, bool) or self.sample_customers < 0:
            raise ConfigError(f"recommend.sample_customers must be an integer >= 0, got {self.sample_customers!r}")
        return self


@dataclass
class EvaluationConfig:
    """Ranking evaluation options: ``liked_threshold`` adds metrics over held-out videos the
    customer liked (rated at least this); ``None`` turns that off."""

    liked_threshold: float | None = 4.0

    def validate(self) -> EvaluationConfig:
        t = self.liked_threshold
        if t is not None and not is_number(t):
            raise ConfigError(f"evaluation.liked_threshold must be a number or omitted, got {t!r}")
        return self


def _lab_regressor() -> FMParams:
    return FMParams(predictor_type="regressor", num_factors=64, epochs=25, mini_batch_size=1000,
                    clip_gradient=5.0, rescale_grad=1.0 / 1000)  # fmt: skip


def _lab_classifier() -> FMParams:
    return FMParams(predictor_type="binary_classifier", num_factors=128, epochs=25, mini_batch_size=512)


#: The rating models' settings where the backend runs the Bayesian FM (``solver = "mcmc"``),
#: chosen on validation folds carved from the training rows (benchmarks/bench_quality.py,
#: ml-latest-small and the ``full`` preset). Keys a config sets itself keep its value; with
#: ``lab = true`` (``--lab``) or on a backend without MCMC the lab's SageMaker settings apply.
LOCAL_BEST = {
    "regressor": {"solver": "mcmc", "num_factors": 8, "mcmc_burn_in": 10, "mcmc_samples": 60,
                  "mcmc_saved_samples": 0, "mcmc_init_sigma": 0.3},
    "classifier": {"solver": "mcmc", "num_factors": 8, "mcmc_burn_in": 20, "mcmc_samples": 100,
                   "mcmc_saved_samples": 16, "mcmc_init_sigma": 0.3},
    # [features]: the customer's current rating level (the mean of their last 3 ratings)
    "features": {"recent_mean": 3},
}  # fmt: skip


@dataclass
class RunConfig:
    """Every parameter of a run. The rating models use the best settings measured on the
    backend (:data:`LOCAL_BEST` locally); ``lab = True`` reproduces the lab's SageMaker settings."""

    seed: int = 0
    backend: str = "torch"
    objective: str = "ranking"
    out: str = "recsys-output"
    lab: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    regressor: FMParams = field(default_factory=_lab_regressor)
    classifier: FMParams = field(default_factory=_lab_classifier)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    knn: KNNParams = field(default_factory=KNNParams)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    features: FeatureGroupsConfig = field(default_factory=FeatureGroupsConfig)
    sagemaker: dict[str, Any] = field(default_factory=dict)

    TOP_KEYS = ("seed", "backend", "objective", "out", "lab")
    SECTIONS = ("data", "prepare", "regressor", "classifier", "ranking", "knn", "features", "recommend",
                "evaluation", "sagemaker")  # fmt: skip

    def _seeded(self) -> tuple[tuple[str, Any], ...]:
        """The sections with a seed of their own, by name."""
        return (("prepare", self.prepare), ("regressor", self.regressor), ("classifier", self.classifier),
                ("ranking", self.ranking.fm))  # fmt: skip

    def _rating_model_defaults(self, solvers: tuple[str, ...]) -> None:
        """The settings of :data:`LOCAL_BEST` (or the lab's) for every key a config did not set."""
        explicit = getattr(self, "_explicit_keys", {})
        # the classifier that recommends (objective = "classifier") keeps the lab's SGD FM and
        # design: its factors rank next videos far better through k-NN (default preset HR@10
        # 0.106, vs 0.030 as a Bayesian classifier and 0.007 with the rating level), while the
        # Bayesian FM's strength is the rating question itself
        local = not self.lab and "mcmc" in solvers  # the backend runs the Bayesian FM
        level = local and self.objective != "classifier"
        self.features = dataclasses.replace(self.features, **{
            key: value if level else getattr(FeatureGroupsConfig, key)
            for key, value in LOCAL_BEST["features"].items() if key not in explicit.get("features", ())
        })  # fmt: skip
        for name, lab in (("regressor", _lab_regressor()), ("classifier", _lab_classifier())):
            best = local and not (name == "classifier" and self.objective == "classifier")
            fm = getattr(self, name)
            for key, value in LOCAL_BEST[name].items():
                if key not in explicit.get(name, ()):
                    setattr(fm, key, value if best else getattr(lab, key))

    def validate(self) -> RunConfig:
        seeds = {"seed": self.seed, **{f"{name}.seed": obj.seed for name, obj in self._seeded()}}
        for name, seed in seeds.items():
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"{name} must be an integer from 0 to {MAX_SEED}, got {_short(seed)}")
        check_choice("backend", self.backend, BACKENDS, quote=str)
        check_choice("objective", self.objective, OBJECTIVES, quote=str)
        if not isinstance(self.out, str) or not self.out or "\x00" in self.out:
            raise ConfigError(f"out must be a folder path, got {_short(self.out)}")
        self.data.validate()
        self.prepare.validate()
        if not isinstance(self.lab, bool):
            raise ConfigError(f"lab must be true or false, got {_short(self.lab)}")
        from backends import backend_class

        cls = backend_class(self.backend)
        self._rating_model_defaults(cls.solvers)
        for name, kind in (("regressor", "regressor"), ("classifier", "binary_classifier")):
            if getattr(self, name).predictor_type != kind:
                raise ConfigError(f"[{name}] predictor_type must be {kind!r}")
        for section in (self.regressor, self.classifier, self.ranking, self.knn, self.recommend, self.evaluation):
            section.validate()
        if cls.options_section:
            cls.check_options(getattr(self, cls.options_section))
        for name, fm in (("regressor", self.regressor), ("classifier", self.classifier), ("ranking", self.ranking.fm)):
            if fm.solver not in cls.solvers:
                raise ConfigError(
                    f"[{name}] solver = {fm.solver!r} does not run on the {cls.name} backend, which trains "
                    f"{', '.join(map(repr, cls.solvers))}; set solver = 'sgd' (or use --backend torch)"
                )
        if self.objective == "ranking" and self.ranking.loss not in ("auto", *cls.ranking_losses):
            raise ConfigError(
                f"the {cls.name} backend cannot train the ranking loss {self.ranking.loss!r}; "
                f"set [ranking] loss to one of: auto, {', '.join(cls.ranking_losses)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.TOP_KEYS}
        for name in self.SECTIONS:
            value = getattr(self, name)
            out[name] = dict(value) if name == "sagemaker" else (
                value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
        return out


def _fm_section(values: dict[str, Any], where: str, base: FMParams, predictor_type: str) -> FMParams:
    if values.get("predictor_type", predictor_type) != predictor_type:
        raise ConfigError(f"[{where}] predictor_type is fixed to {predictor_type!r}")
    return params_from_dict(FMParams, {**base.to_dict(), **values, "predictor_type": predictor_type}, where=where)


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested dicts (a parsed TOML/YAML file).

    Section seeds that are not given follow the top-level ``seed``.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a table of keys, got {type(raw).__name__}")
    valid = list(RunConfig.TOP_KEYS) + list(RunConfig.SECTIONS)
    unknown = sorted(set(raw) - set(valid), key=str)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(valid)}"
        )
    cfg = RunConfig(**{key: raw[key] for key in RunConfig.TOP_KEYS if key in raw})
    explicit: dict[str, set[str]] = {}  # section -> the keys the config sets

    def section(name: str) -> dict[str, Any]:
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value pairs")
        explicit[name] = set(value)
        return value

    cfg.data = params_from_dict(DataConfig, section("data"), where="data")
    cfg.prepare = params_from_dict(PrepareConfig, section("prepare"), where="prepare")
    regressor, classifier, features = section("regressor"), section("classifier"), section("features")
    cfg.regressor = _fm_section(regressor, "regressor", _lab_regressor(), "regressor")
    cfg.classifier = _fm_section(classifier, "classifier", _lab_classifier(), "binary_classifier")
    ranking_raw = section("ranking")
    own = {k: v for k, v in ranking_raw.items() if k in RankingConfig.OWN_KEYS}
    fm_raw = {k: v for k, v in ranking_raw.items() if k not in RankingConfig.OWN_KEYS}
    fm_names = [f.name for f in dataclasses.fields(FMParams) if f.name != "predictor_type"]
    if set(fm_raw) - set(fm_names):  # the message lists the section's own keys and the FM's
        params_from_dict(dict.fromkeys(RankingConfig.OWN_KEYS + tuple(fm_names)), fm_raw, where="ranking")
    cfg.ranking = RankingConfig(**own)
    cfg.ranking.fm = _fm_section(fm_raw, "ranking", RankingConfig().fm, "binary_classifier")
    cfg.knn = params_from_dict(KNNParams, section("knn"), where="knn")
    try:
        cfg.features = params_from_dict(FeatureGroupsConfig, features, where="features")
    except ConfigError as exc:
        raise ConfigError(f"[features] {exc}") from None
    cfg.recommend = params_from_dict(RecommendConfig, section("recommend"), where="recommend")
    cfg.evaluation = params_from_dict(EvaluationConfig, section("evaluation"), where="evaluation")
    cfg.sagemaker = dict(section("sagemaker"))
    cfg._explicit_keys = explicit  # type: ignore[attr-defined]
    apply_seed(cfg, cfg.seed)
    return cfg.validate()


def apply_seed(cfg: RunConfig, seed: int) -> RunConfig:
    """Set ``seed`` everywhere a section did not set its own."""
    cfg.seed = seed
    explicit = getattr(cfg, "_explicit_keys", {})
    for name, obj in cfg._seeded():
        if "seed" not in explicit.get(name, ()):
            obj.seed = seed
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read a ``.toml``, ``.yaml`` / ``.yml`` or ``.json`` config file. Every problem raises
    :class:`ConfigError` naming the file (and, for syntax errors, the line), never quoting it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file must end in .toml, .yaml, .yml or .json, got {path.name}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path} ({exc.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {len(data):,} bytes; a config file is at most {MAX_CONFIG_BYTES:,}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (line {line} has a byte that is not UTF-8); save it as UTF-8") from None
    return config_from_dict(parse_config_text(text, suffix, source=str(path)), source=str(path))


def parse_config_text(text: str, suffix: str, *, source: str = "config") -> Any:
    """Parse config text in the format ``suffix`` names; a syntax error raises
    :class:`ConfigError` with the line (and column) but not the text."""
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"cannot parse {source}: nested too deeply") from None
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, JSONDecodeError (all ValueError-like)
        raise ConfigError(f"cannot parse {source}: {_syntax_error(exc)}") from None


def _syntax_error(exc: Exception) -> str:
    """Where a parser failed, without the text around it (YAML's messages quote it)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:  # yaml.MarkedYAMLError
        return f"{getattr(exc, 'problem', None) or 'invalid YAML'} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    if type(exc).__name__ == "TOMLDecodeError":
        return str(exc)  # "Invalid value (at line 3, column 9)": no content
    return f"{type(exc).__name__} (invalid {'YAML' if 'yaml' in type(exc).__module__ else 'syntax'})"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # also TOML's nan, inf and -inf
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. [sagemaker] tags = {team = "recs"}
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(cfg: RunConfig) -> str:
    """The config as TOML text (keys whose value is unset are left out: they mean the default)."""
    data = cfg.to_dict()
    lines = ["# recsys run configuration (effective values)"]
    lines += [f"{key} = {_toml_value(data[key])}" for key in RunConfig.TOP_KEYS]
    for name in RunConfig.SECTIONS:
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in data[name].items() if value is not None]
    return "\n".join(lines) + "\n"


#: Flat override names (CLI flags / ``recsys.run(**overrides)``) -> where they go.
OVERRIDES: dict[str, tuple[str, ...]] = {
    **{key: (key,) for key in ("out", "backend", "objective", "lab")},
    "data_path": ("data", "path"),
    "data_format": ("data", "format"),
    "preset": ("data", "preset"),
    **{key: ("data", key) for key in ("test_path", "user_column", "item_column", "rating_column",
                                      "timestamp_column", "title_column", "sep")},  # fmt: skip
    **{key: ("prepare", key) for key in ("min_customer_ratings", "min_product_ratings", "split")},
    "k": ("knn", "k"),
    "csv": ("recommend", "csv"),
}


def apply_overrides(cfg: RunConfig, **overrides: Any) -> RunConfig:
    """Apply flat overrides (``None`` values are ignored) and re-validate."""
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "seed":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"seed must be an integer, got {value!r}")
            apply_seed(cfg, value)
            continue
        if key == "sagemaker":
            if not isinstance(value, dict):
                raise ConfigError(f"sagemaker must be a dict of [sagemaker] options, got {type(value).__name__}")
            cfg.sagemaker = {**cfg.sagemaker, **value}
            continue
        where = OVERRIDES.get(key)
        if where is None:
            raise ConfigError(f"unknown option {key!r}; valid options: seed, sagemaker, {', '.join(OVERRIDES)}")
        setattr(getattr(cfg, where[0]) if len(where) > 1 else cfg, where[-1], value)
    return cfg.validate()
