"""`cxr preprocess` and jobs/preprocess.py: the preprocessing job (its options are
PreprocessConfig's settings)."""

from __future__ import annotations

from cxr.cli.job import Job
from cxr.config import PreprocessConfig


def preprocess(config: PreprocessConfig) -> str:
    # Ray, pyarrow and scikit-image load here: --help and bad settings answer before that.
    from cxr.artifacts import Manifest
    from cxr.preprocess.manifest import format_summary
    from cxr.preprocess.pipeline import run_preprocess

    return format_summary(Manifest.from_dict(run_preprocess(config)), config.output)


JOB = Job("preprocess", "Decode, filter, CLAHE-normalise and shard chest X-rays with Ray Data.", PreprocessConfig,
          preprocess)
