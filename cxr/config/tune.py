"""The tuning job's config: TuneConfig, the search space's parameters and the default space."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cxr.config.checks import check, require
from cxr.config.train import AugmentConfig, TrainConfig, default_augmentation
from cxr.errors import UserError
from cxr.options import setting

# What a search space may tune: TrainConfig's settings that change what is trained (and
# that a trial can take without a new model builder), and the kinds of draw each allows.
# `augment` is a strength: 1 is the training job's default augmentation (AugmentConfig()),
# 0 none, 2 twice its rotations, shifts and zooms.
SEARCH_KINDS = {
    "learning_rate": ("loguniform", "uniform", "choice", "fixed"),
    "dropout": ("uniform", "choice", "fixed"),
    "augment": ("uniform", "choice", "fixed"),
    "batch_size": ("choice", "fixed"),
    "class_weights": ("choice", "fixed"),
    "lr_schedule": ("choice", "fixed"),
}
# The Python type each tuned value must have (bool is not a number here: `dropout: true`
# is a mistake, not 1.0).
_VALUE_TYPES = {"learning_rate": float, "dropout": float, "augment": float, "batch_size": int,
                "class_weights": bool, "lr_schedule": str}
TUNE_METRICS = {"val_loss": "min", "val_auc": "max"}  # the metric and which way is better
SEARCHERS = ("auto", "random", "optuna")


def _is_value_of(name: str, value) -> bool:
    wanted = _VALUE_TYPES[name]
    if wanted is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, wanted)


@dataclass(frozen=True)
class SearchParameter:
    """One tuned setting and what a trial draws it from.

    kind "loguniform" or "uniform": values are (low, high); "choice": the options, drawn
    with equal chance; "fixed": the one value every trial takes.
    """

    name: str
    kind: str
    values: tuple

    def __post_init__(self) -> None:
        require(self.name in SEARCH_KINDS,
                 f"unknown parameter {self.name!r} (tunable: {', '.join(SEARCH_KINDS)})")
        kinds = SEARCH_KINDS[self.name]
        require(self.kind in kinds, f"{self.name}: {self.kind!r} is not one of {', '.join(kinds)}")
        for value in self.values:
            require(_is_value_of(self.name, value),
                     f"{self.name}: {value!r} is not a {_VALUE_TYPES[self.name].__name__}")
        if self.kind in ("loguniform", "uniform"):
            require(len(self.values) == 2, f"{self.name}: {self.kind} takes [low, high], got {list(self.values)}")
            low, high = self.values
            require(low < high, f"{self.name}: {self.kind} needs low < high, got [{low}, {high}]")
            require(self.kind == "uniform" or low > 0, f"{self.name}: loguniform needs low > 0, got {low}")
        elif self.kind == "choice":
            require(len(self.values) >= 1, f"{self.name}: choice needs at least one option")
            require(len(set(self.values)) == len(self.values),
                     f"{self.name}: choice has duplicates: {list(self.values)}")
        else:
            require(len(self.values) == 1, f"{self.name}: a fixed value is one value, got {list(self.values)}")

    def extremes(self) -> tuple:
        """The values that prove a trial can take every draw: the bounds, or every option."""
        return self.values


# The default search space: the settings that moved test AUC by 0.02 to 0.07 when tuned by
# hand (docs/benchmarks.md, "quality"), around the training job's defaults. Learning rates
# from the paper's 1e-3, which learns erratically here, down to 1e-5; batch sizes a laptop
# and a GPU both hold at 299 px.
DEFAULT_SPACE = (
    SearchParameter("learning_rate", "loguniform", (1e-5, 1e-3)),
    SearchParameter("dropout", "uniform", (0.0, 0.5)),
    SearchParameter("batch_size", "choice", (16, 32, 64)),
    SearchParameter("augment", "uniform", (0.0, 2.0)),
    SearchParameter("class_weights", "choice", (True, False)),
)


def scaled_augmentation(strength: float, base: AugmentConfig | None = None) -> AugmentConfig:
    """`base` (default: the training job's default augmentation) times `strength`
    (AugmentConfig checks the result)."""
    return (base or default_augmentation()).scaled(strength)


@dataclass(frozen=True)
class TuneConfig:
    """A hyperparameter search: `trials` training runs, each the training job with `train`'s
    settings and the values it drew from `space` in place of theirs.

    `train.name` names the sweep (`<storage>/<name>/`). Checked on construction: every value
    the space can draw must make a valid TrainConfig, so a space the model cannot take is
    refused before any trial starts.
    """

    train: TrainConfig = setting(factory=TrainConfig, flag=None)
    trials: int = setting(16, flag="--trials", help="training runs to try")
    # Read from --space by the tuning job's parser (cxr.tune.space), before anything starts.
    space_file: str | None = setting(None, flag="--space", metavar="FILE",
                                     help="YAML or JSON: the settings to tune and their ranges, replacing the "
                                          "default space (learning rate, dropout, batch size, augmentation "
                                          "strength, class weights; format in cxr/tune/space.py)")
    space: tuple[SearchParameter, ...] = setting(DEFAULT_SPACE, flag=None, help="the search space (or --space)")
    # Trials at once; None: as many as the cluster's GPUs (--gpu) or CPUs hold.
    max_concurrent: int | None = setting(None, flag="--max-concurrent",
                                         help="trials at once (default: as many as the cluster's GPUs, with "
                                              "--gpu, or CPUs hold)")
    metric: str = setting("val_loss", flag="--metric", choices=tuple(TUNE_METRICS),
                          help="validation metric the scheduler and the choice of the best trial use")
    # Epochs every trial trains before the scheduler may stop it: early epochs under a
    # warm, high learning rate say little about where a run ends.
    grace_period: int = setting(3, flag="--grace-period", help="epochs every trial trains before the scheduler "
                                                               "may stop it")
    # ASHA keeps the best 1/reduction_factor of the trials at each of its rungs.
    reduction_factor: int = setting(3, flag="--reduction-factor",
                                    help="the scheduler keeps the best 1/N of the trials at each rung")
    searcher: str = setting("auto", flag="--searcher", choices=SEARCHERS,
                            help="auto: Optuna's TPE when optuna is installed, else random")

    @property
    def space_source(self) -> str:
        """Where the space's errors point."""
        return f"--space {self.space_file}" if self.space_file else "the search space"

    def __post_init__(self) -> None:
        check(self, "trials", self.trials >= 1, "must be at least 1")
        check(self, "max_concurrent", self.max_concurrent is None or self.max_concurrent >= 1, "must be at least 1")
        check(self, "metric", self.metric in TUNE_METRICS, f"must be one of {', '.join(TUNE_METRICS)}")
        check(self, "grace_period", self.grace_period >= 1, "must be at least 1")
        check(self, "reduction_factor", self.reduction_factor >= 2, "must be at least 2")
        check(self, "searcher", self.searcher in SEARCHERS, f"must be one of {', '.join(SEARCHERS)}")
        require(bool(self.space), f"{self.space_source} is empty")
        names = [parameter.name for parameter in self.space]
        require(len(set(names)) == len(names), f"{self.space_source}: a parameter appears twice in {names}")
        for parameter in self.space:
            for value in parameter.extremes():
                try:
                    self.trial_config({parameter.name: value})
                except UserError as refused:
                    raise UserError(f"{self.space_source}: {parameter.name} {value!r} cannot be trained: "
                                    f"{refused}") from None

    @property
    def sweep_name(self) -> str:
        return self.train.name or f"{self.train.model}-sweep"

    @property
    def mode(self) -> str:
        return TUNE_METRICS[self.metric]

    def trial_config(self, drawn: dict, **changes) -> TrainConfig:
        """The TrainConfig of a trial that drew `drawn` (name -> value); `changes` set other
        fields (the trial's storage and name)."""
        values = {name: _as_setting(name, value) for name, value in drawn.items()}
        if "augment" in values:
            # The sweep's own augmentation scaled: appearance asked for stays in every trial.
            values["augment"] = scaled_augmentation(values["augment"], self.train.augment)
        return dataclasses.replace(self.train, **values, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_setting(name: str, value):
    """A drawn value as TrainConfig takes it (Ray Tune may hand over numpy scalars)."""
    require(name in SEARCH_KINDS, f"unknown parameter {name!r} (tunable: {', '.join(SEARCH_KINDS)})")
    return _VALUE_TYPES[name](value)
