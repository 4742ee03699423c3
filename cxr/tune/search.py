"""How a sweep chooses its trials and stops the poor ones: Ray Tune's search space, searcher
and scheduler, built from a TuneConfig.

- Searcher. Random search (Ray Tune's BasicVariantGenerator, seeded from --seed: cxr.seeds) unless
  Optuna is installed, then Optuna's TPE through Ray's OptunaSearch (`--searcher auto`, the
  default; `random` or `optuna` to choose). Random search needs nothing and is a strong
  baseline for a few dozen trials over five settings; TPE models which regions scored well
  and samples there more once it has seen some trials, which pays off as --trials grows.
  Optuna is not a dependency of this project: `pip install optuna` to get it.
- Scheduler. ASHA (asynchronous successive halving) on the sweep's --metric, measured in
  epochs trained: after --grace-period epochs, and then at every --reduction-factor times
  as many, a trial in the bottom (1 - 1/reduction_factor) of those that got that far is
  stopped. Its rungs end below --epochs, and trials that pass the last one are never
  stopped by it: a trial at its last epoch is one export away from done, and ending it
  there would throw its export away (the scheduler acts on the report of that epoch, before
  the training job writes its model). No scheduler when --grace-period is not below --epochs.
  Ray Tune does not save a scheduler's state with the sweep (tune_controller.py leaves
  `_scheduler_alg` out of what it saves): after a resume, ASHA compares each trial at a rung
  only with the trials that reached that rung since, so its first decisions are lenient.
"""

from __future__ import annotations

import importlib.util
import logging

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from cxr import seeds
from cxr.config import SearchParameter, TuneConfig
from cxr.errors import UserError

log = logging.getLogger(__name__)

# What the scheduler counts: the training loop reports it with every epoch (cxr.train.loop).
# Ray Tune's own `training_iteration` restarts when a trial resumes from its checkpoint.
EPOCHS_TRAINED = "epochs_trained"


def param_space(space: tuple[SearchParameter, ...]) -> dict:
    """Ray Tune's search space for `space`: one sampling domain (or constant) per setting."""
    domains = {}
    for parameter in space:
        if parameter.kind == "loguniform":
            domains[parameter.name] = tune.loguniform(*parameter.values)
        elif parameter.kind == "uniform":
            domains[parameter.name] = tune.uniform(*parameter.values)
        elif parameter.kind == "choice":
            domains[parameter.name] = tune.choice(list(parameter.values))
        else:
            domains[parameter.name] = parameter.values[0]
    return domains


def optuna_installed() -> bool:
    return importlib.util.find_spec("optuna") is not None


def check_searcher(config: TuneConfig) -> None:
    """Refuse --searcher optuna without Optuna, in one line, before anything starts."""
    if config.searcher == "optuna" and not optuna_installed():
        raise UserError("--searcher optuna needs the optuna package (pip install optuna), or use --searcher random")


def searcher(config: TuneConfig, concurrent: int):
    """(Ray Tune's search algorithm, holding `concurrent` trials at once; what it is, in words)."""
    check_searcher(config)
    if config.searcher == "optuna" or (config.searcher == "auto" and optuna_installed()):
        # Optional and heavy (it brings SQLAlchemy): imported only when chosen.
        from ray.tune.search.optuna import OptunaSearch

        return (ConcurrencyLimiter(OptunaSearch(seed=seeds.search(config.train.seed)), max_concurrent=concurrent),
                "Optuna TPE (model-based: samples more where earlier trials scored well)")
    why = ("--searcher random" if config.searcher == "random"
           else "optuna is not installed; pip install optuna for model-based search")
    return (BasicVariantGenerator(max_concurrent=concurrent, random_state=seeds.search(config.train.seed)),
            f"random ({why})")


def scheduler(config: TuneConfig):
    """(Ray Tune's trial scheduler or None, what it does, in words)."""
    epochs = config.train.epochs
    if config.grace_period >= epochs:
        return None, f"none (--grace-period {config.grace_period} is not below --epochs {epochs}: every trial runs out)"
    asha = ASHAScheduler(time_attr=EPOCHS_TRAINED, max_t=epochs - 1, grace_period=config.grace_period,
                         reduction_factor=config.reduction_factor, stop_last_trials=False)
    rungs = [config.grace_period * config.reduction_factor ** k for k in range(epochs)
             if config.grace_period * config.reduction_factor ** k <= epochs - 1]
    return asha, (f"ASHA on {config.metric}: after epoch{'s' if len(rungs) > 1 else ''} {', '.join(map(str, rungs))}, "
                  f"a trial in the bottom {1 - 1 / config.reduction_factor:.0%} of those that got there stops")
