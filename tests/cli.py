"""Running a job the way a user does, as a subprocess, and checking what it prints and how it fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

# Not resolved: the venv's python is a link to the base interpreter, the script is the venv's.
CXR_COMMAND = Path(sys.executable).parent / "cxr"


def run_job(job: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python jobs/<job>.py ARGS` in this environment plus `env` (a value of None unsets)."""
    return run_command([sys.executable, str(REPO / "jobs" / f"{job}.py"), *args], env=env, timeout=timeout)


def run_cxr(*args: str, env: dict | None = None, timeout: float = 300,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`cxr ARGS`, the console script that installing the project put beside this Python, as run_job."""
    return run_command([str(CXR_COMMAND), *args], env=env, timeout=timeout, cwd=cwd)


def run_command(command: list[str], env: dict | None = None, timeout: float = 300,
                cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`command` in this environment plus `env` (a value of None unsets)."""
    environment = {name: value for name, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2 and the message on the last stderr line, with no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


# What Ray, Ray Data, Ray Train and TensorFlow printed into the jobs' output before issue 13:
# their internals, which a job without --verbose must not show.
NOISE = {
    "Ray Train's placement-group cleaner": r"PlacementGroupCleaner|Failed to query Ray Train Controller actor state",
    "TensorFlow's load notices": r"absl::InitializeLog|cudart_stub\.cc|Could not find cuda drivers",
    "TensorFlow's C++ notices": r"cpu_feature_guard|rebuild TensorFlow|oneDNN custom operations|cuInit",
    "TensorFlow's INFO": r"INFO:tensorflow|MirroredStrategy with",
    "Ray's token notice": r"Token authentication is (enabled|disabled) for this Ray cluster",
    "Ray Data's deprecated concurrency": r"argument ``concurrency`` is deprecated",
    "Ray Core on restartable actors": r"has constructor arguments in the object store",
    "the raylet's worker count": r"PYTHON worker processes have been started",
    "Ray Train's INFO": r"Reporting training result|Checkpoint successfully created|Requesting resources"
                        r"|training worker group|world_rank=",
    "tf_keras' legacy format": r"saving your model as an HDF5 file",
    "Ray Data's INFO and notices": r"Progress bars (for operators )?disabled|execution finished in|Data sink \S+ finished"
                                   r"|Running Dataset",
    "Ray Tune's experiment banner": r"Configuration for experiment|View detailed results here|tensorboard --logdir",
    "Ray's own log lines": r"\t(DEBUG|INFO|WARNING) \S+\.py:\d+ -- ",
    "output of Ray's processes": r"pid=\w+\)|\(raylet\)",
    "matplotlib's first-run notice": r"generated new fontManager",
    "Python warnings": r"\w+Warning: ",
    "tracebacks": r"Traceback \(most recent call last\)",
}


def library_noise(lines: list[str]) -> dict[str, str]:
    """Of NOISE, what `lines` show: its name and the first line that shows it."""
    found: dict[str, str] = {}
    for line in lines:
        for name, pattern in NOISE.items():
            if name not in found and re.search(pattern, line):
                found[name] = line
    return found
