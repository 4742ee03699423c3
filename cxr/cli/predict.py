"""`cxr predict` and jobs/predict.py: the prediction job (its options are PredictConfig's settings)."""

from __future__ import annotations

from cxr.cli.job import Job
from cxr.config import PredictConfig


def predict(config: PredictConfig) -> str:
    # Ray, pyarrow and the scoring modules load here: --help and bad settings answer before that.
    from cxr.predict.job import format_summary, run_predict

    return format_summary(run_predict(config))


JOB = Job("predict", "Batch inference on raw chest X-rays with Ray Data.", PredictConfig, predict)
