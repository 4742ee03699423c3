"""Running a job the way a user does, as a subprocess, and checking how it fails."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def run_job(job: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2 and the message on the last stderr line, with no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
