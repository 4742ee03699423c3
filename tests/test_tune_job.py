"""The tuning job end to end, as a user runs it, on its own local Ray: a few trials of 2 epochs
on 64 px synthetic shards; the scheduler stops a trial that cannot learn; the best trial is
exported as a run that jobs/evaluate.py takes; every trial is in the table; an interrupted
sweep resumes without training its finished trials again, and refuses other settings.

Each sweep runs in a subprocess with its own Ray (started with the dashboard, whose State API
Ray Train's placement-group cleaner needs once Ray Tune stops a trial), not on the tests' Ray.
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

from cxr.config import PreprocessConfig, SyntheticConfig
from cxr.preprocess.pipeline import run_preprocess
from tests.cli import assert_one_line_error, run_job
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Two learning rates, one far too high: its predictions saturate in the first epoch, so its
# validation loss is the worse. The seeded random searcher draws the good one for trials 1
# and 2 and the bad one for 3 and 4 (the options' order decides which value an index is): the
# scheduler (ASHA after epoch 1, keeping the better half of those that got there) stops
# trial 3. (A learning rate of almost 0 is no such trial: batch normalization's moving
# statistics still adapt, and its validation loss after an epoch was the lower.)
SPACE = """\
learning_rate: {choice: [0.05, 0.0003]}
batch_size: 16
augment: {uniform: [0.0, 1.0]}
"""
SWEEP_SECONDS = 900


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory) -> str:
    """A few hundred 64 px synthetic images, preprocessed once for this module."""
    output = str(tmp_path_factory.mktemp("tune") / "shards")
    run_preprocess(PreprocessConfig(output=output, image_size=64, synthetic=SyntheticConfig(images=240, size=160)))
    return output


def sweep_args(shards: str, storage: str, space: str, *extra: str) -> list[str]:
    return ["--data", shards, "--storage", storage, "--name", "sweep", "--space", space, "--epochs", "2",
            "--grace-period", "1", "--reduction-factor", "2", "--max-concurrent", "1", *extra]


def run_tune(*args: str) -> subprocess.CompletedProcess:
    return run_job("tune", *args, timeout=SWEEP_SECONDS)


def trials_table(sweep) -> list[dict]:
    with open(sweep / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_sweep_stops_a_poor_trial_and_exports_the_best_as_a_run_evaluate_takes(shards, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    command = sweep_args(shards, str(tmp_path / "runs"), str(space), "--trials", "4")
    result = run_tune(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    # A line per finished trial, with how it ended.
    numbers = sorted(line.split(" ")[2] for line in lines if line.startswith("tune: trial "))
    assert numbers == ["1/4", "2/4", "3/4", "4/4"]
    assert any("stopped by the scheduler after 1 epoch(s)" in line for line in lines)

    sweep = tmp_path / "runs" / "sweep"
    rows = trials_table(sweep)
    assert [row["trial"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["learning_rate"] for row in rows] == ["0.0003", "0.0003", "0.05", "0.05"]
    assert any(row["stopped_by_scheduler"] == "True" for row in rows)
    for row in rows:
        assert row["status"] in ("finished", "early-stopped", "stopped by the scheduler"), row
        assert 1 <= int(row["epochs"]) <= 2 and row["best_val_loss"] and row["best_val_auc"]
        assert (row["stopped_by_scheduler"] == "True") == (int(row["epochs"]) == 1)
    # The best is chosen on validation loss (the default --metric), among all trials.
    best_row = min(rows, key=lambda row: float(row["score"]))
    assert float(best_row["learning_rate"]) == 0.0003
    assert "| trial | status | epochs |" in (sweep / "trials.md").read_text()
    assert Image.open(sweep / "trials_val_auc.png").format == "PNG"

    # The best trial as an ordinary run: run.json and model/ as the training job writes them.
    best = sweep / "best"
    training = json.loads((best / "model" / "training.json").read_text())
    assert training["sweep"]["trial"] == best_row["trial_id"] and training["config"]["learning_rate"] == 0.0003
    for name in ("model.keras", "manifest.json", "history.csv", "learning_curve.png"):
        assert (best / "model" / name).is_file(), name
    assert json.loads((best / "run.json").read_text())["config"]["name"] == best_row["trial_id"]
    evaluated = run_job("evaluate", "--run", str(best), "--resamples", "100", "--gradcam-examples", "0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (best / "report" / "report.json").is_file()

    # The same command again: the sweep is finished, nothing is trained, the best stays.
    again = run_tune(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [line for line in again.stdout.splitlines() if line.startswith("tune: trial ")]
    assert trials_table(sweep) == rows


def test_an_interrupted_sweep_resumes_and_refuses_other_settings(shards, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {loguniform: [1.0e-4, 1.0e-3]}\nbatch_size: 16\n")
    # No scheduler (grace period = epochs): every trial runs out, so what resumes is predictable.
    command = sweep_args(shards, str(tmp_path / "runs"), str(space), "--trials", "3", "--grace-period", "2")
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune.py"), *command], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in job.stdout:  # Ctrl-C once the first trial has finished
            if line.startswith("tune: trial 1/3 "):
                job.send_signal(signal.SIGINT)
                break
        _, stderr = job.communicate(timeout=SWEEP_SECONDS)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted"

    sweep = tmp_path / "runs" / "sweep"
    finished = [run for run in (sweep / "trials").iterdir() if (run / "model" / "history.csv").is_file()]
    assert finished, "the first trial's run was exported before the interrupt"
    before = {run.name: (run / "model" / "history.csv").read_text() for run in finished}

    # Another setting that changes what every trial trains, or another search: refused, in one line.
    assert_one_line_error(run_tune(*command, "--patience", "3"),
                          "the sweep was started with --patience 10, not 3; resume it with --patience 10")
    assert_one_line_error(run_tune(*command, "--trials", "4"), "the sweep was started with --trials 3, not 4")

    resumed = run_tune(*command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = trials_table(sweep)
    assert len(rows) == 3 and all(row["status"] in ("finished", "early-stopped") for row in rows)
    # Finished trials were not trained again: their runs are as they were.
    for name, history in before.items():
        assert (sweep / "trials" / name / "model" / "history.csv").read_text() == history
        assert len(json.loads((sweep / "trials" / name / "run.json").read_text())["starts"]) == 1
    # A trial interrupted mid-run resumed from its checkpoint: no epoch trained twice.
    for run in (sweep / "trials").iterdir():
        epochs = [line.split(",")[0] for line in (run / "model" / "history.csv").read_text().splitlines()[1:]]
        assert len(epochs) == len(set(epochs)) == 2, run.name


def test_bad_input_fails_in_one_line_before_any_trial(shards, tmp_path):
    storage = str(tmp_path / "runs")
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
    # On this machine's 2 CPUs, with one kept for Ray Data: what the training job refuses.
    assert_one_line_error(run_tune(*sweep_args(shards, storage, str(space), "--max-concurrent", "3",
                                               "--cpus-per-worker", "1")),
                          "--workers 1 x --max-concurrent 3 x 1 CPUs needs 3 CPUs, found 2 on the cluster")
    if importlib.util.find_spec("optuna") is None:
        assert_one_line_error(run_tune(*sweep_args(shards, storage, str(space), "--searcher", "optuna")),
                              "--searcher optuna needs the optuna package")
    assert not os.path.exists(os.path.join(storage, "sweep", "trials"))
