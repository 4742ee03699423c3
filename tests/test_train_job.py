"""The training job end to end on a real local Ray: 2 workers, an injected failure, S3, bad input."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cxr.config import AugmentConfig, PreprocessConfig, SyntheticConfig, TrainConfig
from cxr.errors import UserError
from cxr.preprocess.pipeline import run_preprocess
from cxr.train.job import run_training
from tests.cli import assert_one_line_error, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tiny_shards) -> str:
    return tiny_shards


def small_config(shards: str, storage: str, **overrides) -> TrainConfig:
    settings = dict(data=shards, storage=storage, epochs=2, batch_size=16, augment=AugmentConfig(0.02, 0.05, 0.05))
    return TrainConfig(**{**settings, **overrides})


def test_two_workers_survive_a_failure_and_end_in_sync(shards, tmp_path, capsys, caplog):
    config = small_config(shards, str(tmp_path / "runs"), name="drill", workers=2, epochs=3, fail_at_epoch=1,
                          patience=5)
    summary = run_training(config)
    run = tmp_path / "runs" / "drill"
    history = (run / "model" / "history.csv").read_text().splitlines()
    epochs_and_attempts = [(int(r.split(",")[0]), int(r.split(",")[-1])) for r in history[1:]]
    # Each epoch reported once; epoch 0 was not trained again after the failure in epoch 1.
    assert epochs_and_attempts == [(0, 0), (1, 1), (2, 1)]
    assert summary["restarts"] == 1 and summary["epochs_trained"] == 3
    # What the log says: each epoch with its metrics, and the restart.
    shown = capsys.readouterr().out.splitlines()
    assert "train: resuming from the checkpoint of epoch 1" in shown
    assert [line.split(":")[1] for line in shown if line.startswith("train: epoch ")] == [
        " epoch 1/3", " epoch 2/3", " epoch 3/3"]
    val_losses = [float(r.split(",")[history[0].split(",").index("val_loss")]) for r in history[1:]]
    assert summary["best_epoch"] == int(np.argmin(val_losses))
    # Ray Train keeps the best checkpoint by validation loss and the latest one.
    assert 1 <= len([p for p in run.glob("checkpoint_*") if p.is_dir()]) <= 2
    ranks = [json.loads((run / "workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # TensorBoard: an event file per start of the workers, read as one run of every epoch.
    from tests.test_tracking import scalars

    assert len(list((run / "tensorboard").iterdir())) == 2
    assert [step for step, _ in scalars(run / "tensorboard")["val_loss"]] == [0, 1, 2]

    exported = run / "model"
    assert json.loads((exported / "manifest.json").read_text()) == json.loads(
        open(os.path.join(shards, "manifest.json")).read())
    assert Image.open(exported / "learning_curve.png").format == "PNG"
    from cxr.train.models import load_model

    model = load_model(str(exported / "model.keras"))
    shard = os.path.join(shards, json.loads((exported / "manifest.json").read_text())["shards"]["test"][0]["path"])
    png = pq.read_table(shard).column("image_png")[0].as_py()
    image = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32)[None, ..., None]
    probabilities = model.predict(image, verbose=0)
    assert probabilities.shape == (1, 2) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)

    # Another learning rate would be another run: refused before anything is trained or written.
    with pytest.raises(UserError, match=r"started with --learning-rate 0.0003, not 0.001; resume it with"):
        run_training(small_config(shards, str(tmp_path / "runs"), name="drill", workers=2, epochs=3, patience=5,
                                  learning_rate=1e-3))
    assert len(json.loads((run / "run.json").read_text())["starts"]) == 1

    # The same run again on one worker (how it runs may change): it resumes at the end,
    # trains nothing more, and the log says what changed.
    with caplog.at_level("INFO", logger="cxr"):
        again = run_training(small_config(shards, str(tmp_path / "runs"), name="drill", workers=1, epochs=3,
                                          patience=5))
    assert again["epochs_trained"] == 3
    assert "train: resuming from the checkpoint of epoch 3 (finished)" in capsys.readouterr().out.splitlines()
    assert (run / "model" / "history.csv").read_text().splitlines() == history
    assert "--workers 2 -> 1" in caplog.text and "--fail-at-epoch 1 -> (default)" in caplog.text
    # Its settings were recorded at the start, and each start since.
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["config"]["fail_at_epoch"] == 1 and recorded["data"]["image_size"] == 64
    assert [start["config"]["workers"] for start in recorded["starts"]] == [2, 1]


def test_a_non_finite_loss_stops_the_run(shards, tmp_path):
    """A learning rate of 1e30 overflows the weights at once: the run stops at the first NaN."""
    with pytest.raises(UserError, match=r"training stopped at a non-finite loss in epoch 1, step \d+ \(loss nan\)"):
        run_training(small_config(shards, str(tmp_path / "runs"), name="diverged", learning_rate=1e30,
                                  lr_schedule="constant", epochs=3))
    run = tmp_path / "runs" / "diverged"
    # No epoch with a non-finite loss became a checkpoint, nothing was exported, and the
    # settings were recorded before the first epoch.
    assert not list(run.glob("checkpoint_*")) and not (run / "model").exists()
    assert json.loads((run / "run.json").read_text())["config"]["learning_rate"] == 1e30


def test_s3_data_and_storage(ray_session, shards, s3_env, s3_bucket, s3_client, tmp_path):
    data = f"s3://{s3_bucket}/shards"
    run_preprocess(PreprocessConfig(output=data, image_size=64, synthetic=SyntheticConfig(images=80, size=128)))
    summary = run_training(small_config(data, f"s3://{s3_bucket}/runs", name="s3run", epochs=1))
    assert summary["export"] == f"s3://{s3_bucket}/runs/s3run/model"
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/s3run/")["Contents"]}
    for name in ("model.keras", "manifest.json", "history.csv", "learning_curve.png", "training.json"):
        assert f"runs/s3run/model/{name}" in keys
    assert any("/checkpoint_" in k for k in keys)


def run_train_job(*args: str, env: dict | None = None):
    return run_job("train", *args, env=env)


def test_bad_input_fails_before_training(ray_session, shards, tmp_path):
    address = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    storage = str(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_train_job("--data", str(tmp_path / "empty"), "--storage", storage), "no manifest.json")

    future = tmp_path / "future"
    future.mkdir()
    manifest = json.loads(open(os.path.join(shards, "manifest.json")).read())
    (future / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    assert_one_line_error(run_train_job("--data", str(future), "--storage", storage), "schema version 99")

    (tmp_path / "a-file").write_text("")
    assert_one_line_error(run_train_job("--data", shards, "--storage", str(tmp_path / "a-file" / "runs")),
                          "Cannot create directory")

    assert_one_line_error(run_train_job("--data", shards, "--storage", storage, "--workers", "3",
                                        "--cpus-per-worker", "1", env=address), "found 2 on the cluster")

    from cxr.train.models import build_model

    three_classes = str(tmp_path / "three.weights.h5")
    build_model("scratch_cnn", 64, 3).save_weights(three_classes)
    assert_one_line_error(run_train_job("--data", shards, "--storage", storage, "--weights", three_classes,
                                        env=address), "does not fit a scratch_cnn at 64 px with 2 classes")
    assert not (tmp_path / "runs" / "scratch_cnn").exists()
