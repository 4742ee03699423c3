"""What the jobs print, run as a user runs them: the run's story without the libraries'
internals; --verbose brings those back; a failure is still one line.

Each job starts its own local Ray, as in the quickstart: the environment is a user's
shell, without what this test session may have set for its own Ray.
"""

from __future__ import annotations

import re

import pytest

from tests.cli import NOISE, library_noise, run_job

pytestmark = pytest.mark.slow

# A user's shell: no cluster to join, and none of the settings the jobs choose themselves.
USER_SHELL = {name: None for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "TF_CPP_MIN_LOG_LEVEL", "RAY_DATA_LOG_LEVEL")}

# cxr.progress's heartbeat in a log: one line per stage every 30 s, so as many as the run
# takes seconds; the budget counts the rest.
PROGRESS_LINE = re.compile(r"^\w+: [\d,]+/[\d,]+ \w+ \(\d+%\)")
# Everything else a person reads in this run: 26 lines when written. The quickstart tells
# the same story with one more line per epoch, within about 40 lines.
STORY_BUDGET = 32


def lines_of(*results) -> list[str]:
    return [line for result in results for line in (result.stdout + result.stderr).splitlines()]


def fresh_machine(folder) -> dict:
    """A user's shell on a machine where matplotlib has not run yet: no font cache (its first run
    builds one, and says so at INFO)."""
    folder.mkdir()
    return {**USER_SHELL, "MPLCONFIGDIR": str(folder)}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> dict:
    """The quickstart's three jobs on a tiny synthetic set, each as its command line; the two that draw
    figures each on a fresh machine."""
    root = tmp_path_factory.mktemp("output")
    shards, runs = str(root / "shards"), root / "runs"
    results = [
        run_job("preprocess", "--synthetic-images", "80", "--image-size", "64", "--output", shards, env=USER_SHELL),
        run_job("train", "--data", shards, "--storage", str(runs), "--name", "tiny", "--epochs", "2",
                "--batch-size", "16", env=fresh_machine(root / "matplotlib-train")),
        run_job("evaluate", "--run", str(runs / "tiny"), "--resamples", "100", "--gradcam-examples", "1",
                env=fresh_machine(root / "matplotlib-evaluate")),
    ]
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"shards": shards, "run": runs / "tiny", "results": results}


def test_a_run_prints_its_story_not_the_libraries_internals(quickstart):
    lines = lines_of(*quickstart["results"])
    noise = library_noise(lines)
    assert not noise, "\n".join(f"{name}: {line}" for name, line in noise.items())
    text = "\n".join(lines)
    for told in ("shards written to", "classes: COVID (label 0), Normal (label 1)", "train: epoch 1/2: loss",
                 "train: epoch 2/2: loss", "model exported to",
                 "evaluated ", "report: "):
        assert told in text
    story = [line for line in lines if not PROGRESS_LINE.match(line)]
    assert len(story) <= STORY_BUDGET, "\n".join(story)


def test_verbose_brings_the_libraries_back(quickstart, tmp_path):
    result = run_job("evaluate", "--run", str(quickstart["run"]), "--output", str(tmp_path / "report"),
                     "--resamples", "100", "--gradcam-examples", "1", "--verbose", env=USER_SHELL)
    assert result.returncode == 0, result.stderr[-4000:]
    text = "\n".join(lines_of(result))
    assert " DEBUG " in text  # our own and the libraries' debug logging
    assert re.search(NOISE["TensorFlow's load notices"], text)  # in the driver and the model actors
    assert re.search(NOISE["Ray Data's INFO and notices"], text)
    assert re.search(r"pid=\d+\)", text)  # what Ray's worker processes print


def test_a_failure_is_one_line_before_and_after_ray_starts(quickstart, tmp_path):
    missing = run_job("train", "--data", str(tmp_path / "nowhere"), "--storage", str(tmp_path / "runs"),
                      env=USER_SHELL)
    # Ray is up when the cluster turns out too small for the request.
    too_big = run_job("train", "--data", quickstart["shards"], "--storage", str(tmp_path / "runs"),
                      "--workers", "2", "--cpus-per-worker", "1000", env=USER_SHELL)
    for result, message in ((missing, "no manifest.json"), (too_big, "needs 2000 CPUs")):
        assert result.returncode == 2
        lines = lines_of(result)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], "\n".join(lines)
