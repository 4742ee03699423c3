"""What a job's Ray workers are set up with when the job is not --verbose."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

# A destructor that raises while the process collects it: CPython prints "Exception ignored
# in ..." and a traceback, as Ray Tune's trial actors did while shutting down.
RAISES_WHEN_COLLECTED = textwrap.dedent("""
    import gc, sys
    {setup}
    class Finished:
        def __del__(self):
            raise RuntimeError("raised while collected")
    Finished()
    gc.collect()
    print("done")
""")


def run_worker_like(setup: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RAISES_WHEN_COLLECTED.format(setup=setup)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_quiet_workers_shutdown_errors_stay_out_of_the_output():
    plain = run_worker_like("")
    assert "Exception ignored in" in plain.stderr and "Traceback" in plain.stderr  # the test can fail
    quiet = run_worker_like("from cxr import runtime; runtime.setup_worker()")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "done"
    assert "Exception ignored" not in quiet.stderr and "Traceback" not in quiet.stderr, quiet.stderr
