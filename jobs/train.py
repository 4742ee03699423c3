"""Train the scratch CNN or the VGG19 head on preprocessed shards: `python jobs/train.py --help`.

Locally: `python jobs/train.py` (the scratch CNN on ./outputs/shards/synthetic, local Ray).
On a cluster: `ray job submit --working-dir . -- python jobs/train.py --data s3://... --workers 4 --gpu
--storage s3://.../runs --name exp1`. Rerunning the same command resumes from the latest checkpoint.

The same job as `cxr train ARGS` where cxr is installed (`pip install .`; on a cluster whose
image has it, `ray job submit -- cxr train ...`). Its options live in cxr/cli/train.py.
"""

import os
import sys

# `python jobs/train.py` puts jobs/ on sys.path, not the repository (see jobs/preprocess.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.cli import train  # noqa: E402
from cxr.runtime import run_job  # noqa: E402

if __name__ == "__main__":
    run_job(train.JOB.main)
