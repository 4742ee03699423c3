"""The training job's driver: check everything, start Ray Train, export the best model.

Everything a user can get wrong (data, weights, cluster size, storage) is checked
here, before any worker starts. The run lives under `<storage>/<name>/`: Ray Train's
checkpoints, then `model/` with the best model, a copy of the preprocessing manifest,
the history as CSV and the learning curve. Rerunning the same command resumes from the
latest checkpoint, if the settings recorded in `run.json` at the start agree
(cxr.train.settings); a non-finite loss stops the run with an error.
"""

from __future__ import annotations

import hashlib
import logging
import os

import ray

from cxr import progress, runtime, storage
from cxr.artifacts import (HISTORY_FILE, LEARNING_CURVE_FILE, MODEL_FILE, RUN_SETTINGS_FILE, Manifest, RunLayout,
                           read_manifest)
from cxr.config import TrainConfig
from cxr.errors import UserError
from cxr.train.data import cached_bytes_per_worker, split_dataset
from cxr.train.history import history_csv, learning_curve_png
from cxr.keras_lib import TF_ENVIRONMENT, configure_environment
from cxr.train.loop import TrainingState, train_loop_per_worker
from cxr.train import settings
from cxr.train.models import build_model, resolve_weights

log = logging.getLogger(__name__)

# Set in the driver, whose Ray Train passes it on to its controller. Ray Train V2 starts a
# PreemptionWatcher actor with every worker group, to log node drains and offer
# `ray.train.get_preemption_info()`, which this project does not use: a worker lost to a
# drain is a worker failure, resumed from the last checkpoint like any other. It is
# created with the workers' actor handles as arguments and max_restarts=-1
# (ray/train/v2/_internal/callbacks/preemption_callback.py), which Ray Core reports as an
# error on every run ("has constructor arguments in the object store and max_restarts >
# 0", ray-project/ray#53727), and it is one more process on a small machine.
RAY_TRAIN_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

def run_training(config: TrainConfig) -> dict:
    """Train (or resume) and export; return a summary of the run."""
    data = storage.resolve(config.data)
    manifest = read_manifest(config.data)
    _check_splits(manifest, data.uri)
    storage_root = storage.resolve(config.storage)
    storage.check_bucket(storage_root)
    storage.check_writable(storage_root)
    run = RunLayout(storage_root.join(config.run_name))

    started_ray = runtime.ensure_ray()
    cpus_per_worker = _worker_cpus(config, ray.nodes(), started_ray)
    weights = _checked_weights(config, manifest)
    _record_settings(run, settings.run_record(config, manifest, data.uri,
                                              hashlib.sha256(weights[1]).hexdigest() if weights else None))
    result = _fit(config, manifest, data, storage_root, run, cpus_per_worker,
                  ray.put(weights) if weights else None, started_ray)
    _check_finite(run)
    return export(result, config, manifest, run)


def _record_settings(run: RunLayout, record: dict) -> None:
    """Write run.json before the first epoch; on a resume, first refuse other settings."""
    if storage.is_file(run.ray_checkpoints):
        if storage.is_file(run.settings):
            record, changed = settings.check_resume(run, record)
            if changed:
                log.info("resuming %s with %s", run.root.uri, "; ".join(changed))
        else:
            log.warning("%s has no %s (started by an earlier cxr): resuming without checking its settings",
                        run.root.uri, RUN_SETTINGS_FILE)
    storage.write_json(run.settings, record)


def _check_finite(run: RunLayout) -> None:
    """Refuse to export a run that a non-finite loss stopped (its workers' record says where)."""
    found = storage.read_json(run.worker_record(0)).get("non_finite")
    if found:
        raise UserError(f"{run.root.uri}: training stopped at a non-finite loss in {found}; the checkpoints "
                        "before it are kept (a rerun resumes from the last good epoch): try a lower "
                        "--learning-rate under a new --name")


def _check_splits(manifest: Manifest, uri: str) -> None:
    for split in ("train", "val"):
        if manifest.splits[split].total == 0:
            raise UserError(f"{uri}: the {split} split is empty; preprocess more images or change --split")


def _worker_cpus(config: TrainConfig, nodes: list[dict], started_ray: bool) -> float:
    """CPUs each worker reserves, from the live nodes that may hold workers (`ray.nodes()`).

    A Ray this job started is all there will be: a request it cannot hold is an error. On
    a cluster, workers pinned to a node pool by --node-label may wait for the autoscaler
    to start that pool's nodes (none may be running yet), so a shortage there is a warning.
    """
    eligible = [n for n in nodes if n.get("Alive") and all(n.get("Labels", {}).get(k) == v
                                                             for k, v in config.node_labels)]
    resources = {key: sum(n["Resources"].get(key, 0) for n in eligible) for key in ("CPU", "GPU")}
    where = ("the nodes labelled " + ",".join(f"{k}={v}" for k, v in config.node_labels)
             if config.node_labels else "the cluster")
    try:
        return _cpus_per_worker(config, resources, where)
    except UserError as short:
        if started_ray or not config.node_labels:
            raise
        log.warning("%s; waiting for the autoscaler to add nodes (`ray status` shows them; "
                    "`ray job stop` cancels)", short)
        return config.cpus_per_worker or 1.0


def _cpus_per_worker(config: TrainConfig, resources: dict, where: str = "the cluster") -> float:
    """CPUs each worker reserves; refuse a request `resources` cannot hold."""
    cpus = resources.get("CPU", 0)
    if config.gpu and resources.get("GPU", 0) < config.workers:
        raise UserError(f"--workers {config.workers} --gpu needs {config.workers} GPUs, "
                        f"found {int(resources.get('GPU', 0))} on {where}")
    if config.cpus_per_worker is not None:
        wanted = config.cpus_per_worker
    elif config.workers + 1 <= cpus:
        wanted = 1.0
    elif cpus > 0:
        # Whole CPUs for every worker would leave none for Ray Data to decode the stream,
        # and the run would wait forever for resources (GUIDE: 2 workers on 2 CPUs).
        wanted = max(cpus - 1, cpus / 2) / config.workers
    else:
        wanted = 1.0
    if wanted * config.workers > cpus:
        raise UserError(f"--workers {config.workers} x {wanted:g} CPUs needs {wanted * config.workers:g} CPUs, "
                        f"found {cpus:g} on {where}")
    return wanted


def _checked_weights(config: TrainConfig, manifest: Manifest) -> tuple[str, bytes] | None:
    """Resolve --weights on the driver and prove they fit, before any worker starts.

    The file travels to the workers through Ray's object store: a cluster's nodes need
    neither the driver's Keras cache nor network access.
    """
    spec = config.weights_spec
    if spec == "none":
        return None
    path = resolve_weights(config.model, spec)
    if not os.path.isfile(path):
        raise UserError(f"{path}: pass a single weights file (.h5, .weights.h5 or .keras), not a checkpoint prefix")
    build_model(config.model, manifest.image_size, len(manifest.class_names), weights=path)
    with open(path, "rb") as handle:
        return os.path.basename(path), handle.read()


def _fit(config: TrainConfig, manifest: Manifest, data: storage.Location, storage_root: storage.Location,
         run: RunLayout, cpus_per_worker: float, weights_ref, started_ray: bool):
    configure_environment()
    for name, value in RAY_TRAIN_ENVIRONMENT.items():
        os.environ.setdefault(name, value)  # the driver's, which Ray Train passes on to its controller
    # Imported here, after configure_environment: Ray's TensorFlow trainer imports tf.keras,
    # which must resolve to Keras 2 (cxr.keras_lib).
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    cache = cached_bytes_per_worker(manifest, config.workers) <= config.cache_mib * 2**20
    train, val = split_dataset(data, manifest, "train"), split_dataset(data, manifest, "val")
    for dataset in (train, val):
        # The training bar counts these images: Ray Data's own bars for the streams that
        # feed it (drawn by Ray Train's split coordinators) would only repeat it.
        dataset.context.enable_progress_bars = False
    # Without the workers' cache, validation (read every epoch) is decoded once into the
    # object store rather than re-read and re-decoded by a new stream each time.
    datasets = {"train": train, "val": val if cache else val.materialize()}
    log.info("training %s on %d worker(s) (%s, %g CPU each), %s, run %s", config.model, config.workers,
             "GPU" if config.gpu else "CPU", cpus_per_worker,
             "decoded images kept in memory after epoch 1" if cache else "streaming every epoch", run.root.uri)
    total_images = config.epochs * manifest.splits["train"].total
    with progress.Progress("train", total_images, "images", runtime.progress_style()) as shown:
        trainer = _trainer_class(started_ray)(
            train_loop_per_worker,
            train_loop_config={"config": config, "manifest": manifest, "weights": weights_ref, "run_uri": run.root.uri,
                               "cache": cache, "tally": shown.tally},
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.gpu,
                                         resources_per_worker={"CPU": cpus_per_worker},
                                         label_selector=dict(config.node_labels) or None),
            run_config=RunConfig(
                name=config.run_name, storage_path=storage_root.path, storage_filesystem=storage_root.fs,
                failure_config=FailureConfig(max_failures=config.max_failures),
                # The best by validation loss; Ray Train always keeps the latest too, to resume from.
                checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_loss",
                                                   checkpoint_score_order="min"),
                # Ray Train's INFO ("Requesting resources", "Started training worker group",
                # "Checkpoint successfully created", "Reporting training result N: ...") is
                # about its internals: the epoch lines say the same for a person.
                logging_config=LoggingConfig(log_level="INFO" if runtime.is_verbose() else "WARNING"),
                worker_runtime_env={"env_vars": TF_ENVIRONMENT}),
            # Explicit Ray Data options, Ray Data's defaults: without them Ray Train builds its
            # own from the deprecated `exclude_resources` (ray/train/_internal/data_config.py,
            # default_ingest_options), and its DatasetManager warns about that on every run.
            dataset_config=DataConfig(execution_options=ExecutionOptions()),
            datasets=datasets)
        return trainer.fit()


def _trainer_class(started_ray: bool):
    """Ray Train's TensorflowTrainer; on a Ray this job started, without its placement-group
    cleaner.

    Ray Train V2 always starts a detached PlacementGroupCleaner actor (ray/train/v2/api/
    data_parallel_trainer.py, `_create_default_callbacks`; no setting turns it off) that asks
    the State API every second whether the controller is still alive, to remove the
    workers' placement group if it died. The State API is served by the dashboard, which
    the job's own Ray runs without (cxr.runtime.ensure_ray: its minimal API server answers
    404), so the cleaner could never do its work there and logged "Failed to query Ray
    Train Controller actor state" once a second instead; with another Ray on the machine
    it could not even tell which one to ask ("Found multiple active Ray instances"). It
    has nothing to do there either: that Ray, placement groups and all, ends with this
    job. On a cluster (dashboard and State API on the head) it stays.
    """
    from ray.train.tensorflow import TensorflowTrainer

    if not started_ray:
        return TensorflowTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class LocalTensorflowTrainer(TensorflowTrainer):
        def _create_default_callbacks(self):
            return [callback for callback in super()._create_default_callbacks()
                    if not isinstance(callback, PlacementGroupCleanerCallback)]

    return LocalTensorflowTrainer


def export(result, config: TrainConfig, manifest: Manifest, run: RunLayout) -> dict:
    """Copy the best checkpoint's model, the manifest and the history into `<run>/model/`."""
    latest = result.checkpoint
    if latest is None:
        raise UserError(f"{run.root.uri}: training produced no checkpoint")
    best = result.get_best_checkpoint(metric="val_loss", mode="min") or latest
    with latest.as_directory() as directory:
        state = TrainingState.load(directory)
    target = run.export
    with best.as_directory() as directory:
        with open(os.path.join(directory, MODEL_FILE), "rb") as handle:
            storage.write_bytes(target.model, handle.read())
    rows = list(state.history)
    storage.write_json(target.manifest, manifest.to_dict())
    storage.write_bytes(target.history, history_csv(rows))
    storage.write_bytes(target.learning_curve, learning_curve_png(rows, f"{config.model} on {manifest.source_uri}"))
    best_row = next(r for r in rows if r["epoch"] == state.best_epoch)
    summary = {"model": config.model, "run": run.root.uri, "export": target.root.uri,
               "class_names": list(manifest.class_names), "image_size": manifest.image_size,
               "epochs_trained": state.next_epoch, "stopped_early": state.stopped_early, "best_epoch": state.best_epoch,
               "best": best_row, "restarts": state.attempt, "config": config.to_dict()}
    storage.write_json(target.training, summary)
    return summary


def format_summary(summary: dict) -> str:
    best = summary["best"]
    metrics = "  ".join(f"{k} {best[k]:.3f}" for k in ("val_loss", "val_accuracy", "val_auc") if k in best)
    return "\n".join([
        f"model exported to {summary['export']}",
        f"  {summary['model']}: {summary['epochs_trained']} epoch(s)"
        + (", stopped early" if summary["stopped_early"] else "") + f"; best epoch {summary['best_epoch'] + 1}: {metrics}",
        f"  learning curve: {summary['export']}/{LEARNING_CURVE_FILE} (per epoch: {HISTORY_FILE})",
    ])
