"""Experiment tracking (cxr.train.tracking): TensorBoard events in every run, MLflow with --mlflow.

What TensorBoard shows is read back with TensorBoard's own reader (its EventMultiplexer, as
`tensorboard --logdir` loads a folder); what MLflow holds, with MLflow's client, from a
local folder store.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from cxr.artifacts import RunLayout
from cxr.config import AugmentConfig, TrainConfig
from cxr.errors import UserError
from cxr.train import tracking
from tests.cli import assert_one_line_error, run_job
from tests.conftest import REPO

EPOCH_TAGS = {"loss", "accuracy", "auc", "precision", "recall", "val_loss", "val_accuracy", "val_auc",
              "val_precision", "val_recall", "learning_rate", "images_per_s", "seconds"}


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard's scalar dashboard shows of a run folder: per tag, (step, value) in order."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer()
    multiplexer.AddRun(str(folder))
    multiplexer.Reload()
    (run, tags), = multiplexer.PluginRunToTagToContent("scalars").items()
    return {tag: [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in multiplexer.Tensors(run, tag)]
            for tag in tags}


def mlflow_runs(uri: str, experiment: str) -> list:
    import mlflow

    with tracking._environment(tracking.FILE_STORE_ENVIRONMENT):
        return mlflow.MlflowClient(uri).search_runs(
            [mlflow.MlflowClient(uri).get_experiment_by_name(experiment).experiment_id])


def metric_steps(uri: str, run, name: str) -> list[tuple[int, float]]:
    import mlflow

    with tracking._environment(tracking.FILE_STORE_ENVIRONMENT):
        return [(m.step, m.value) for m in mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, name)]


def row(epoch: int, loss: float, attempt: int = 0) -> dict:
    return {"epoch": epoch, "loss": loss, "val_loss": loss + 0.1, "learning_rate": 0.001, "seconds": 2.0,
            "images_per_s": 120.0, "attempt": attempt}


# ---------------------------------------------------------------- pieces


def test_an_epochs_scalars_are_its_measurements_by_their_history_names():
    assert tracking.epoch_scalars({"epoch": 3, "attempt": 1, "loss": 0.5, "val_auc": 0.9, "learning_rate": 1e-3,
                                   "images_per_s": 250, "stopped_early": True, "note": "x",
                                   "val_loss": float("nan")}) == {
        "loss": 0.5, "val_auc": 0.9, "learning_rate": 1e-3, "images_per_s": 250.0}


@pytest.mark.parametrize("uri, shown", [
    ("http://alice:hunter2@mlflow.example:5000", "http://***@mlflow.example:5000"),
    ("https://dapi123secret@mlflow.example", "https://***@mlflow.example"),
    ("postgresql://alice:hunter2@db/mlflow", "postgresql://***@db/mlflow"),
    ("https://mlflow.example/?token=hunter2", "https://mlflow.example/"),
])
def test_a_tracking_uri_with_credentials_is_refused_without_showing_them(uri, shown):
    with pytest.raises(UserError) as refused:
        tracking.check_mlflow(uri)
    message = str(refused.value)
    assert message.startswith(f"--mlflow {shown}: a tracking URI must not hold credentials")
    assert "MLFLOW_TRACKING_TOKEN" in message and "hunter2" not in message and "dapi123" not in message


def test_an_unreachable_tracking_server_is_one_line_at_once():
    import time

    started = time.monotonic()
    with pytest.raises(UserError, match=r"^--mlflow http://127\.0\.0\.1:9: cannot use this MLflow tracking store "
                                        r"\(.*Connection refused"):
        tracking.check_mlflow("http://127.0.0.1:9")
    assert time.monotonic() - started < 15  # not MLflow's default retries, minutes long


def test_a_folder_store_is_made_absolute_and_credentials_travel_outside_the_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "hunter2")
    server = tracking.check_mlflow("mlruns")
    assert server.uri == f"file://{tmp_path}/mlruns" and (tmp_path / "mlruns").is_dir()
    assert dict(server.environment) == {"MLFLOW_TRACKING_TOKEN": "hunter2"} and "hunter2" not in repr(server)
    assert tracking.check_mlflow(None) is None


def test_without_mlflow_nothing_of_mlflow_is_imported():
    # The jobs' modules, a run's tracking set up and checked: MLflow stays out of the process.
    code = ("import sys; import cxr.train.job, cxr.tune.job; from cxr.train import tracking; "
            "from cxr.artifacts import RunLayout; tracking.check_mlflow(None); "
            "tracking.for_run(RunLayout.at('/tmp/run'), 'run', None); "
            "print(sorted(m for m in sys.modules if 'mlflow' in m.lower()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_events_on_s3_are_copied_whole_every_epoch_and_a_restart_adds_a_file(s3_env, s3_bucket, s3_client, tmp_path):
    run = RunLayout.at(f"s3://{s3_bucket}/runs/r")
    run_tracking = tracking.for_run(run, "r", None)
    with tracking.opened(run_tracking, []) as writer:
        writer.write(row(0, 0.9))
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/r/tensorboard/")["Contents"]]
        assert len(keys) == 1 and keys[0].split("/")[-1].startswith("events.out.tfevents.")  # there after epoch 1
        writer.write(row(1, 0.7))
    with tracking.opened(run_tracking, []) as writer:  # the run resumed
        writer.write(row(2, 0.5, attempt=1))
    for obj in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/r/tensorboard/")["Contents"]:
        local = tmp_path / "tensorboard" / obj["Key"].split("/")[-1]
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(s3_client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read())
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2
    shown = scalars(tmp_path / "tensorboard")
    assert shown["loss"] == [(0, pytest.approx(0.9)), (1, pytest.approx(0.7)), (2, pytest.approx(0.5))]
    assert set(shown) == {"loss", "val_loss", "learning_rate", "seconds", "images_per_s"}


def test_a_resumed_run_carries_on_with_its_mlflow_run_and_a_late_one_gets_its_history(tmp_path):
    server = tracking.check_mlflow(str(tmp_path / "mlruns"))
    first = dataclasses.replace(tracking.for_run(RunLayout.at(str(tmp_path / "a")), "a", server),
                                params={"learning_rate": 0.001}, key=tracking.run_key(str(tmp_path / "a"), "t0"))
    with tracking.opened(first, []) as writer:
        writer.write(row(0, 0.9))
    with tracking.opened(first, [row(0, 0.9)]) as writer:
        writer.write(row(1, 0.7, attempt=1))
        writer.failed = True  # a non-finite loss stopped it
    # Another run, resumed with --mlflow given for the first time: its earlier epochs too.
    late = dataclasses.replace(first, run_uri=str(tmp_path / "b"), run_name="b",
                               key=tracking.run_key(str(tmp_path / "b"), "t0"))
    with tracking.opened(late, [row(0, 0.8)]) as writer:
        writer.write(row(1, 0.6, attempt=1))
    runs = {run.info.run_name: run for run in mlflow_runs(server.uri, "cxr")}
    assert sorted(runs) == ["a", "b"]
    assert runs["a"].data.params == {"learning_rate": "0.001"} and runs["a"].info.status == "FAILED"
    assert runs["a"].data.tags["cxr.run"] == str(tmp_path / "a")
    assert metric_steps(server.uri, runs["a"], "loss") == [(0, 0.9), (1, 0.7)]
    assert metric_steps(server.uri, runs["b"], "loss") == [(0, 0.8), (1, 0.6)]
    assert runs["b"].info.status == "FINISHED"


# ---------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_run_writes_its_epochs_to_tensorboard_and_to_mlflow(ray_session, tiny_shards, tmp_path):
    # (A run that resumes after a failure: tests/test_train_job.py, the drill.)
    from cxr.train.job import format_summary, run_training

    mlruns = str(tmp_path / "mlruns")
    config = TrainConfig(data=tiny_shards, storage=str(tmp_path / "runs"), name="tracked", epochs=2, batch_size=16,
                         augment=AugmentConfig(0, 0, 0), mlflow=mlruns)
    summary = run_training(config)
    run = tmp_path / "runs" / "tracked"

    shown = scalars(run / "tensorboard")
    assert set(shown) == EPOCH_TAGS
    assert [step for step, _ in shown["val_loss"]] == [0, 1]
    history = (run / "model" / "history.csv").read_text().splitlines()
    columns = history[0].split(",")
    for tag in ("val_loss", "learning_rate", "images_per_s"):
        assert [value for _, value in shown[tag]] == pytest.approx(
            [float(line.split(",")[columns.index(tag)]) for line in history[1:]], rel=1e-5)

    (mlflow_run,) = mlflow_runs(f"file://{mlruns}", "cxr")
    assert mlflow_run.info.run_name == "tracked" and mlflow_run.info.status == "FINISHED"
    params = mlflow_run.data.params
    assert params["learning_rate"] == str(config.learning_rate) and params["model"] == config.model
    assert "workers" not in params and "mlflow" not in params  # how it ran is not what it is
    assert [step for step, _ in metric_steps(f"file://{mlruns}", mlflow_run, "val_auc")] == [0, 1]
    assert set(mlflow_run.data.metrics) == EPOCH_TAGS

    lines = format_summary(summary).splitlines()
    assert f"  TensorBoard events: {run / 'tensorboard'}" in lines
    assert f"  MLflow: run tracked in experiment cxr at file://{mlruns}" in lines


@pytest.mark.slow
def test_the_job_refuses_a_password_in_mlflow_before_it_writes_anything(tiny_shards, tmp_path):
    result = run_job("train", "--data", tiny_shards, "--storage", str(tmp_path / "runs"), "--name", "r",
                     "--mlflow", "https://alice:hunter2@mlflow.example")
    assert_one_line_error(result, "--mlflow https://***@mlflow.example: a tracking URI must not hold credentials")
    assert "hunter2" not in result.stdout + result.stderr
    assert not (tmp_path / "runs" / "r").exists()
