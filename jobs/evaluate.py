"""Evaluate an exported model and write its report: `python jobs/evaluate.py --help`.

Locally: `python jobs/evaluate.py --run outputs/runs/scratch_cnn` (the test split of the
data it was trained on; the report goes to outputs/runs/scratch_cnn/report/).
On a cluster: `ray job submit --working-dir . -- python jobs/evaluate.py --run s3://.../runs/exp1`.

The same job as `cxr evaluate ARGS` where cxr is installed (`pip install .`; on a cluster whose
image has it, `ray job submit -- cxr evaluate ...`). Its options live in cxr/cli/evaluate.py.
"""

import os
import sys

# `python jobs/evaluate.py` puts jobs/ on sys.path, not the repository (see jobs/preprocess.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.cli import evaluate  # noqa: E402
from cxr.runtime import run_job  # noqa: E402

if __name__ == "__main__":
    run_job(evaluate.JOB.main)
