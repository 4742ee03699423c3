"""The scoring jobs' configs: EvaluateConfig and PredictConfig."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cxr.config.checks import check, check_seed, check_wait_timeout, wait_timeout_setting
from cxr.options import setting


@dataclass(frozen=True)
class PredictConfig:
    model: str = setting(flag="--model", help="an exported model folder: <storage>/<name>/model")
    input: str = setting(flag="--input", help="a folder, s3:// prefix or .zip of images (PNG, JPEG, DICOM) at any "
                                              "depth")
    output: str = setting(flag="--output", defines_run=False,
                          help="folder or s3:// prefix for predictions.parquet, predictions.csv and summary.json")
    # The positive class's probability at or above which it is predicted (2 classes);
    # None: the most probable class.
    threshold: float | None = setting(None, flag="--threshold",
                                      help="predict the positive class (COVID) at or above this probability "
                                           "(default: the most probable class); the evaluation report states the "
                                           "threshold it chose on the validation split")
    gpu: bool = setting(False, flag="--gpu", defines_run=False, help="one GPU per model actor")
    actors: int | None = setting(None, flag="--actors", defines_run=False,
                                 help="model actors (default: one per GPU, or half the CPUs, at most 4)")
    overwrite: bool = setting(False, flag="--overwrite", defines_run=False, help="replace existing predictions")
    wait_timeout: float = wait_timeout_setting("model actors")

    def __post_init__(self) -> None:
        check(self, "threshold", self.threshold is None or 0 < self.threshold < 1, "must be in (0, 1)")
        check(self, "actors", self.actors is None or self.actors >= 1, "must be at least 1")
        check_wait_timeout(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvaluateConfig:
    run: str = setting(flag="--run", help="a training run folder <storage>/<name> (or its model/ folder)")
    data: str | None = setting(None, flag="--data",
                               help="evaluate on these shards (a preprocess job's output) or on a raw "
                                    "class-per-folder image tree, instead of the training data's test split")
    split: str = setting("test", flag="--split", choices=("train", "val", "test"), help="the split of shards to evaluate")
    output: str | None = setting(None, flag="--output", defines_run=False, help="report folder (default: <run>/report)")
    resamples: int = setting(1000, flag="--resamples", help="bootstrap resamples for the intervals")
    gradcam_examples: int = setting(4, flag="--gradcam-examples",
                                    help="Grad-CAM examples per group (true/false positives, false negatives)")
    gpu: bool = setting(False, flag="--gpu", defines_run=False, help="one GPU per model actor")
    actors: int | None = setting(None, flag="--actors", defines_run=False,
                                 help="model actors (default: one per GPU, or half the CPUs, at most 4)")
    seed: int = setting(0, flag="--seed", help="of the bootstrap")
    wait_timeout: float = wait_timeout_setting("model actors")

    def __post_init__(self) -> None:
        check(self, "split", self.split in ("train", "val", "test"), "must be train, val or test")
        check(self, "resamples", self.resamples >= 100, "must be at least 100")
        check(self, "gradcam_examples", self.gradcam_examples >= 0, "must not be negative")
        check(self, "actors", self.actors is None or self.actors >= 1, "must be at least 1")
        check_seed(self)
        check_wait_timeout(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
