"""What each Ray Train worker runs: build or restore the model, fit epoch by epoch, checkpoint.

Every epoch ends with a checkpoint through `ray.train.report`: the full model with its
optimizer state, plus `state.json` (the epoch, the best validation loss so far, the
early-stopping counter and the history) and the digest of both (cxr.train.checkpoints).
A restarted worker group resumes from the latest one, checked against its digest first,
so a failure costs at most the epoch it interrupted, and early stopping survives restarts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import time

import numpy as np
import ray
import ray.train

from cxr import keras_lib, progress, seeds, storage
from cxr.artifacts import MODEL_FILE, Manifest, RunLayout, positive_label
from cxr.config import TrainConfig
from cxr.keras_lib import keras
from cxr.train import checkpoints, tracking
from cxr.train.checkpoints import TrainingState
from cxr.train.data import class_weights, worker_dataset
from cxr.train.models import build_model, load_model

# Rank 0 tells the driver where training is at most this often (a call to a small actor).
PROGRESS_SECONDS = 1.0


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """Adam's learning rate: constant, or a cosine decay over all the run's steps."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    return keras().optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.epochs * steps_per_epoch)


def steps_per_epoch(manifest: Manifest, batch_size: int) -> int:
    return max(1, -(-manifest.splits["train"].total // batch_size))


def compile_model(model, config: TrainConfig, class_names: tuple[str, ...], steps: int) -> None:
    """Adam, cross-entropy, and the metrics each epoch reports; `steps` is steps per epoch."""
    metrics = keras().metrics
    positive = positive_label(class_names)
    model.compile(
        optimizer=keras().optimizers.Adam(learning_rate=learning_rate(config, steps)),
        loss="categorical_crossentropy",
        metrics=["accuracy",
                 # One-vs-rest AUC averaged over classes: for two classes, the usual AUC.
                 metrics.AUC(name="auc", multi_label=True, num_labels=len(class_names)),
                 metrics.Precision(name="precision", class_id=positive),
                 metrics.Recall(name="recall", class_id=positive)])


def weights_digest(model) -> str:
    """A hash of all weights: equal on every worker when data-parallel training is in sync."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def non_finite_guard():
    """A Keras callback that stops `fit` at the first non-finite training loss (or an epoch
    whose validation loss is not finite), and says where in `found`: "epoch 3, step 12".

    Under MultiWorkerMirroredStrategy the loss is a metric all-reduced across the workers,
    so every rank sees the same value at the same step and they all stop together.
    """

    class NonFiniteGuard(keras().callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.found: str | None = None
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if self.found is None and loss is not None and not math.isfinite(float(loss)):
                self.found = f"epoch {self.epoch + 1}, step {batch + 1} (loss {float(loss)})"
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            for key in ("loss", "val_loss"):
                value = (logs or {}).get(key)
                if self.found is None and value is not None and not math.isfinite(float(value)):
                    self.found = f"epoch {epoch + 1} ({key} {float(value)})"
                    self.model.stop_training = True

    return NonFiniteGuard()


def _epoch_callbacks(config: TrainConfig, rank: int, world: int, state: TrainingState, train_images: int,
                     tally=None, writer: tracking.EpochWriter | None = None) -> list:
    """Keras callbacks of the one `fit` over all remaining epochs: time, track, checkpoint, report.

    One `fit` for the whole run rather than one per epoch: each call would rebuild the
    input pipeline and wait for its first batch again. The first callback's `state` is
    the training state after the last finished epoch. Rank 0 tells the driver's progress
    `tally` where training is and each epoch's metrics, and hands each epoch's row to its
    `writer` (TensorBoard, MLflow: cxr.train.tracking). The first callback stops at a
    non-finite loss: that epoch is neither checkpointed nor counted, so the latest and the
    best checkpoint stay finite and a rerun resumes from the last good epoch.
    """
    guard = non_finite_guard()

    class EpochReporter(keras().callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.state = state
            self.reported = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.started, self.train_seconds = time.perf_counter(), None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if rank == 0 and now - self.reported >= PROGRESS_SECONDS:
                # Each step is one global batch, over all workers.
                images = min((batch + 1) * config.batch_size, train_images)
                progress.position(tally, self.state.next_epoch * train_images + images,
                                  images / (now - self.started))
                self.reported = now

        def on_test_begin(self, logs=None):
            # Training seconds of the epoch, without its validation pass.
            if self.train_seconds is None:
                self.train_seconds = time.perf_counter() - self.started

        def on_epoch_end(self, epoch, logs=None):
            if guard.found is not None:
                return
            seconds = time.perf_counter() - self.started
            row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()},
                   "learning_rate": current_learning_rate(self.model.optimizer),
                   "seconds": round(seconds, 3),
                   "images_per_s": round(train_images / (self.train_seconds or seconds), 2),
                   "attempt": self.state.attempt}
            self.state = state = self.state.after_epoch(row, config.patience)
            if rank == 0:
                progress.position(tally, state.next_epoch * train_images, row["images_per_s"])
                progress.say(tally, epoch_line(row, config.epochs, state))
            with tempfile.TemporaryDirectory() as directory:
                # Every rank saves: under MultiWorkerMirroredStrategy saving is a collective.
                keras_lib.save_model(self.model, os.path.join(directory, MODEL_FILE))
                if rank == 0:
                    state.save(directory)
                    checkpoints.write_digest(directory)  # last: it covers the files above
                # epochs_trained counts epochs across restarts: Ray Tune's scheduler measures
                # a trial's progress by it (cxr.tune), where its own iteration count would
                # restart with a resumed trial.
                ray.train.report({**row, "best_val_loss": state.best_val_loss, "stopped_early": state.stopped_early,
                                  "epochs_trained": state.next_epoch},
                                 checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None)
            if writer is not None:
                # After the checkpoint: an epoch is tracked once it is kept, so the epoch a
                # resumed run trains again was never tracked (TensorBoard would show it twice).
                writer.write(row)
            # Every rank sees the same all-reduced validation loss, so all stop together.
            if state.stopped_early:
                self.model.stop_training = True

    class FailOnce(keras().callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == config.fail_at_epoch and batch == 2:
                raise RuntimeError(f"injected failure: worker {rank}, epoch {self.epoch}, batch {batch}")

    callbacks = [guard, EpochReporter()]
    # Only in the first attempt, so that the resumed run goes through.
    if config.fail_at_epoch is not None and state.attempt == 0 and rank == world - 1:
        callbacks.append(FailOnce())
    return callbacks


def epoch_line(row: dict, epochs: int, state: TrainingState) -> str:
    """'epoch 3/20: loss 0.412 accuracy 0.830 ... val_auc 0.912; 310 images/s, 38.2 s, best so far'."""
    metrics = " ".join(f"{key} {row[key]:.3f}" for key in
                       ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc") if key in row)
    text = f"epoch {row['epoch'] + 1}/{epochs}: {metrics}; {row['images_per_s']:.0f} images/s, {row['seconds']:.1f} s"
    if state.best_epoch == row["epoch"]:
        text += ", best so far"
    if state.stopped_early:
        text += f"; stopping early (no better val_loss for {state.epochs_without_improvement} epochs)"
    return text


def current_learning_rate(optimizer) -> float:
    """The rate the optimizer applies now, whether a constant or a schedule of the step."""
    rate = optimizer.learning_rate
    if callable(rate):
        rate = rate(optimizer.iterations)
    return float(keras().backend.get_value(rate))


def train_loop_per_worker(loop_config: dict) -> None:
    import tensorflow as tf  # heavy (seconds, hundreds of MB): in the workers only, which have TF_ENVIRONMENT

    config: TrainConfig = loop_config["config"]
    manifest: Manifest = loop_config["manifest"]
    class_names = manifest.class_names
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Before anything draws: initial weights, dropout and whatever else uses the global
    # generators (TensorFlow's, Python's, NumPy's) come from this worker's stream of --seed.
    # With the data's order and augmentation keyed too (cxr.train.data), a CPU run repeats
    # its weights exactly. TensorFlow's op determinism is not needed for that on CPU and
    # stays off: runs repeated without it, and with it the quickstart's model trained about
    # 6% slower (it swaps the fused cross-entropy kernel for a composite of ops).
    keras().utils.set_random_seed(seeds.model(config.seed, rank))
    # TensorFlow's default is every core per process: with several workers on one node
    # they would oversubscribe it. Each takes its share instead.
    reserved = ray.get_runtime_context().get_assigned_resources().get("CPU") if loop_config["cores_shared"] else None
    tf.config.threading.set_intra_op_parallelism_threads(_compute_threads(context.get_local_world_size(), reserved))
    # One worker has nothing to all-reduce, yet MultiWorkerMirroredStrategy runs its collective
    # ops every step: 0.63 of the default strategy's images/s for the scratch CNN at 96 px on
    # 2 cores (docs/benchmarks.md, worker_overhead). Alone, a worker trains under the default.
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()

    checkpoint = checkpoints.to_load(ray.train.get_checkpoint(), loop_config.get("resume"))
    with strategy.scope():
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                try:
                    state = checkpoints.verified_state(storage.resolve(directory))
                except checkpoints.Damaged as exc:  # since the driver checked it (resume_point): the run's failure
                    raise RuntimeError(f"checkpoint {checkpoint.path} is damaged ({exc})") from None
                model = load_model(os.path.join(directory, MODEL_FILE), name=checkpoint.path)
            state = dataclasses.replace(state, attempt=state.attempt + 1)
        else:
            with tempfile.TemporaryDirectory() as directory:
                model = build_model(config.model, manifest.image_size, len(class_names),
                                    weights=_local_weights(loop_config.get("weights"), directory),
                                    dropout=config.dropout)
            compile_model(model, config, class_names, steps_per_epoch(manifest, config.batch_size))
            state = TrainingState()

    cache = loop_config["cache"]
    # With source balance, each image's weight (the class weights folded in) travels with it;
    # otherwise Keras weighs the classes. Never both: Keras would multiply them. Validation
    # stays unweighted, as it is with class weights.
    cell_weights = loop_config.get("cell_weights")
    train = worker_dataset(ray.train.get_dataset_shard("train"), config.batch_size, len(class_names), config.seed,
                           training=True, augment=config.augment, cache=cache, rank=rank, cell_weights=cell_weights)
    val = worker_dataset(ray.train.get_dataset_shard("val"), config.batch_size, len(class_names), config.seed,
                         training=False, cache=cache, rank=rank)
    weights = class_weights(manifest) if config.class_weights and cell_weights is None else None
    train_images = manifest.splits["train"].total

    tally = loop_config.get("tally")
    if rank == 0 and state.attempt > 0:
        progress.say(tally, f"resuming from the checkpoint of epoch {state.next_epoch}"
                     + (" (finished)" if state.finished(config.epochs) else ""))
    non_finite = None
    if not state.finished(config.epochs):
        with tracking.opened(loop_config["tracking"] if rank == 0 else None, list(state.history)) as writer:
            callbacks = _epoch_callbacks(config, rank, world, state, train_images, tally, writer)
            model.fit(train, validation_data=val, initial_epoch=state.next_epoch, epochs=config.epochs,
                      class_weight=weights, verbose=0, callbacks=callbacks)
            state, non_finite = callbacks[1].state, callbacks[0].found
            if writer is not None:
                writer.failed = non_finite is not None
    _write_worker_summary(loop_config["run_uri"], rank, model, state, non_finite)


def _compute_threads(workers_on_node: int, reserved_cpus: float | None = None) -> int:
    """This worker's threads for TensorFlow's kernels: its share of the node's cores, or the
    CPUs it reserved when other runs' workers share the node (a sweep's concurrent trials).

    Alone on a node, a worker takes the core it left to Ray Data too: once the data is
    cached (or a sweep shares it) that core would sit idle.
    """
    if reserved_cpus is not None:
        return max(1, int(reserved_cpus))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers_on_node))


def _local_weights(blob_ref, directory: str) -> str | None:
    """The driver's checked weights file, shipped through the object store to this node."""
    if blob_ref is None:
        return None
    name, data = ray.get(blob_ref)
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _write_worker_summary(run_uri: str, rank: int, model, state: TrainingState, non_finite: str | None) -> None:
    """workers/rank-N.json: lets anyone check that every worker ended with the same weights,
    and tells the driver where a non-finite loss stopped the run."""
    summary = {"rank": rank, "weights_sha256": weights_digest(model), "epochs": state.next_epoch,
               "attempt": state.attempt, "stopped_early": state.stopped_early, "non_finite": non_finite}
    storage.write_json(RunLayout.at(run_uri).worker_record(rank), summary)
