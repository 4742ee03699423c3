"""An exported model: found, checked and loaded, as evaluation and prediction use it.

An export (`<storage>/<name>/model/`, written by the training job; its layout is
cxr.artifacts.ExportLayout) holds the model and a copy of the preprocessing manifest, so
scoring knows the class order and how to preprocess raw images as training saw them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from cxr import storage
from cxr.artifacts import MODEL_FILE, ExportLayout, Manifest, RunLayout, read_manifest
from cxr.errors import UserError
from cxr.keras_lib import configure_environment
from cxr.train.models import load_model, model_file_damage


@dataclass(frozen=True)
class Export:
    """A model exported by the training job, with what it was trained on."""

    uri: str
    manifest: Manifest
    training: dict  # training.json: the run's settings and best epoch; {} when absent

    @property
    def layout(self) -> ExportLayout:
        return ExportLayout.at(self.uri)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def model_uri(self) -> str:
        return self.layout.model.uri


# What to do about a damaged export, in its one-line errors: the run's checkpoints outlive it.
EXPORT_AGAIN = ("rerun jobs/train.py with the run's --name (jobs/tune.py with the sweep's) to export it again "
                "from its checkpoints")


def open_export(uri: str) -> Export:
    """Check and read an export folder, or fail in one line.

    The model file is read through here, on the driver (a second per 100 MB or so, without
    TensorFlow), so that a damaged one is named before Ray starts rather than met by every
    scoring actor with a traceback.
    """
    layout = ExportLayout.at(uri)
    storage.check_bucket(layout.root)
    if not storage.is_file(layout.model):
        raise UserError(f"{layout.root.uri}: no exported model ({MODEL_FILE}); pass the model/ folder of a "
                        f"finished training run")
    manifest = read_manifest(layout.root.uri, remedy=EXPORT_AGAIN)
    training = _training_record(layout)
    _check_model_file(layout)
    return Export(uri=layout.root.uri, manifest=manifest, training=training)


def _training_record(layout: ExportLayout) -> dict:
    """training.json, or {} for an export without one."""
    if not storage.is_file(layout.training):
        return {}
    try:
        record = storage.read_json(layout.training)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{layout.training.uri}: not valid JSON, the file is damaged; {EXPORT_AGAIN}")
    return record


def _check_model_file(layout: ExportLayout) -> None:
    try:
        with layout.model.fs.open_input_file(layout.model.path) as handle:
            damage = model_file_damage(handle)
    except OSError as exc:
        raise storage.storage_error(exc, layout.model.uri) from None
    if damage:
        raise UserError(f"{layout.model.uri}: the model file is damaged ({damage}); {EXPORT_AGAIN}")


def find_export(run_uri: str) -> Export:
    """The export of a run folder, or the export folder itself."""
    run = storage.resolve(run_uri)
    storage.check_bucket(run)
    if storage.is_file(ExportLayout(run).model):
        return open_export(run.uri)
    if not storage.exists(run):
        raise UserError(f"{run.uri}: no such run")
    return open_export(RunLayout(run).export.root.uri)


def check_compatible(export: Export, manifest: Manifest, uri: str) -> None:
    """Shards to score must have the model's classes, in its order, and its image size."""
    if manifest.class_names != export.class_names:
        raise UserError(f"{uri}: classes {list(manifest.class_names)} do not match the model's "
                        f"{list(export.class_names)}")
    if manifest.image_size != export.image_size:
        raise UserError(f"{uri}: {manifest.image_size} px images do not match the model's {export.image_size} px")
    made, trained = manifest.preprocess_config(), export.manifest.preprocess_config()
    if (made.lungs, made.markings.remove_all) != (trained.lungs, trained.markings.remove_all):
        raise UserError(f"{uri}: made with {_focus_text(made)}, the model's training data with "
                        f"{_focus_text(trained)}; preprocess them with the model's settings")


def _focus_text(config) -> str:
    lungs = config.lungs
    parts = ["--lung-crop" if lungs.crop else "--no-lung-crop"] + (["--lung-suppress"] if lungs.suppress else [])
    parts += [f"--lung-margin {lungs.margin:g}"] if lungs.enabled else []
    parts += ["--remove-all-markings"] if config.markings.remove_all else []
    return " ".join(parts)


def load_export_model(export: Export):
    """The exported model, loaded in this process (from local storage or S3)."""
    configure_environment()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, MODEL_FILE)
        with open(path, "wb") as handle:
            handle.write(storage.read_bytes(export.layout.model))
        return load_model(path, name=export.model_uri)
