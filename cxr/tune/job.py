"""The tuning job's driver: check everything once, run the trials with Ray Tune, export the best.

A sweep lives under `<storage>/<name>/` (cxr.artifacts.SweepLayout): `sweep.json` (its
settings, cxr.tune.settings), Ray Tune's experiment in `tune/`, one training run per trial
in `trials/<trial id>/`, `trials.csv`, `trials.md`, the validation-AUC figure, and `best/`.

Everything the training job refuses is refused here, once, before any trial starts (the
data, the storage, the weights, the cluster's size), and so is a space the model cannot
take (TuneConfig) or a resume with other settings. Each trial is the training job's run
(cxr.tune.trial). Rerunning the same command resumes the sweep: Ray Tune restores it from
`tune/` (finished trials are kept, unfinished ones restart and their runs resume from their
latest checkpoints); a trial that failed stays failed, with its error in the table.

Resources. A trial's Ray Train workers reserve what the training job's would (one GPU each
with --gpu); the trial's own actor only memory (cxr.tune.trial). As many trials run at
once as --max-concurrent says, or else as the cluster's GPUs (--gpu) or CPUs hold, keeping
one CPU for Ray Data as the training job does. The validation split, and the training
split when half of Ray's object store holds it, are read and decoded once, before the
first trial, and shared by all: a node fetches the blocks its workers read once.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ray
from ray import tune

from cxr import claims, resources, runtime, storage
from cxr.artifacts import TUNE_EXPERIMENT_DIR, Manifest, SweepLayout
from cxr.config import TuneConfig
from cxr.errors import UserError
from cxr.train import job as train_job
from cxr.train import settings as train_settings
from cxr.train import tracking
from cxr.train.data import split_dataset
from cxr.tune import records, search, trials
from cxr.tune import settings as sweep_settings
from cxr.tune.space import describe
from cxr.tune.trial import TRIAL_DRIVER_RESOURCES, SweepPlan, run_trial, trial_dirname

log = logging.getLogger(__name__)

# Ray Tune logs every failed trial's traceback from this logger; TrialLines says it in one
# line instead (--verbose keeps the traceback).
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
# Ray Tune's newer output engine prints its experiment banner ("Configuration for
# experiment", "View detailed results here", a TensorBoard command) even when told to be
# silent (ray/tune/experimental/output.py, `experiment_started`); its older one, at
# verbosity 0, prints nothing. Without --verbose the older one is used.
TUNE_QUIET_ENVIRONMENT = {"RAY_AIR_NEW_OUTPUT": "0"}


def run_tuning(config: TuneConfig) -> dict:
    """Run (or resume) the sweep and export its best trial; return a summary."""
    _check_train_v2()
    search.check_searcher(config)
    base = config.train
    data, manifest = train_job.check_data(base)
    sweep = SweepLayout(train_job.check_storage(base).join(config.sweep_name))
    mlflow = tracking.check_mlflow(base.mlflow)
    with claims.claimed(sweep.claim, "tune", "--name"):
        return _run_sweep(config, data, manifest, sweep, mlflow)


def _run_sweep(config: TuneConfig, data: storage.Location, manifest: Manifest, sweep: SweepLayout,
               mlflow: tracking.MlflowServer | None = None) -> dict:
    """The sweep, its folder claimed (cxr.claims): run or resume it, export the best trial."""
    base = config.train
    # The State API lets Ray Train clean up after the trials Ray Tune stops (see
    # cxr.train.job._trainer_class).
    started_ray = runtime.ensure_ray(state_api=True)
    resuming = tune.Tuner.can_restore(sweep.experiment.path, storage_filesystem=sweep.root.fs)
    # A resumed sweep keeps the concurrency it started with, as Ray Tune keeps its searcher.
    nodes = ray.nodes()
    concurrent = sweep_settings.recorded_concurrency(sweep) if resuming else None
    if concurrent is None:
        concurrent = concurrent_trials(config, nodes, started_ray)
    inputs = train_job.run_inputs(base, data, manifest,
                                  train_job.worker_cpus(base, started_ray, concurrent_runs=concurrent),
                                  placement_group_cleaner=True, cores_shared=concurrent > 1, mlflow=mlflow)
    _record_settings(sweep, sweep_settings.sweep_record(
        config, train_settings.run_record(base, manifest, data.uri, inputs.weights_sha256), concurrent))

    searcher, searcher_text = search.searcher(config, concurrent)
    scheduler, scheduler_text = search.scheduler(config)
    how = f"Searcher: {searcher_text}. Scheduler: {scheduler_text}."
    log.info("%s %d trials of %s, up to %d epochs each, %d at a time, in %s; space: %s. %s",
             "resuming the sweep of" if resuming else "sweep:", config.trials, base.model, base.epochs, concurrent,
             sweep.root.uri, "; ".join(describe(p) for p in config.space), how)
    # Trials run with other working directories (Ray Tune's): every path they get is absolute.
    plan = SweepPlan(config=dataclasses.replace(config, train=dataclasses.replace(base, data=data.uri)),
                     inputs=inputs, sweep_uri=sweep.root.uri, datasets=shared_datasets(inputs, base.seed))
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), TRIAL_DRIVER_RESOURCES)
    if not runtime.is_verbose():
        logging.getLogger(TUNE_CONTROLLER_LOGGER).addFilter(_without_trial_tracebacks)
        for name, value in TUNE_QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # read by Tuner.fit, in this process
    if resuming:
        tuner = tune.Tuner.restore(sweep.experiment.path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, storage_filesystem=sweep.root.fs)
    else:
        tuner = tune.Tuner(
            trainable, param_space=search.param_space(config.space),
            tune_config=tune.TuneConfig(metric=config.metric, mode=config.mode, search_alg=searcher,
                                        scheduler=scheduler, num_samples=config.trials,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=TUNE_EXPERIMENT_DIR, storage_path=sweep.root.path,
                storage_filesystem=sweep.root.fs,
                # A trial's Ray Train run survives its workers' failures itself (--max-failures);
                # a trial that fails anyway (a non-finite loss) would fail again.
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[TrialLines(config.trials)],
                # Ray Tune's status table every few seconds; TrialLines writes a line per trial.
                verbose=1 if runtime.is_verbose() else 0))
    results = tuner.fit()
    saved = tune.ExperimentAnalysis(sweep.experiment.path, storage_filesystem=sweep.root.fs).trials
    if _interrupted(saved, config):
        print("tune: interrupted; run the same command again to resume the sweep", flush=True)
        raise KeyboardInterrupt
    return _finish(results, saved, sweep, manifest, config, how, mlflow)


def _interrupted(saved: list, config: TuneConfig) -> bool:
    """Whether Ray Tune ended the sweep early (Ctrl-C, SIGTERM) with trials still to run.

    Tune.fit returns normally then, and its results call the trials it stopped "terminated"
    like finished ones; the experiment state it saved first still says which were running.
    """
    ended = [trial for trial in saved if trial.status in ("TERMINATED", "ERROR")]
    return len(ended) < config.trials


def _finish(results, saved: list, sweep: SweepLayout, manifest, config: TuneConfig, how: str,
            mlflow: tracking.MlflowServer | None) -> dict:
    """The records of a finished sweep (`saved`: Ray Tune's saved trials), its table and
    figure, and the best trial's export."""
    ended = trials.collect(results, {trial.trial_id: trial.experiment_tag for trial in saved}, sweep, config)
    best = records.best_trial(ended, config.metric, config.mode)
    records.write(ended, best, sweep, config, how)
    if best is None:
        raise UserError(f"{sweep.root.uri}: no trial finished an epoch; see {sweep.trials_markdown.uri}")
    exported = trials.export_best(best, sweep, manifest, config)
    statuses = {}
    for record in ended:
        statuses[record.status] = statuses.get(record.status, 0) + 1
    return {"sweep": sweep.root.uri, "trials": len(ended), "statuses": statuses, "metric": config.metric,
            "search": how,
            "best": {"trial": best.number, "trial_id": best.trial_id, "drawn": best.drawn,
                     "score": best.score(config.metric), "epoch": best.best_epoch + 1},
            "best_run": sweep.best.root.uri, "export": exported["export"],
            "table": sweep.trials_markdown.uri, "figure": sweep.trials_figure.uri,
            "tracking": tracking.summary(sweep.tensorboard.uri, mlflow, tracking.sweep_experiment(mlflow, config.sweep_name))}


def _record_settings(sweep: SweepLayout, record: dict) -> None:
    """Write sweep.json before the first trial; on a resume, first refuse other settings."""
    if storage.is_file(sweep.settings):
        record, changed = sweep_settings.check_resume(sweep, record)
        if changed:
            log.info("resuming %s with %s", sweep.root.uri, "; ".join(changed))
    storage.write_json(sweep.settings, record)


def _check_train_v2() -> None:
    """Trials report to Ray Tune through Ray Train V2's callbacks (Ray 2.60's default)."""
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1").strip().lower() in ("0", "false", "no"):
        raise UserError("jobs/tune.py needs Ray Train V2: unset RAY_TRAIN_V2_ENABLED (it is on by default)")


def concurrent_trials(config: TuneConfig, nodes: list[dict], started_ray: bool) -> int:
    """Trials at once: --max-concurrent, or as many as the nodes that may hold the workers fit
    now (their GPUs with --gpu, else their CPUs less one for Ray Data), at most --trials."""
    if config.max_concurrent is not None:
        return min(config.max_concurrent, config.trials)
    base = config.train
    found = resources.eligible_resources(nodes, base.node_labels)
    if base.gpu:
        fits = int(found["GPU"] // base.workers)
    else:
        fits = int(max(found["CPU"] - 1, 0) // (base.workers * (base.cpus_per_worker or 1.0)))
    if fits < 1 and not started_ray:
        log.warning("no node for a trial's workers is up yet: one trial at a time (on an autoscaling cluster, "
                    "set --max-concurrent)")
    return max(1, min(fits, config.trials))


def shared_datasets(inputs: train_job.RunInputs, seed: int) -> dict:
    """The splits every trial reads, decoded once into Ray's object store: validation, and
    training too when both fit half of the store, shuffled once with `seed` (as the training
    job shuffles it: cxr.train.data.split_dataset). What does not fit, each trial streams."""
    manifest = inputs.manifest
    budget = ray.cluster_resources().get("object_store_memory", 0) / 2
    shared = {}
    for split in ("val", "train"):  # validation first: every trial reads it every epoch
        decoded = manifest.splits[split].total * manifest.image_size ** 2  # uint8, one channel
        if decoded > budget:
            log.info("each trial reads the %s split itself (%.1f GB decoded, more than half the object store)",
                     split, decoded / 1e9)
            continue
        dataset = split_dataset(inputs.data, manifest, split, seed)
        dataset.context.enable_progress_bars = False
        shared[split] = dataset.materialize()
        budget -= decoded
    return shared


def _without_trial_tracebacks(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Trial task failed")


class TrialLines(tune.Callback):
    """A line in the job's log for every trial that ends: how, after how many epochs, with
    which validation scores and settings. (Pickled with the sweep by Ray Tune: plain state.)"""

    def __init__(self, trials: int):
        self.trials = trials
        self.stopped: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Ray Tune marks `done` the result on which the scheduler stops a trial; a trial
        # that ends by itself reports its last epoch as not done.
        if result.get("done"):
            self.stopped.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if trial.trial_id in self.stopped:
            how = "stopped by the scheduler"
        else:
            how = "stopped early" if result.get("stopped_early") else "finished"
        scores = " ".join(f"{key} {result[key]:.3f}" for key in ("val_loss", "val_auc", "val_accuracy")
                          if key in result)
        print(f"tune: trial {_number(trials, trial)}/{self.trials} {how} after "
              f"{result.get('epochs_trained', 0)} epoch(s): {scores or 'no epoch'}; "
              f"{records.drawn_text(_drawn(trial))}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_pickled_error() or trial.get_error()
        print(f"tune: trial {_number(trials, trial)}/{self.trials} failed: "
              f"{records.error_text(error) if error else 'unknown error'}; {records.drawn_text(_drawn(trial))}",
              flush=True)


def _number(trials: list, trial) -> int:
    return records.trial_number(trial.experiment_tag, [each.experiment_tag for each in trials])


def _drawn(trial) -> dict:
    return dict(trial.config or {})


def format_summary(summary: dict) -> str:
    best = summary["best"]
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(summary["statuses"].items()))
    return "\n".join([
        f"sweep {summary['sweep']}: {summary['trials']} trials ({statuses})",
        f"  best: trial {best['trial']}, {summary['metric']} {best['score']:.4f} at epoch {best['epoch']} on the "
        f"validation split; {records.drawn_text(best['drawn'])}",
        f"  exported to {summary['export']}: python jobs/evaluate.py --run {summary['best_run']}",
        f"  every trial: {summary['table']} (and .csv); validation AUC per epoch: {summary['figure']}",
        *tracking.summary_lines(summary["tracking"]),
    ])
