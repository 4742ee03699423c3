"""Score raw chest X-rays with an exported model: `python jobs/predict.py --help`.

Locally: `python jobs/predict.py --model outputs/runs/scratch_cnn/model --input my_images/ --output preds/`.
On a cluster: `ray job submit --working-dir . -- python jobs/predict.py --model s3://.../model
--input s3://.../new-images/ --output s3://.../predictions/ --gpu`.

The same job as `cxr predict ARGS` where cxr is installed (`pip install .`; on a cluster whose
image has it, `ray job submit -- cxr predict ...`). Its options live in cxr/cli/predict.py.
"""

import os
import sys

# `python jobs/predict.py` puts jobs/ on sys.path, not the repository (see jobs/preprocess.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.cli import predict  # noqa: E402
from cxr.runtime import run_job  # noqa: E402

if __name__ == "__main__":
    run_job(predict.JOB.main)
