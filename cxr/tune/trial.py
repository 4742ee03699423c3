"""One trial of a sweep: the training job itself, with the settings the trial drew.

Ray Tune runs `run_trial` in an actor of its own (Ray's "Hyperparameter Tuning with Ray
Tune" pattern for Ray Train V2): it builds the trial's TrainConfig and calls the training
job's `train_and_export`, which starts a Ray Train run whose workers are separate actors.
So a trial is the job's run in every way: same model builder, data path, checkpoints,
early stopping, run.json check and export, under `<sweep>/trials/<trial id>/`; only its
TensorBoard events go beside the other trials', in `<sweep>/tensorboard/<trial id>/`, and its
MLflow run (--mlflow) to the sweep's experiment (cxr.train.tracking). Ray Train's
TuneReportCallback hands every epoch's report (rank 0's metrics, with `epochs_trained`)
on to Ray Tune, whose scheduler may stop the trial after any of them.

Resuming needs nothing here: a trial's run is named by its Ray Tune trial id, which a
restored sweep keeps, and the training job resumes a run from its latest checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cxr.artifacts import SweepLayout
from cxr.config import TuneConfig
from cxr.train import tracking
from cxr.train.job import RunInputs, train_and_export

# Each trial's actor is a driver: its work is done by Ray Train's workers, which reserve
# their own CPUs or GPUs. It reserves no CPU (on a small machine a hundredth of one would
# leave Ray Data less than the one CPU a decoding task asks for) but the memory it holds:
# Ray, the run's datasets and TensorFlow, which Ray's TensorFlow trainer imports (about
# 0.7 GiB measured for `import tensorflow`, GUIDE). A request must name some resource.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 1.5 * 2**30}


@dataclass(frozen=True)
class SweepPlan:
    """What every trial of a sweep shares: put into Ray's object store once (tune.with_parameters)."""

    config: TuneConfig
    inputs: RunInputs  # the training job's checks, made once by the sweep's driver
    sweep_uri: str  # absolute: each trial's run is <sweep>/trials/<trial id>
    # Splits read and decoded once for all trials (Ray Data datasets in the object store,
    # each node fetching the blocks it reads once); a split missing here each trial reads itself.
    datasets: dict


def run_trial(drawn: dict, plan: SweepPlan) -> None:
    """Ray Tune's function trainable: train the run of this trial, with `drawn`'s settings."""
    trial_id = tune.get_context().get_trial_id()
    sweep = SweepLayout.at(plan.sweep_uri)
    config = plan.config.trial_config(drawn, storage=sweep.trials.uri, name=trial_id)
    train_and_export(config, plan.inputs, datasets=plan.datasets, callbacks=(TuneReportCallback(),),
                     run_tracking=tracking.for_trial(sweep, plan.config.sweep_name, trial_id, plan.inputs.mlflow))


def trial_dirname(trial) -> str:
    """Ray Tune's folder for a trial under `<sweep>/tune/`: its id, as its run's folder is named."""
    return trial.trial_id
