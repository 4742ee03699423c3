"""The training job's driver: check everything, start Ray Train, export the best model.

Everything a user can get wrong (data, weights, cluster size, storage) is checked
here, before any worker starts. The run lives under `<storage>/<name>/`: Ray Train's
checkpoints, then `model/` with the best model, a copy of the preprocessing manifest,
the history as CSV and the learning curve. Rerunning the same command resumes from the
latest checkpoint, if the settings recorded in `run.json` at the start agree
(cxr.train.settings); a non-finite loss stops the run with an error.

A hyperparameter sweep (cxr.tune) runs this job once per trial: it makes the checks once
(`check_data`, `check_storage`, `worker_cpus`, `run_inputs`), and each trial calls
`train_and_export`, the part of `run_training` after them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass

import ray

from cxr import claims, progress, resources, runtime, storage
from cxr.artifacts import (HISTORY_FILE, LEARNING_CURVE_FILE, MODEL_FILE, RUN_SETTINGS_FILE, ExportLayout, Manifest,
                           RunLayout, read_manifest)
from cxr.config import TrainConfig
from cxr.errors import UserError
from cxr.train.data import CellWeights, cached_bytes_per_worker, split_dataset
from cxr.train.history import history_csv, learning_curve_png
from cxr.keras_lib import TF_ENVIRONMENT, configure_environment
from cxr.train.loop import steps_per_epoch, train_loop_per_worker
from cxr.train import checkpoints, settings, tracking
from cxr.train.models import build_model, check_image_size, resolve_weights

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

@dataclass(frozen=True)
class RunInputs:
    """What the driver checked and resolved before any worker starts: all a run needs
    besides its TrainConfig, shared by the trials of a sweep."""

    manifest: Manifest
    data: storage.Location  # the shards
    cpus_per_worker: float
    weights_sha256: str | None
    weights_ref: object | None  # the checked weights file (name, bytes) in Ray's object store
    # Whether Ray Train may start its placement-group cleaner (see _trainer_class).
    placement_group_cleaner: bool
    # Whether other runs' workers share the nodes (a sweep's concurrent trials): each worker's
    # TensorFlow then keeps to the CPUs it reserved instead of its share of the node's cores.
    cores_shared: bool = False
    mlflow: tracking.MlflowServer | None = None  # the checked --mlflow


def run_training(config: TrainConfig) -> dict:
    """Train (or resume) and export; return a summary of the run."""
    data, manifest = check_data(config)
    storage_root = check_storage(config)
    mlflow = tracking.check_mlflow(config.mlflow)
    with claims.claimed(RunLayout(storage_root.join(config.run_name)).claim, "train", "--name"):
        return _claimed_run(config, data, manifest, storage_root, mlflow)


def _claimed_run(config: TrainConfig, data: storage.Location, manifest: Manifest,
                 storage_root: storage.Location, mlflow: tracking.MlflowServer | None = None) -> dict:
    """run_training with the run's folder claimed (cxr.claims): no other driver trains it meanwhile."""
    started_ray = runtime.ensure_ray()
    inputs = run_inputs(config, data, manifest, worker_cpus(config, started_ray),
                        placement_group_cleaner=not started_ray, mlflow=mlflow)
    log.info("training %s on %d worker(s) (%s, %g CPU each), %s, run %s", config.model, config.workers,
             "GPU" if config.gpu else "CPU", inputs.cpus_per_worker,
             "decoded images kept in memory after epoch 1" if _keeps_cache(config, manifest)
             else "streaming every epoch", storage_root.join(config.run_name).uri)
    log.info("classes: %s", ", ".join(f"{name} (label {label})" for label, name in enumerate(manifest.class_names)))
    if config.balance_sources:
        balance = cell_weights(config, manifest)
        log.info("%s", balance.line())
        warning = balance.one_source_warning()
        if warning:
            log.warning("%s", warning)
    plan, whole_split = epoch_plan(config, manifest)
    (log.warning if whole_split else log.info)("%s", plan)
    total_images = config.epochs * manifest.splits["train"].total
    with progress.Progress("train", total_images, "images", runtime.progress_style()) as shown:
        return train_and_export(config, inputs, tally=shown.tally)


def check_data(config: TrainConfig) -> tuple[storage.Location, Manifest]:
    """The shards and their manifest, with the splits training needs."""
    data = storage.resolve(config.data)
    manifest = read_manifest(config.data)
    _check_splits(manifest, data.uri)
    # On the driver: in a worker the same error would be a traceback, retried --max-failures times.
    check_image_size(config.model, manifest.image_size)
    return data, manifest


def check_storage(config: TrainConfig) -> storage.Location:
    """--storage, refused in one line when its bucket is missing or it cannot be written."""
    storage_root = storage.resolve(config.storage)
    storage.check_bucket(storage_root)
    storage.check_writable(storage_root)
    return storage_root


def run_inputs(config: TrainConfig, data: storage.Location, manifest: Manifest, cpus_per_worker: float,
               placement_group_cleaner: bool, cores_shared: bool = False,
               mlflow: tracking.MlflowServer | None = None) -> RunInputs:
    """The checked weights (put in the object store, for every worker) and the rest of RunInputs."""
    weights = _checked_weights(config, manifest)
    return RunInputs(manifest=manifest, data=data, cpus_per_worker=cpus_per_worker,
                     weights_sha256=hashlib.sha256(weights[1]).hexdigest() if weights else None,
                     weights_ref=ray.put(weights) if weights else None,
                     placement_group_cleaner=placement_group_cleaner, cores_shared=cores_shared, mlflow=mlflow)


def train_and_export(config: TrainConfig, inputs: RunInputs, tally=None, datasets: dict | None = None,
                     callbacks: tuple = (), run_tracking: tracking.RunTracking | None = None) -> dict:
    """One run, its inputs checked: record (or check) its settings, train, export.

    `datasets` replaces the run's own reading of a split by one a sweep read once for all
    its trials; `callbacks` go to Ray Train (a trial's report to Ray Tune); `run_tracking`
    says where its epochs are tracked, if not in its own folder (a sweep's trial).
    """
    storage_root = storage.resolve(config.storage)
    run = RunLayout(storage_root.join(config.run_name))
    record = settings.run_record(config, inputs.manifest, inputs.data.uri, inputs.weights_sha256)
    record = _record_settings(run, record)
    run_tracking = dataclasses.replace(run_tracking or tracking.for_run(run, config.run_name, inputs.mlflow),
                                       params=settings.defining_settings(record),
                                       key=tracking.run_key(run.root.uri, record["starts"][0]["at"]))
    result = _fit(config, inputs, storage_root, run, tally, datasets or {}, list(callbacks), run_tracking)
    _check_finite(run)
    where = tracking.summary(run_tracking.tensorboard, run_tracking.mlflow, run_tracking.experiment,
                             run_tracking.run_name)
    return {**export(result, config, inputs.manifest, run), "tracking": where}


def _record_settings(run: RunLayout, record: dict) -> dict:
    """Write run.json before the first epoch; on a resume, first refuse other settings. The
    record written: on a resume, the first start's with this one added."""
    if storage.is_file(run.ray_checkpoints):
        if storage.is_file(run.settings):
            record, changed = settings.check_resume(run, record)
            if changed:
                log.info("resuming %s with %s", run.root.uri, "; ".join(changed))
        else:
            log.warning("%s has no %s (started by an earlier cxr): resuming without checking its settings",
                        run.root.uri, RUN_SETTINGS_FILE)
    storage.write_json(run.settings, record)
    return record


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


def worker_cpus(config: TrainConfig, started_ray: bool, concurrent_runs: int = 1, nodes=None) -> float:
    """CPUs each worker reserves, once the live nodes that may hold workers (--node-label)
    hold `concurrent_runs` runs of `config.workers` workers at once (a sweep's trials).

    A Ray that cannot grow (this job's own, or a cluster without an autoscaler) is all there
    will be: a request it cannot hold is an error at once. On a cluster that can grow, the
    driver waits up to --wait-timeout for the autoscaler to start the nodes (a --node-label'd
    pool may have none running yet): cxr.resources.wait_for. `nodes` reads the nodes
    (default `ray.nodes`).
    """
    where = ("the nodes labelled " + ",".join(f"{k}={v}" for k, v in config.node_labels)
             if config.node_labels else "the cluster")
    workers = config.workers * concurrent_runs
    bundle = {"CPU": config.cpus_per_worker or 1.0, **({"GPU": 1.0} if config.gpu else {})}
    return resources.wait_for(lambda found: _cpus_per_worker(config, found, where, concurrent_runs),
                              started_ray=started_ray, wait_timeout=config.wait_timeout, demand=[bundle] * workers,
                              labels=config.node_labels, nodes=nodes)


def _cpus_per_worker(config: TrainConfig, found: dict, where: str = "the cluster",
                     concurrent_runs: int = 1) -> float:
    """CPUs each worker reserves of the `found` resources; refuse a request they cannot hold.

    --cpus-per-worker is taken as given; otherwise cxr.resources.cpu_share decides (a whole
    CPU each while one is left to decode the stream, else equal shares of no less than half).
    """
    cpus = found.get("CPU", 0)
    workers = config.workers * concurrent_runs
    asked = f"--workers {config.workers}" + (f" x --max-concurrent {concurrent_runs}" if concurrent_runs > 1 else "")
    if config.gpu and found.get("GPU", 0) < workers:
        raise UserError(f"{asked} --gpu needs {workers} GPUs, found {int(found.get('GPU', 0))} on {where}")
    if config.cpus_per_worker is None:
        return resources.cpu_share(workers, cpus, asked, "worker", where)
    wanted = config.cpus_per_worker
    if wanted * workers > cpus:
        raise UserError(f"{asked} x {wanted:g} CPUs needs {wanted * workers:g} CPUs, found {cpus:g} on {where}")
    return wanted


def epoch_plan(config: TrainConfig, manifest: Manifest) -> tuple[str, bool]:
    """A line saying how each epoch goes, and whether --batch-size takes the whole training split.

    A batch larger than the split is not an error: every epoch is then one step on all of
    it (a few images of a smoke test), which the line says rather than clamping the batch.
    """
    images = manifest.splits["train"].total
    steps = steps_per_epoch(manifest, config.batch_size)
    if config.batch_size > images:
        return (f"--batch-size {config.batch_size} is larger than the training split ({images} images): each of "
                f"the {config.epochs} epoch(s) is one step on all of it", True)
    return (f"up to {config.epochs} epoch(s) of {steps} step(s), {config.batch_size} images a step "
            f"({images} training images)", False)


def cell_weights(config: TrainConfig, manifest: Manifest) -> CellWeights:
    """--balance-sources: each training image's weight by its source and class, computed
    here from the manifest's counts; --class-weights folds into them (cxr.train.data)."""
    return CellWeights.of(manifest, class_weighted=config.class_weights)


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


def _keeps_cache(config: TrainConfig, manifest: Manifest) -> bool:
    """Whether each worker keeps its decoded images in memory after the first epoch (--cache-mib)."""
    return cached_bytes_per_worker(manifest, config.workers) <= config.cache_mib * 2**20


def _fit(config: TrainConfig, inputs: RunInputs, storage_root: storage.Location, run: RunLayout, tally, shared: dict,
         callbacks: list, run_tracking: tracking.RunTracking):
    configure_environment()
    for name, value in RAY_TRAIN_ENVIRONMENT.items():
        os.environ.setdefault(name, value)  # the driver's, which Ray Train passes on to its controller
    # Imported here, after configure_environment: Ray's TensorFlow trainer imports tf.keras,
    # which must resolve to Keras 2 (cxr.keras_lib).
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    manifest = inputs.manifest
    # Before any worker starts: Ray Train would retry a damaged latest checkpoint through
    # every failure the run allows.
    resume = checkpoints.resume_point(run)
    cache = _keeps_cache(config, manifest)
    datasets = {split: shared[split] if split in shared else split_dataset(inputs.data, manifest, split, config.seed)
                for split in ("train", "val")}
    for dataset in datasets.values():
        # The training bar counts these images: Ray Data's own bars for the streams that
        # feed it (drawn by Ray Train's split coordinators) would only repeat it.
        dataset.context.enable_progress_bars = False
    if not cache and "val" not in shared:
        # Without the workers' cache, validation (read every epoch) is decoded once into the
        # object store rather than re-read and re-decoded by a new stream each time.
        datasets["val"] = datasets["val"].materialize()
    trainer = _trainer_class(inputs.placement_group_cleaner)(
        train_loop_per_worker,
        train_loop_config={"config": config, "manifest": manifest, "weights": inputs.weights_ref,
                           "run_uri": run.root.uri, "cache": cache, "tally": tally,
                           "cores_shared": inputs.cores_shared, "resume": resume, "tracking": run_tracking,
                           "cell_weights": cell_weights(config, manifest) if config.balance_sources else None},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.gpu,
                                     resources_per_worker={"CPU": inputs.cpus_per_worker},
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
            worker_runtime_env={"env_vars": TF_ENVIRONMENT},
            callbacks=callbacks or None),
        # Explicit Ray Data options, Ray Data's defaults but the order: without them Ray Train builds its
        # own from the deprecated `exclude_resources` (ray/train/_internal/data_config.py,
        # default_ingest_options), and its DatasetManager warns about that on every run.
        # In order: otherwise blocks arrive as tasks finish, and one seed gives many orders
        # (cxr.train.data.split_dataset).
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        datasets=datasets)
    return trainer.fit()


def _trainer_class(placement_group_cleaner: bool):
    """Ray Train's TensorflowTrainer; without its placement-group cleaner where it cannot work
    (`placement_group_cleaner` False: a Ray this job started without the State API).

    Ray Train V2 always starts a detached PlacementGroupCleaner actor (ray/train/v2/api/
    data_parallel_trainer.py, `_create_default_callbacks`; no setting turns it off) that asks
    the State API every second whether the controller is still alive, to remove the
    workers' placement group if it died. The State API is served by the dashboard, which
    the job's own Ray runs without (cxr.runtime.ensure_ray: its minimal API server answers
    404), so the cleaner could never do its work there and logged "Failed to query Ray
    Train Controller actor state" once a second instead; with another Ray on the machine
    it could not even tell which one to ask ("Found multiple active Ray instances"). It
    has nothing to do there either: that Ray, placement groups and all, ends with this
    job. On a cluster (dashboard and State API on the head) it stays, and so it does in a
    sweep, which starts its own Ray with the State API (cxr.tune.job): Ray Tune stops a
    trial by ending its process, and the workers' placement group outlives the Ray Train
    controller that dies with it (it belongs to the job, ray-project/ray#58515), holding
    its CPUs or GPUs from the next trials until the cleaner removes it.
    """
    from ray.train.tensorflow import TensorflowTrainer

    if placement_group_cleaner:
        return TensorflowTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class LocalTensorflowTrainer(TensorflowTrainer):
        def _create_default_callbacks(self):
            return [callback for callback in super()._create_default_callbacks()
                    if not isinstance(callback, PlacementGroupCleanerCallback)]

    return LocalTensorflowTrainer


def export(result, config: TrainConfig, manifest: Manifest, run: RunLayout, into: ExportLayout | None = None,
           extra: dict | None = None) -> dict:
    """Copy the best checkpoint's model, the manifest and the history into `<run>/model/`,
    or `into` another run's (a sweep's `best/`); `extra` joins training.json.

    Only checkpoints whose files match their digest are read (cxr.train.checkpoints); the
    model is written whole or not at all, as scoring must never load half of one.
    """
    chosen = checkpoints.to_export(result, run)
    state, best_state = chosen.latest, chosen.best_state
    target = into or run.export
    storage.write_bytes_atomically(target.model, storage.read_bytes(chosen.best.join(MODEL_FILE)))
    rows = list(state.history)
    storage.write_json(target.manifest, manifest.to_dict())
    storage.write_bytes(target.history, history_csv(rows))
    storage.write_bytes(target.learning_curve, learning_curve_png(rows, f"{config.model} on {manifest.source_uri}"))
    # The exported checkpoint's own last epoch: Ray Train's best by validation loss.
    best_row = best_state.history[-1]
    summary = {"model": config.model, "run": run.root.uri, "export": target.root.uri,
               "class_names": list(manifest.class_names), "image_size": manifest.image_size,
               "epochs_trained": state.next_epoch, "stopped_early": state.stopped_early,
               "best_epoch": best_row["epoch"], "best": best_row, "restarts": state.attempt, "config": config.to_dict(),
               **(extra or {})}
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
        *tracking.summary_lines(summary.get("tracking")),
    ])
