"""The tuning job end to end, as a user runs it, on its own local Ray: three trials of 2 epochs
on 64 px synthetic shards (the session's), one sweep for the whole story: the scheduler stops
a trial that cannot learn; Ctrl-C; other settings refused; the same command resumes without
training the ended trials again; every trial is in the table; the best trial is exported as
a run that jobs/evaluate.py takes; a finished sweep's rerun trains nothing.

Each sweep runs in a subprocess with its own Ray (started with the dashboard, whose State API
Ray Train's placement-group cleaner needs once Ray Tune stops a trial), not on the tests' Ray.
The evaluation of the best trial runs on the tests' Ray: what it checks is the exported run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from tests.cli import assert_one_line_error, library_noise, run_job
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Three learning rates, one far too high: its predictions saturate in the first epoch, so its
# validation loss is the worse. The seeded random searcher draws 0.0002 for trial 1, the bad
# one for trial 2 and 0.0003 for trial 3 (the options' order decides which value an index
# is): the scheduler (ASHA after epoch 1, keeping the better half of those that got there)
# stops trial 2. Ctrl-C then leaves trial 3 to the resumed sweep (Ray Tune does not save
# ASHA's state, so the scheduler could not stop a trial of the resumed part: cxr.tune.search).
# (A learning rate of almost 0 is no such trial: batch normalization's moving statistics
# still adapt, and its validation loss after an epoch was the lower.)
SPACE = """\
learning_rate: {choice: [0.0003, 0.05, 0.0002]}
batch_size: 16
augment: {uniform: [0.0, 1.0]}
"""
SWEEP_SECONDS = 900


def sweep_args(shards: str, storage: str, space: str, *extra: str) -> list[str]:
    return ["--data", shards, "--storage", storage, "--name", "sweep", "--space", space, "--epochs", "2",
            "--grace-period", "1", "--reduction-factor", "2", "--max-concurrent", "1", *extra]


def run_tune(*args: str) -> subprocess.CompletedProcess:
    return run_job("tune", *args, timeout=SWEEP_SECONDS)


def trials_table(sweep) -> list[dict]:
    with open(sweep / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def interrupt_after(command: list[str], trial: str) -> list[str]:
    """Run the sweep and press Ctrl-C once `trial` ("2/3") has ended; the lines it printed."""
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune.py"), *command], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        for line in job.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(f"tune: trial {trial} "):
                job.send_signal(signal.SIGINT)
                break
        _, stderr = job.communicate(timeout=SWEEP_SECONDS)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr[-3000:]
    # Ray Tune's one warning there stays: "Stop signal received ... Press CTRL+C ... to skip"
    # (its last checkpoint of the sweep) answers the person who pressed it.
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "PlacementGroupCleaner" not in stderr
    return lines


def test_a_sweep_stops_a_poor_trial_resumes_and_exports_the_best_as_a_run_evaluate_takes(
        ray_session, tiny_shards, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    mlruns = tmp_path / "mlruns"
    command = sweep_args(tiny_shards, str(tmp_path / "runs"), str(space), "--trials", "3", "--mlflow", str(mlruns))
    sweep = tmp_path / "runs" / "sweep"

    # A line per ended trial, with how it ended; Ctrl-C once the scheduler has stopped trial 2.
    lines = interrupt_after(command, "2/3")
    ended = [line for line in lines if line.startswith("tune: trial ")]
    assert [line.split(" ")[2] for line in ended] == ["1/3", "2/3"], lines
    assert ended[0].startswith("tune: trial 1/3 finished after 2 epoch(s)"), ended
    assert ended[1].startswith("tune: trial 2/3 stopped by the scheduler after 1 epoch(s)"), ended
    # What trials 1 and 2 left.
    runs = sorted((sweep / "trials").iterdir())[:2]
    before = {run.name: sorted(str(path.relative_to(run)) for path in run.rglob("*")) for run in runs}

    # Other settings are refused, in one line.
    assert_one_line_error(run_tune(*command, "--patience", "3"),
                          "the sweep was started with --patience 10, not 3; resume it with --patience 10")
    assert_one_line_error(run_tune(*command, "--trials", "4"), "the sweep was started with --trials 3, not 4")

    # The same command resumes it: only trial 3 runs; the ended trials are not trained again.
    result = run_tune(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    noise = library_noise(lines + (result.stdout + result.stderr).splitlines())
    assert not noise, "\n".join(f"{name}: {line}" for name, line in noise.items())
    assert [line.split(" ")[2] for line in result.stdout.splitlines() if line.startswith("tune: trial ")] == ["3/3"]
    assert f"  TensorBoard events: {sweep / 'tensorboard'}" in result.stdout.splitlines()
    assert f"  MLflow: a run per trial in experiment sweep at file://{mlruns}" in result.stdout.splitlines()
    for name, files in before.items():  # no new checkpoint, no second start
        assert sorted(str(path.relative_to(sweep / "trials" / name)) for path in (sweep / "trials" / name).rglob("*")) \
            == files
        assert len(json.loads((sweep / "trials" / name / "run.json").read_text())["starts"]) == 1

    rows = trials_table(sweep)
    assert [row["trial"] for row in rows] == ["1", "2", "3"]
    assert [row["learning_rate"] for row in rows] == ["0.0002", "0.05", "0.0003"]
    for row in rows:
        assert row["status"] in ("finished", "early-stopped", "stopped by the scheduler"), row
        assert 1 <= int(row["epochs"]) <= 2 and row["best_val_loss"] and row["best_val_auc"]
        assert (row["stopped_by_scheduler"] == "True") == (int(row["epochs"]) == 1)
        history = sweep / "trials" / row["trial_id"] / "model" / "history.csv"
        if history.is_file():  # exported: every epoch trained once, trial 3's across the interruption
            epochs = [line.split(",")[0] for line in history.read_text().splitlines()[1:]]
            assert len(epochs) == len(set(epochs)) == int(row["epochs"]), row
    assert rows[1]["stopped_by_scheduler"] == "True"
    # Tracked: a TensorBoard run per trial beside the others', an MLflow run per trial in the
    # sweep's experiment; each with every epoch the trial kept, once (trial 3 across Ctrl-C).
    from tests.test_tracking import metric_steps, mlflow_runs, scalars

    assert sorted(path.name for path in (sweep / "tensorboard").iterdir()) == sorted(row["trial_id"] for row in rows)
    tracked = {run.info.run_name: run for run in mlflow_runs(f"file://{mlruns}", "sweep")}
    assert sorted(tracked) == sorted(row["trial_id"] for row in rows)
    for row in rows:
        # Every epoch the trial kept, once and in order. A trial the scheduler stops may keep one
        # epoch more than Ray Tune counted for it: Ray Train hands a report on to Tune while the
        # trial goes on training, so the decision can come after the next epoch is kept.
        steps = [step for step, _ in scalars(sweep / "tensorboard" / row["trial_id"])["val_loss"]]
        assert steps == list(range(len(steps))) and int(row["epochs"]) <= len(steps) <= 2, row
        assert [step for step, _ in metric_steps(f"file://{mlruns}", tracked[row["trial_id"]], "val_loss")] == steps
        assert tracked[row["trial_id"]].data.params["learning_rate"] == row["learning_rate"]
    # The best is chosen on validation loss (the default --metric), among all trials.
    best_row = min(rows, key=lambda row: float(row["score"]))
    assert float(best_row["learning_rate"]) != 0.05
    assert "| trial | status | epochs |" in (sweep / "trials.md").read_text()
    assert Image.open(sweep / "trials_val_auc.png").format == "PNG"

    # The best trial as an ordinary run: run.json and model/ as the training job writes them.
    best = sweep / "best"
    training = json.loads((best / "model" / "training.json").read_text())
    assert training["sweep"]["trial"] == best_row["trial_id"]
    assert training["config"]["learning_rate"] == float(best_row["learning_rate"])
    for name in ("model.keras", "manifest.json", "history.csv", "learning_curve.png"):
        assert (best / "model" / name).is_file(), name
    assert json.loads((best / "run.json").read_text())["config"]["name"] == best_row["trial_id"]
    evaluated = run_job("evaluate", "--run", str(best), "--resamples", "100", "--gradcam-examples", "0",
                        env={"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address})
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (best / "report" / "report.json").is_file()

    # The same command again: the sweep is finished, nothing is trained, the table stays.
    again = run_tune(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [line for line in again.stdout.splitlines() if line.startswith("tune: trial ")]
    assert trials_table(sweep) == rows


def test_bad_input_fails_in_one_line_before_any_trial(tiny_shards, tmp_path):
    shards, storage = tiny_shards, str(tmp_path / "runs")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_tune("--data", str(tmp_path / "empty"), "--storage", storage), "no manifest.json")
    assert_one_line_error(run_tune(*sweep_args(shards, storage, str(space), "--trials", "0")),
                          "--trials must be at least 1, got 0")
    wide = tmp_path / "wide.json"
    wide.write_text('{"dropout": {"uniform": [0.0, 1.0]}}')
    assert_one_line_error(run_tune(*sweep_args(shards, storage, str(wide))),
                          "dropout 1.0 cannot be trained: --dropout must be in [0, 1)")
    # More than this machine holds: what the training job refuses.
    assert_one_line_error(run_tune(*sweep_args(shards, storage, str(space), "--trials", "64", "--max-concurrent",
                                               "64", "--cpus-per-worker", "1")),
                          "--workers 1 x --max-concurrent 64 x 1 CPUs needs 64 CPUs, found ")
    if importlib.util.find_spec("optuna") is None:
        assert_one_line_error(run_tune(*sweep_args(shards, storage, str(space), "--searcher", "optuna")),
                              "--searcher optuna needs the optuna package")
    assert not os.path.exists(os.path.join(storage, "sweep", "trials"))
