"""`cxr evaluate` and jobs/evaluate.py: the evaluation job (its options are EvaluateConfig's settings)."""

from __future__ import annotations

from cxr.cli.job import Job
from cxr.config import EvaluateConfig


def evaluate(config: EvaluateConfig) -> str:
    # Ray, pyarrow and the scoring modules load here: --help and bad settings answer before that.
    from cxr.evaluate.job import format_summary, run_evaluation

    return format_summary(run_evaluation(config))


JOB = Job("evaluate", "Evaluate a trained chest X-ray classifier and write its report.", EvaluateConfig, evaluate)
