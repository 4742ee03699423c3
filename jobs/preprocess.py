"""Chest X-rays to Parquet shards: `python jobs/preprocess.py --help`.

Locally: `python jobs/preprocess.py` (synthetic data, local Ray, ./outputs/shards/synthetic).
From Kaggle: `python jobs/preprocess.py --source kaggle --raw-cache raw/ --output shards/covid`.
On a cluster: `ray job submit --working-dir . -- python jobs/preprocess.py --source s3://... --output s3://...`.

The same job as `cxr preprocess ARGS` where cxr is installed (`pip install .`; on a cluster whose
image has it, `ray job submit -- cxr preprocess ...`). Its options live in cxr/cli/preprocess.py.
"""

import os
import sys

# `python jobs/preprocess.py` puts jobs/ on sys.path, not the repository; make `cxr` importable
# the same way whether or not the package is installed (a Ray job's working dir is not).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.cli import preprocess  # noqa: E402
from cxr.runtime import run_job  # noqa: E402

if __name__ == "__main__":
    run_job(preprocess.JOB.main)
