"""Damaged files are named in one line, never met with a traceback; reports are written whole
or not at all; a run resumes from its newest whole checkpoint.

Every damaged file is made here, from copies: the session's trained run (tiny_run) is copied
into tmp_path before anything is cut or flipped, and its files are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from ray.train import Checkpoint, Result

from cxr import storage
from cxr.artifacts import (CHECKPOINT_DIGEST_FILE, MANIFEST_FILE, MODEL_FILE, RAY_CHECKPOINT_PREFIX, STATE_FILE,
                           ReportLayout, RunLayout, check_shard_files, read_manifest)
from cxr.config import AugmentConfig, EvaluateConfig, PredictConfig, TrainConfig
from cxr.errors import UserError
from cxr.train import checkpoints
from cxr.train.checkpoints import TrainingState
from tests.cli import assert_one_line_error, run_job
from tests.manifests import SAMPLE


# ---------------------------------------------------------------- making damage


def cut(path: Path) -> Path:
    """`truncate -s 50%`: a copy or a disk that stopped halfway."""
    os.truncate(path, path.stat().st_size // 2)
    return path


def flip(path: Path) -> Path:
    """One byte in the middle changed: a file that keeps its length but not its content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def copied_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's run, under the same name, for a test to damage."""
    copy = tmp_path / "runs" / tiny_run.name
    shutil.copytree(tiny_run, copy)
    return copy


def checkpoint_folders(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith(RAY_CHECKPOINT_PREFIX))


def latest_checkpoint(run: Path) -> Path:
    return Path(checkpoints.ray_latest(RunLayout.at(str(run))).path)


def rewound(run: Path, latest: Path, epochs: int = 1) -> Path:
    """A whole checkpoint of an earlier epoch beside the latest, as Ray Train keeps the best
    one when the latest is not it. Whether the session's 2-epoch run kept one is chance (its
    validation loss), so the test makes it: the latest's files with the state set back to
    `epochs` (its weights do not matter here), digested as rank 0 digests."""
    older = run / f"{RAY_CHECKPOINT_PREFIX}0000-00-00_rewound"
    shutil.copytree(latest, older)
    history = TrainingState.load(str(older)).history[:epochs]
    best = min(history, key=lambda row: row["val_loss"])
    TrainingState(next_epoch=epochs, best_val_loss=best["val_loss"], best_epoch=best["epoch"],
                  history=history).save(str(older))
    checkpoints.write_digest(str(older))
    return older


def tiny_config(shards: str, run: Path, **overrides) -> TrainConfig:
    """The session run's settings (tests/conftest.py, tiny_run), for a run under `run`'s parent."""
    return TrainConfig(**{"data": shards, "storage": str(run.parent), "name": run.name, "epochs": 2,
                          "batch_size": 16, "augment": AugmentConfig(0, 0, 0), **overrides})


# ---------------------------------------------------------------- model files


def test_a_whole_model_file_passes_and_cut_flipped_or_foreign_ones_say_why(tiny_run, tmp_path):
    from cxr.train.models import model_file_damage

    def damage(path: Path) -> str | None:
        with open(path, "rb") as handle:
            return model_file_damage(handle)

    model = tmp_path / MODEL_FILE
    shutil.copy(tiny_run / "model" / MODEL_FILE, model)
    assert damage(model) is None
    assert "CRC" in damage(flip(model))
    shutil.copy(tiny_run / "model" / MODEL_FILE, model)
    assert damage(cut(model)) == "cut short: its .keras archive has no end"
    model.write_text("<html>not found</html>")
    assert damage(model) == "not a Keras model file"
    model.write_bytes(b"")
    assert damage(model) == "empty"


def test_a_legacy_hdf5_model_file_is_read_through_too(tmp_path):
    from cxr.train.models import build_model, model_file_damage

    model = tmp_path / "legacy.keras"  # what checkpoints before cxr.keras_lib.save_model could hold
    build_model("scratch_cnn", 36, 2).save(str(model), save_format="h5")
    with open(model, "rb") as handle:
        assert model_file_damage(handle) is None
    cut(model)
    with open(model, "rb") as handle:
        assert model_file_damage(handle).startswith("unreadable HDF5 (OSError: ")


def test_a_cut_export_is_named_by_open_export_before_ray_starts(tiny_run, tmp_path):
    from cxr.scoring.export import find_export, open_export

    run = copied_run(tiny_run, tmp_path)
    cut(run / "model" / MODEL_FILE)
    for opened in (lambda: open_export(str(run / "model")), lambda: find_export(str(run))):
        with pytest.raises(UserError) as refused:
            opened()
        message = str(refused.value)
        assert message.startswith(f"{run / 'model' / MODEL_FILE}: the model file is damaged (cut short")
        assert "rerun jobs/train.py with the run's --name" in message and "\n" not in message


def test_evaluate_and_predict_refuse_a_cut_model_and_write_nothing(tiny_run, tmp_path):
    from cxr.evaluate.job import run_evaluation
    from cxr.predict.job import run_predict

    run = copied_run(tiny_run, tmp_path)
    cut(run / "model" / MODEL_FILE)
    with pytest.raises(UserError, match=f"{run / 'model' / MODEL_FILE}: the model file is damaged"):
        run_evaluation(EvaluateConfig(run=str(run)))
    assert not (run / "report").exists()
    with pytest.raises(UserError, match=f"{run / 'model' / MODEL_FILE}: the model file is damaged"):
        run_predict(PredictConfig(model=str(run / "model"), input=str(tmp_path / "images"),
                                  output=str(tmp_path / "predictions")))
    assert not (tmp_path / "predictions").exists()


def test_a_damaged_training_record_is_named(tiny_run, tmp_path):
    from cxr.scoring.export import open_export

    run = copied_run(tiny_run, tmp_path)
    cut(run / "model" / "training.json")
    with pytest.raises(UserError, match=r"training\.json: not valid JSON, the file is damaged; rerun jobs/train.py"):
        open_export(str(run / "model"))


@pytest.mark.slow
def test_the_evaluate_job_names_a_cut_model_in_one_line_and_leaves_no_report(ray_session, tiny_run, tmp_path):
    run = copied_run(tiny_run, tmp_path)
    cut(run / "model" / MODEL_FILE)
    result = run_job("evaluate", "--run", str(run),
                     env={"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address})
    assert_one_line_error(result, f"{run / 'model' / MODEL_FILE}: the model file is damaged")
    assert not (run / "report").exists()


# ---------------------------------------------------------------- manifests


@pytest.mark.parametrize("content, problem", [
    ("{", "not valid JSON, the file is damaged"),
    (b"\xff\xfe{", "not valid JSON, the file is damaged"),
    ("[1, 2]", "holds list JSON, not a manifest"),
    (json.dumps({key: value for key, value in SAMPLE.items() if key != "counts"}),
     "lacks the field 'counts', not a whole manifest"),
    (json.dumps({**SAMPLE, "image": {"width": 64}}), "lacks the field 'height', not a whole manifest"),
    (json.dumps({**SAMPLE, "shards": {"train": "part-0.parquet"}}), "has a malformed field (TypeError: "),
])
def test_a_damaged_manifest_is_named_with_what_to_do(tmp_path, content, problem):
    manifest = tmp_path / MANIFEST_FILE
    manifest.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as refused:
        read_manifest(str(tmp_path))
    message = str(refused.value)
    assert message.startswith(f"{manifest}: {problem}") and "\n" not in message
    assert message.endswith("run jobs/preprocess.py again (with --overwrite) to write the shard set anew")


def test_an_exports_damaged_manifest_says_to_export_again(tiny_run, tmp_path):
    from cxr.scoring.export import open_export

    run = copied_run(tiny_run, tmp_path)
    cut(run / "model" / MANIFEST_FILE)
    with pytest.raises(UserError, match=rf"{run / 'model' / MANIFEST_FILE}: not valid JSON, the file is damaged; "
                                        r"rerun jobs/train.py with the run's --name"):
        open_export(str(run / "model"))


# ---------------------------------------------------------------- shards


@pytest.fixture
def copied_shards(tiny_shards, tmp_path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    return copy


def test_a_cut_or_swapped_shard_is_named_from_its_footer(copied_shards):
    data = storage.resolve(str(copied_shards))
    manifest = read_manifest(str(copied_shards))
    for split in ("train", "val", "test"):
        check_shard_files(data, manifest, split)
    cut(copied_shards / "test" / "part-00000.parquet")
    with pytest.raises(UserError, match=rf"{copied_shards}/test/part-00000\.parquet: not a readable Parquet file "
                                        r"\(ArrowInvalid: Parquet magic bytes not found"):
        check_shard_files(data, manifest, "test")
    shutil.copy(copied_shards / "val" / "part-00000.parquet", copied_shards / "train" / "part-00000.parquet")
    with pytest.raises(UserError, match=rf"train/part-00000\.parquet: holds {manifest.splits['val'].total} rows where "
                                        rf"manifest\.json lists {manifest.splits['train'].total}"):
        check_shard_files(data, manifest, "train")
    (copied_shards / "val" / "part-00000.parquet").unlink()
    with pytest.raises(UserError, match=r"val/part-00000\.parquet: missing, the shard set is incomplete"):
        check_shard_files(data, manifest, "val")


def test_training_reads_no_cut_shard(copied_shards):
    from cxr.train.data import split_dataset

    cut(copied_shards / "train" / "part-00000.parquet")
    with pytest.raises(UserError, match=r"train/part-00000\.parquet: not a readable Parquet file"):
        split_dataset(storage.resolve(str(copied_shards)), read_manifest(str(copied_shards)), "train", seed=0)


def test_evaluation_of_cut_shards_is_one_line_and_leaves_no_report(ray_session, tiny_run, copied_shards, tmp_path):
    from cxr.evaluate.job import run_evaluation

    cut(copied_shards / "test" / "part-00000.parquet")
    output = tmp_path / "report"
    with pytest.raises(UserError, match=r"test/part-00000\.parquet: not a readable Parquet file"):
        run_evaluation(EvaluateConfig(run=str(tiny_run), data=str(copied_shards), output=str(output)))
    assert not output.exists()  # the writability probe's folder is gone too


# ---------------------------------------------------------------- reports


def test_a_report_replaces_an_older_one_whole(tmp_path):
    from cxr.evaluate.report import write_together

    output = ReportLayout.at(str(tmp_path / "report"))
    write_together(output, {"report.json": b"{}", "report.md": b"old", "figures/gradcam.png": b"old"})
    write_together(output, {"report.json": b"{\"new\": 1}", "report.md": b"new"})
    files = sorted(str(p.relative_to(tmp_path / "report")) for p in (tmp_path / "report").rglob("*") if p.is_file())
    assert files == ["report.json", "report.md"]  # no figure of the older report mixed in
    assert (tmp_path / "report" / "report.md").read_bytes() == b"new"


def test_a_report_that_fails_while_written_leaves_the_older_one_or_nothing(tmp_path):
    from cxr.evaluate.report import write_together

    output = ReportLayout.at(str(tmp_path / "report"))
    broken = {"report.json": b"{\"new\": 1}", "report.md": "not bytes"}  # the second write fails
    with pytest.raises(TypeError):
        write_together(output, broken)
    assert not (tmp_path / "report").exists()
    write_together(output, {"report.json": b"{}", "report.md": b"old"})
    with pytest.raises(TypeError):
        write_together(output, broken)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.json", "report.md"]
    assert (tmp_path / "report" / "report.json").read_bytes() == b"{}"


# ---------------------------------------------------------------- checkpoints


def test_every_checkpoint_carries_the_digest_of_its_files(tiny_run):
    for folder in checkpoint_folders(tiny_run):
        listed = json.loads((folder / CHECKPOINT_DIGEST_FILE).read_text())["sha256"]
        assert set(listed) == {MODEL_FILE, STATE_FILE}
        assert checkpoints.verified_state(storage.resolve(str(folder))).next_epoch >= 1


@pytest.mark.parametrize("damage, why", [
    (lambda folder: flip(folder / MODEL_FILE), "model.keras does not match its digest"),
    (lambda folder: cut(folder / STATE_FILE), "state.json does not match its digest"),
    (lambda folder: (folder / MODEL_FILE).unlink(), "model.keras is missing"),
    (lambda folder: cut(folder / CHECKPOINT_DIGEST_FILE), "digest.json is not valid JSON"),
])
def test_a_checkpoint_that_does_not_match_its_digest_is_damaged(tiny_run, tmp_path, damage, why):
    folder = latest_checkpoint(copied_run(tiny_run, tmp_path))
    damage(folder)
    with pytest.raises(checkpoints.Damaged, match=why):
        checkpoints.verified_state(storage.resolve(str(folder)))


def test_a_checkpoint_from_before_digests_is_read_as_before_and_checked_by_reading(tiny_run, tmp_path):
    run = copied_run(tiny_run, tmp_path)
    for folder in checkpoint_folders(run):
        (folder / CHECKPOINT_DIGEST_FILE).unlink()
    assert checkpoints.resume_point(RunLayout.at(str(run))) is None  # Ray Train resumes from its latest, as before
    cut(latest_checkpoint(run) / MODEL_FILE)
    with pytest.raises(checkpoints.Damaged, match="model.keras: cut short"):
        checkpoints.verified_state(storage.resolve(str(latest_checkpoint(run))))


def test_with_every_checkpoint_damaged_a_resume_is_one_line_before_any_worker_starts(ray_session, tiny_shards,
                                                                                       tiny_run, tmp_path):
    from cxr.train.job import run_training

    run = copied_run(tiny_run, tmp_path)
    for folder in checkpoint_folders(run):
        cut(folder / MODEL_FILE)
    started = time.monotonic()
    with pytest.raises(UserError) as refused:
        run_training(tiny_config(tiny_shards, run))
    message = str(refused.value)
    assert message.startswith(f"{run}: no checkpoint to resume from: the latest, {latest_checkpoint(run)}, is damaged "
                              "(model.keras does not match its digest)")
    assert message.endswith("rerun with another --name (or delete the run folder) to train from the start")
    assert "\n" not in message
    assert time.monotonic() - started < 30  # no worker, so no retry of the damaged file


def test_a_damaged_ray_record_of_the_checkpoints_is_one_line(tiny_run, tmp_path):
    run = copied_run(tiny_run, tmp_path)
    cut(run / "checkpoint_manager_snapshot.json")
    with pytest.raises(UserError, match=r"checkpoint_manager_snapshot\.json: Ray Train's record of the run's "
                                        r"checkpoints cannot be used \(.*\); rerun with another --name"):
        checkpoints.resume_point(RunLayout.at(str(run)))


@pytest.mark.slow
def test_a_resume_whose_latest_checkpoint_is_damaged_falls_back_to_the_newest_whole_one_and_says_so(
        ray_session, tiny_shards, tiny_run, tmp_path, caplog):
    from cxr.scoring.export import open_export
    from cxr.train.job import run_training

    run = copied_run(tiny_run, tmp_path)
    latest = latest_checkpoint(run)
    rewound(run, latest, epochs=1)
    flip(latest / MODEL_FILE)
    with caplog.at_level(logging.WARNING, logger="cxr.train.checkpoints"):
        summary = run_training(tiny_config(tiny_shards, run))
    said = [r.getMessage() for r in caplog.records if r.name == "cxr.train.checkpoints"]
    assert said[0] == (f"checkpoint {latest} is damaged (model.keras does not match its digest); "
                       "resuming from the checkpoint of epoch 1")
    assert summary["epochs_trained"] == 2 and summary["restarts"] == 1
    assert open_export(str(run / "model")).class_names == ("COVID", "Normal")


def test_the_export_takes_the_best_whole_checkpoint_and_says_which_it_passed_over(tiny_run, tmp_path, caplog):
    from cxr.train.job import export

    run = copied_run(tiny_run, tmp_path)
    latest = latest_checkpoint(run)
    older = rewound(run, latest, epochs=1)
    metrics = json.loads((latest / STATE_FILE).read_text())["history"]
    # Ray Train's Result of such a run: the latest checkpoint, and the older one as its best.
    result = Result(metrics=metrics[1], checkpoint=Checkpoint(str(latest)), error=None, path=str(run),
                    best_checkpoints=[(Checkpoint(str(older)), {**metrics[0], "val_loss": -1.0})])
    layout = RunLayout.at(str(run))
    config, manifest = tiny_config("unused", run), read_manifest(str(run / "model"))
    assert export(result, config, manifest, layout)["best_epoch"] == 0  # the best, whole
    flip(older / MODEL_FILE)
    with caplog.at_level(logging.WARNING, logger="cxr.train.checkpoints"):
        summary = export(result, config, manifest, layout)
    assert (summary["best_epoch"], summary["epochs_trained"]) == (1, 2)
    assert [r.getMessage() for r in caplog.records if r.name == "cxr.train.checkpoints"] == [
        f"checkpoint {older} is damaged (model.keras does not match its digest); exporting the checkpoint of "
        "epoch 2, the best whole one"]
    flip(latest / MODEL_FILE)
    with pytest.raises(UserError, match=rf"{run}: no checkpoint to export: .* is damaged \(model\.keras does not "
                                        r"match its digest\) and there is no other whole one; rerun with another"):
        export(result, config, manifest, layout)


def test_on_s3_a_cut_export_and_a_damaged_checkpoint_are_named_too(tiny_run, tmp_path, s3_bucket, s3_client, s3_env):
    from cxr.scoring.export import open_export

    run = copied_run(tiny_run, tmp_path)
    cut(run / "model" / MODEL_FILE)
    folder = latest_checkpoint(run)
    for path in [*(run / "model").iterdir(), *folder.iterdir()]:
        s3_client.put_object(Bucket=s3_bucket, Key=f"runs/tiny/{path.relative_to(run)}", Body=path.read_bytes())
    export_uri = f"s3://{s3_bucket}/runs/tiny/model"
    with pytest.raises(UserError, match=rf"{export_uri}/model\.keras: the model file is damaged \(cut short"):
        open_export(export_uri)
    checkpoint = storage.resolve(f"s3://{s3_bucket}/runs/tiny/{folder.name}")
    assert checkpoints.verified_state(checkpoint).next_epoch == 2
    s3_client.put_object(Bucket=s3_bucket, Key=f"runs/tiny/{folder.name}/{MODEL_FILE}",
                         Body=flip(folder / MODEL_FILE).read_bytes())
    with pytest.raises(checkpoints.Damaged, match="model.keras does not match its digest"):
        checkpoints.verified_state(checkpoint)
