"""`cxr train` and jobs/train.py: the training job (its options are TrainConfig's settings)."""

from __future__ import annotations

from cxr.cli.job import Job
from cxr.config import TrainConfig


def train(config: TrainConfig) -> str:
    # Ray Train and pyarrow load here: --help and bad settings answer before that.
    from cxr.train.job import format_summary, run_training

    return format_summary(run_training(config))


JOB = Job("train", "Train a chest X-ray classifier with Ray Train and Keras.", TrainConfig, train)
