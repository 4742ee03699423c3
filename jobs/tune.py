"""Search the training job's hyperparameters with Ray Tune: `python jobs/tune.py --help`.

Locally: `python jobs/tune.py --data SHARDS --model scratch_cnn --trials 16 --epochs 30 --storage runs/
--name sweep1`. On a cluster: `ray job submit --working-dir . -- python jobs/tune.py --data s3://...
--trials 64 --gpu --storage s3://.../runs --name sweep1`. Rerunning the same command resumes the
sweep. The best trial is an ordinary run: `python jobs/evaluate.py --run runs/sweep1/best`.

Every option of jobs/train.py applies to every trial; the search space (the default one, or
--space FILE) replaces the settings it names.

The same job as `cxr tune ARGS` where cxr is installed (`pip install .`; on a cluster whose
image has it, `ray job submit -- cxr tune ...`). Its options live in cxr/cli/tune.py.
"""

import os
import sys

# `python jobs/tune.py` puts jobs/ on sys.path, not the repository (see jobs/preprocess.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.cli import tune  # noqa: E402
from cxr.runtime import run_job  # noqa: E402

if __name__ == "__main__":
    run_job(tune.JOB.main)
