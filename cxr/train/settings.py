"""What defines a training run, recorded when it starts and checked every time it resumes.

A run lives under `<storage>/<name>/`, and rerunning the same name resumes from its
latest checkpoint. The checkpoint holds the model, its optimizer (with the learning-rate
schedule, whose length is fixed when the run starts) and the training state, but not
the settings: resumed with another model, learning rate or data, the old model would
carry on under a mix of both. So `run.json` records the full config, the identity of
the shards and the package versions before the first epoch (a run that fails has still
said what it was), and a resume is refused when a setting that changes what is trained
differs. Settings about where and how the run executes may change.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform

from cxr import __version__, options, storage
from cxr.artifacts import Manifest, RunLayout
from cxr.config import APPEARANCE_PRESET, TrainConfig
from cxr.errors import UserError
from cxr.preprocess.manifest import package_versions

# Settings that may differ on resume: where the workers run and how they hold the data,
# how long to wait for them, how many failures to survive, the resilience drill, where the
# run is tracked (TrainConfig's settings that do not define the run). Where the shards are
# read from may change too (a copy on S3): the shards themselves are compared by their manifest.
EXECUTION_SETTINGS = tuple(leaf.name for leaf in options.leaves(TrainConfig) if not leaf.option.defines_run)
RECORDED_PACKAGES = ("ray", "tensorflow", "tensorflow-cpu", "tf-keras", "numpy", "pyarrow")
# How messages name what run.json holds beside the settings.
_RECORD_FLAGS = {"manifest": "--data", "weights.sha256": "--weights (file content)"}


def run_record(config: TrainConfig, manifest: Manifest, data_uri: str, weights_sha256: str | None) -> dict:
    """run.json's content for a run starting (or resuming) now, as JSON gives it back."""
    versions = {name: version for name, version in package_versions(RECORDED_PACKAGES).items()
                if version != "not installed"}
    return json.loads(json.dumps({
        "cxr_version": __version__,
        "config": config.to_dict(),
        "weights": {"spec": config.weights_spec, "sha256": weights_sha256},
        "data": {"uri": data_uri, "manifest_sha256": manifest_digest(manifest), "source": manifest.source_uri,
                 "image_size": manifest.image_size, "class_names": list(manifest.class_names),
                 "train_images": manifest.splits["train"].total},
        "versions": {"python": platform.python_version(), **versions},
        "starts": [{"at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "config": _execution(config.to_dict())}],
    }))


def manifest_digest(manifest: Manifest) -> str:
    """The shards' identity: a hash of their manifest (which lists every shard file and count)."""
    return hashlib.sha256(json.dumps(manifest.to_dict(), sort_keys=True).encode()).hexdigest()


def defining_settings(record: dict) -> dict[str, object]:
    """The settings of a record that define what is trained, flattened ("augment.zoom")."""
    flat = {}
    for key, value in record["config"].items():
        if key in EXECUTION_SETTINGS:
            continue
        if key == "augment" and isinstance(value, dict):
            # Runs recorded before appearance augmentation existed had none.
            value = {**{name: 0.0 for name in APPEARANCE_PRESET}, **value}
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": inner_value for inner, inner_value in value.items()})
        else:
            flat[key] = value
    flat["weights"] = record["weights"]["spec"]
    flat["weights.sha256"] = record["weights"]["sha256"]
    flat["manifest"] = record["data"]["manifest_sha256"]
    return flat


def compare(recorded: dict, current: dict) -> tuple[list[tuple[str, object, object]], list[str]]:
    """(changes that make it another run, as (setting, recorded, now); the allowed changes
    since the last start, described)."""
    old, new = defining_settings(recorded), defining_settings(current)
    # Only the cosine schedule's length is fixed at the start (in the checkpoint's
    # optimizer); a constant rate trains the same whatever the upper bound.
    constant = recorded["config"]["lr_schedule"] == current["config"]["lr_schedule"] == "constant"
    refused = [(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key) and not (key == "epochs" and constant)]
    before = recorded["starts"][-1]["config"]  # every start records its execution settings
    now = _execution(current["config"])
    # A setting the earlier start did not record did not exist then: not a change.
    allowed = [f"{flag(key)} {shown(before[key])} -> {shown(now[key])}" for key in now
               if key not in ("storage", "name") and key in before and before[key] != now[key]]
    return refused, allowed


def check_resume(run: RunLayout, current: dict) -> tuple[dict, list[str]]:
    """Compare `current` (run_record) with the record of `run`, which is about to resume.

    Refuse, in one line, a setting that makes it another run; otherwise return the record
    to write (the first start's, with this start appended) and the allowed changes.
    """
    return check_record(run.root.uri, storage.read_json(run.settings), current)


def check_record(where: str, recorded: dict, current: dict, what: str = "run") -> tuple[dict, list[str]]:
    """check_resume for the record of the run (or `what`: a sweep) at `where`."""
    _check_classes(where, recorded, current, what)
    refused, allowed = compare(recorded, current)
    if refused:
        key, old, new = refused[0]
        more = f" (and {', '.join(flag(k) for k, _, _ in refused[1:])})" if refused[1:] else ""
        if key == "manifest":
            change = (f"the {what} was trained on other shards (manifest {str(old)[:12]} at "
                      f"{recorded['data']['uri']}) than --data {current['data']['uri']} (manifest {str(new)[:12]})")
            fix = f"--data {recorded['data']['uri']}"
        else:
            change = f"the {what} was started with {flag(key)} {shown(old)}, not {shown(new)}"
            fix = f"{flag(key)} {shown(old)}"
        if key == "epochs":
            change += " (the cosine learning-rate schedule's length is fixed when a run starts)"
        raise UserError(f"{where}: {change}{more}; resume it with {fix}, or start a new {what} with another --name")
    start = dict(current["starts"][-1])
    if allowed:
        start["changed"] = allowed
    if current["versions"] != recorded["versions"]:
        start["versions"] = current["versions"]
    return {**recorded, "starts": [*recorded["starts"], start]}, allowed


def _check_classes(where: str, recorded: dict, current: dict, what: str) -> None:
    """Refuse shards of other classes by name: a model's outputs are its classes, in their order.

    (Their manifest differs too, which compare refuses; this says what the difference means.)
    """
    trained, offered = recorded["data"].get("class_names"), current["data"]["class_names"]
    if trained is not None and list(trained) != list(offered):
        raise UserError(f"{where}: the {what} was trained on classes {', '.join(trained)} (in label order), but "
                        f"--data {current['data']['uri']} holds {', '.join(offered)}; resume it with "
                        f"--data {recorded['data']['uri']}, or start a new {what} with another --name")


def _execution(config: dict) -> dict:
    """The settings that may change from one start to the next (with --epochs under a constant rate)."""
    keys = EXECUTION_SETTINGS + (("epochs",) if config["lr_schedule"] == "constant" else ())
    return {key: config[key] for key in keys}


def flag(key: str) -> str:
    """The command-line spelling of a setting (or of what run.json holds beside them), for messages."""
    return _RECORD_FLAGS.get(key) or options.flag(TrainConfig, key)


def shown(value) -> str:
    """A setting's value as messages show it."""
    if value is None:
        return "(default)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # --wait-timeout 600, as typed, not 600.0
    if isinstance(value, (list, tuple)):
        return ",".join("=".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in value) or "(none)"
    return str(value)
