"""A run's checkpoints: what each holds, the digest that proves it whole, and which one to trust.

Every epoch ends in one of Ray Train's checkpoint folders (`checkpoint_<time>/`): the model
with its optimizer (MODEL_FILE), the `TrainingState` (STATE_FILE) and, written last by rank
0, the sha256 of both (CHECKPOINT_DIGEST_FILE). A checkpoint is checked against its digest
before it is read: on the driver before a run resumes or is exported, and in each worker
before it loads one. Checkpoints written before digests existed are checked by reading
them: the model file as a whole archive, state.json as JSON.

Ray Train resumes a run from the latest checkpoint in its own record of the run
(RAY_CHECKPOINTS_FILE; ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py
hands it to every worker) and would fail on a damaged one through every retry the run
allows. So the driver checks it first (`resume_point`): when it is damaged, the workers
load the newest whole checkpoint in the run's folder instead (Ray Train keeps the best
and the latest), and when none is whole the job ends in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
from dataclasses import dataclass

import ray.train
from ray.train import Result
from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError
from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager

from cxr import runtime, storage
from cxr.artifacts import CHECKPOINT_DIGEST_FILE, MODEL_FILE, RAY_CHECKPOINT_PREFIX, STATE_FILE, RunLayout
from cxr.errors import UserError, one_line
from cxr.train.models import model_file_damage

log = logging.getLogger(__name__)

# Validation loss must improve by more than this to count as an improvement.
MIN_DELTA = 1e-4
# What to do when no checkpoint of a run can be trusted, in its one-line error.
START_ANEW = "rerun with another --name (or delete the run folder) to train from the start"
_HASH_CHUNK = 2**20


@dataclass(frozen=True)
class TrainingState:
    """Everything besides the model that a resumed run needs to carry on exactly."""

    next_epoch: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    # How many times this run has been (re)started from a checkpoint.
    attempt: int = 0
    history: tuple[dict, ...] = ()

    def after_epoch(self, row: dict, patience: int) -> TrainingState:
        val_loss = row["val_loss"]
        improved = self.best_val_loss is None or val_loss < self.best_val_loss - MIN_DELTA
        waited = 0 if improved else self.epochs_without_improvement + 1
        return dataclasses.replace(
            self, next_epoch=row["epoch"] + 1, history=self.history + (row,),
            best_val_loss=val_loss if improved else self.best_val_loss,
            best_epoch=row["epoch"] if improved else self.best_epoch,
            epochs_without_improvement=waited, stopped_early=waited >= patience)

    def finished(self, epochs: int) -> bool:
        return self.stopped_early or self.next_epoch >= epochs

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, STATE_FILE), "w") as handle:
            json.dump(dataclasses.asdict(self), handle, indent=1)

    @classmethod
    def load(cls, directory: str) -> TrainingState:
        with open(os.path.join(directory, STATE_FILE)) as handle:
            return cls.from_dict(json.load(handle))

    @classmethod
    def from_dict(cls, fields: dict) -> TrainingState:
        """The state `save` wrote, as JSON gives it back."""
        return cls(**{**fields, "history": tuple(fields["history"])})


# ---------------------------------------------------------------- one checkpoint


class Damaged(Exception):
    """A checkpoint that cannot be trusted; the message says why, in a few words."""


def write_digest(directory: str) -> None:
    """Rank 0, last into a checkpoint folder before it is reported: the sha256 of every
    other file in it."""
    digests = {name: _sha256(storage.resolve(os.path.join(directory, name)))
               for name in sorted(os.listdir(directory)) if name != CHECKPOINT_DIGEST_FILE}
    with open(os.path.join(directory, CHECKPOINT_DIGEST_FILE), "w") as handle:
        json.dump({"sha256": digests}, handle, indent=1)


def verified_state(checkpoint: storage.Location) -> TrainingState:
    """The TrainingState of a checkpoint folder (local or on S3) whose files are whole;
    raises Damaged, saying why, for one that is not. Reads every file through once."""
    digest = checkpoint.join(CHECKPOINT_DIGEST_FILE)
    if storage.is_file(digest):
        expected = _json(digest, CHECKPOINT_DIGEST_FILE).get("sha256") or {}
        for name in sorted({MODEL_FILE, STATE_FILE} | set(expected)):
            if name not in expected:
                raise Damaged(f"{CHECKPOINT_DIGEST_FILE} lists no {name}")
            if not storage.is_file(checkpoint.join(name)):
                raise Damaged(f"{name} is missing")
            if _sha256(checkpoint.join(name)) != expected[name]:
                raise Damaged(f"{name} does not match its digest")
    else:  # written before digests: as whole as reading them can tell
        for name in (MODEL_FILE, STATE_FILE):
            if not storage.is_file(checkpoint.join(name)):
                raise Damaged(f"{name} is missing")
        model = checkpoint.join(MODEL_FILE)
        with _opened(model, model.fs.open_input_file) as handle:
            damage = model_file_damage(handle)
        if damage:
            raise Damaged(f"{MODEL_FILE}: {damage}")
    try:
        return TrainingState.from_dict(_json(checkpoint.join(STATE_FILE), STATE_FILE))
    except (KeyError, TypeError) as exc:
        raise Damaged(f"{STATE_FILE} is not a training state ({one_line(exc)})") from None


def _json(location: storage.Location, name: str) -> dict:
    try:
        with _opened(location, location.fs.open_input_stream) as stream:
            loaded = json.loads(stream.read().decode())
    except ValueError:
        raise Damaged(f"{name} is not valid JSON") from None
    if not isinstance(loaded, dict):
        raise Damaged(f"{name} is not a JSON object")
    return loaded


def _sha256(location: storage.Location) -> str:
    digest = hashlib.sha256()
    with _opened(location, location.fs.open_input_stream) as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _opened(location: storage.Location, opener):
    """`opener(location.path)` (a pyarrow filesystem's), its failure as storage's one-line error."""
    try:
        handle = opener(location.path)
    except OSError as exc:
        raise storage.storage_error(exc, location.uri) from None
    with handle:
        yield handle


# ---------------------------------------------------------------- a run's checkpoints


def located(run: RunLayout, checkpoint: ray.train.Checkpoint) -> storage.Location:
    """Where one of Ray Train's checkpoints of `run` is, as a storage location."""
    return storage.Location(uri=run.checkpoint(posixpath.basename(checkpoint.path.rstrip("/"))).uri,
                            fs=checkpoint.filesystem, path=checkpoint.path)


def ray_latest(run: RunLayout) -> storage.Location | None:
    """The latest checkpoint in Ray Train's record of `run`: the one a rerun resumes from."""
    # Reading the record, Ray Train's checkpoint manager says at INFO, in three lines, that
    # it found one and will resume from it: for a person, the resume line says that.
    announcer = logging.getLogger(CheckpointManager.__module__)
    level = announcer.level
    announcer.setLevel(logging.DEBUG if runtime.is_verbose() else logging.WARNING)
    try:
        checkpoint = Result.from_path(run.root.path, storage_filesystem=run.root.fs).checkpoint
    except (CheckpointManagerInitializationError, RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"{run.ray_checkpoints.uri}: Ray Train's record of the run's checkpoints cannot be used "
                        f"({one_line(exc)}); {START_ANEW}") from None
    finally:
        announcer.setLevel(level)
    return None if checkpoint is None else located(run, checkpoint)


def checkpoint_folders(run: RunLayout) -> list[storage.Location]:
    """Every checkpoint folder in the run's folder, whether Ray Train's record names it or not."""
    names = set()
    for info in storage.list_files(run.root):
        relative = posixpath.relpath(info.path, run.root.path)
        if relative.startswith(RAY_CHECKPOINT_PREFIX) and "/" in relative:
            names.add(relative.split("/", 1)[0])
    return [run.checkpoint(name) for name in sorted(names)]


def newest_whole(run: RunLayout, excluding: storage.Location) -> tuple[storage.Location, TrainingState] | None:
    """Of the run's other checkpoint folders, the whole one that has trained the most epochs."""
    whole = []
    for folder in checkpoint_folders(run):
        if folder.path.rstrip("/") == excluding.path.rstrip("/"):
            continue
        try:
            whole.append((folder, verified_state(folder)))
        except Damaged as exc:
            log.debug("checkpoint %s is damaged too (%s)", folder.uri, exc)
    return max(whole, key=lambda found: found[1].next_epoch, default=None)


@dataclass(frozen=True)
class ResumePoint:
    """Where workers resume instead of Ray Train's latest checkpoint, which is damaged."""

    damaged: str  # the name of Ray Train's latest checkpoint folder
    uri: str  # the newest whole checkpoint of the run
    epoch: int  # the epochs it has trained


def resume_point(run: RunLayout) -> ResumePoint | None:
    """Before a run starts: None when it starts afresh or Ray Train's latest checkpoint is
    whole; the newest whole checkpoint when the latest is damaged, said in one line; a
    one-line UserError when no checkpoint is whole."""
    if not storage.is_file(run.ray_checkpoints):
        return None
    latest = ray_latest(run)
    if latest is None:
        return None
    try:
        verified_state(latest)
        return None
    except Damaged as exc:
        why = str(exc)
    found = newest_whole(run, excluding=latest)
    if found is None:
        raise UserError(f"{run.root.uri}: no checkpoint to resume from: the latest, {latest.uri}, is damaged ({why}) "
                        f"and there is no other whole one; {START_ANEW}")
    folder, state = found
    log.warning("checkpoint %s is damaged (%s); resuming from the checkpoint of epoch %d", latest.uri, why,
                state.next_epoch)
    return ResumePoint(damaged=posixpath.basename(latest.path.rstrip("/")), uri=folder.uri, epoch=state.next_epoch)


def to_load(checkpoint: ray.train.Checkpoint | None, resume: ResumePoint | None) -> ray.train.Checkpoint | None:
    """In a worker: the checkpoint to load, Ray Train's unless it is the damaged one the driver found.

    After a restart within the run, Ray Train's latest is a checkpoint of this run's own
    epochs, and it is taken as it is.
    """
    if checkpoint is None or resume is None or posixpath.basename(checkpoint.path.rstrip("/")) != resume.damaged:
        return checkpoint
    location = storage.resolve(resume.uri)
    return ray.train.Checkpoint(path=location.path, filesystem=location.fs)


@dataclass(frozen=True)
class ToExport:
    """What an export takes from a run: the state of its latest whole checkpoint (the history)
    and the whole checkpoint of lowest validation loss, with its own state."""

    latest: TrainingState
    best: storage.Location
    best_state: TrainingState


def to_export(result, run: RunLayout) -> ToExport:
    """The checkpoints to export from `result` (Ray Train's Result of the run).

    Ray Train keeps the best checkpoint and the latest. A damaged one gives way to the
    other, said in one line; when neither is whole, a one-line UserError.
    """
    if result.checkpoint is None:
        raise UserError(f"{run.root.uri}: training produced no checkpoint")
    kept = {located(run, checkpoint).path: (located(run, checkpoint), metrics)
            for checkpoint, metrics in [(result.checkpoint, result.metrics), *(result.best_checkpoints or [])]}
    whole, damaged = [], []
    for location, metrics in kept.values():
        try:
            whole.append((location, metrics, verified_state(location)))
        except Damaged as exc:
            damaged.append((location, str(exc)))
    if not whole:
        location, why = damaged[0]
        raise UserError(f"{run.root.uri}: no checkpoint to export: {location.uri} is damaged ({why}) and there is "
                        f"no other whole one; {START_ANEW}")
    latest = max(whole, key=lambda found: found[2].next_epoch)
    best = min(whole, key=lambda found: found[1]["val_loss"])
    for location, why in damaged:
        log.warning("checkpoint %s is damaged (%s); exporting the checkpoint of epoch %d, the best whole one",
                    location.uri, why, best[2].next_epoch)
    return ToExport(latest=latest[2], best=best[0], best_state=best[2])
