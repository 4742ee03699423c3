"""A sweep's trials read back, and the best one exported as a run of its own.

A trial's record is read from its own run, the training job's files, rather than from
Ray Tune's bookkeeping: the latest checkpoint's state.json holds every epoch it trained
(across restarts, which Ray Tune's per-trial logs do not follow), the export says that it
ended, and run.json what it was. Ray Tune adds what it alone knows: the settings a trial
drew and the error that ended it.

The best trial (cxr.tune.records.best_trial) becomes `<sweep>/best/`, an ordinary run: its
run.json and `model/` (model, manifest copy, history, learning curve, training.json), which
jobs/evaluate.py and jobs/predict.py take as they take any run.
"""

from __future__ import annotations

import posixpath

from ray.air.constants import EXPR_PARAM_FILE  # Ray Tune's params.json of a trial
from ray.train import Result as TrainResult

from cxr import storage
from cxr.artifacts import STATE_FILE, Manifest, RunLayout, SweepLayout
from cxr.config import TrainConfig, TuneConfig
from cxr.train.job import export
from cxr.train.loop import TrainingState
from cxr.tune.records import (EARLY_STOPPED, FAILED, FINISHED, NOT_RUN, SCHEDULER_STOPPED, TrialRecord,
                              error_text, trial_number)


def collect(results, tags: dict[str, str], sweep: SweepLayout, config: TuneConfig) -> list[TrialRecord]:
    """A record per trial of a finished sweep (`results`: Ray Tune's ResultGrid; `tags`: each
    trial id's experiment tag), numbered from 1 in the order the searcher created them."""
    found = []
    for result in results:
        trial_id = posixpath.basename(result.path.rstrip("/"))  # its folder is its id (trial.trial_dirname)
        run = sweep.trial(trial_id)
        state = latest_state(run)
        error = error_text(result.error) if result.error is not None else None
        found.append(TrialRecord(
            number=trial_number(tags[trial_id], list(tags.values())), trial_id=trial_id, run_uri=run.root.uri,
            drawn=_drawn(result, config), status=_status(run, state, error, config.train.epochs),
            history=state.history if state else (), best_epoch=state.best_epoch if state else None, error=error))
    return sorted(found, key=lambda record: record.number)


def latest_state(run: RunLayout) -> TrainingState | None:
    """The training state of a run's latest checkpoint (only its state.json is read)."""
    if not storage.is_file(run.ray_checkpoints):
        return None
    checkpoint = TrainResult.from_path(run.root.path, storage_filesystem=run.root.fs).checkpoint
    if checkpoint is None:
        return None
    location = storage.Location(uri=run.root.join(posixpath.basename(checkpoint.path)).uri,
                                fs=checkpoint.filesystem, path=checkpoint.path)
    return TrainingState.from_dict(storage.read_json(location.join(STATE_FILE)))


def _drawn(result, config: TuneConfig) -> dict:
    """The settings the trial drew: from its last result, or (if it never reported) the
    params.json Ray Tune wrote when it started."""
    drawn = result.config
    if drawn is None:
        params = storage.Location(uri=posixpath.join(result.path, EXPR_PARAM_FILE), fs=result.filesystem,
                                  path=posixpath.join(result.path, EXPR_PARAM_FILE))
        drawn = storage.read_json(params) if storage.is_file(params) else {}
    return {parameter.name: drawn.get(parameter.name) for parameter in config.space}


def _status(run: RunLayout, state: TrainingState | None, error: str | None, epochs: int) -> str:
    if error is not None:
        return FAILED
    if storage.is_file(run.export.training):
        return EARLY_STOPPED if storage.read_json(run.export.training)["stopped_early"] else FINISHED
    if state is None:
        return NOT_RUN
    if state.stopped_early:
        # The scheduler acted on the same report: the training job had stopped it anyway.
        return EARLY_STOPPED
    return FINISHED if state.next_epoch >= epochs else SCHEDULER_STOPPED


def export_best(best: TrialRecord, sweep: SweepLayout, manifest: Manifest, config: TuneConfig) -> dict:
    """`<sweep>/best/`: the best trial's export and run.json, as a run of its own."""
    run = RunLayout.at(best.run_uri)
    target = sweep.best
    if storage.is_file(target.export.training) and \
            storage.read_json(target.export.training).get("sweep", {}).get("trial") != best.trial_id:
        # A resumed sweep found a better trial: nothing of the old best (its report) may stay.
        storage.delete_tree(target.root)
    recorded = storage.read_json(run.settings)
    storage.write_json(target.settings, recorded)
    result = TrainResult.from_path(run.root.path, storage_filesystem=run.root.fs)
    return export(result, TrainConfig.from_dict(recorded["config"]), manifest, run, into=target.export,
                  extra={"sweep": {"uri": sweep.root.uri, "trial": best.trial_id, "number": best.number,
                                   "status": best.status, "drawn": best.drawn, "metric": config.metric,
                                   "score": best.score(config.metric)}})
