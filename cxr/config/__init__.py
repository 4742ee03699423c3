"""Configuration of every job: frozen dataclasses, validated on construction, one module per job.

A config is plain data, and each of its fields is a setting (cxr.options): it carries its
flag, its help and whether it defines what the job makes or only how it executes. A job's
parser (cxr/cli/) is built from those fields, so are the flag names in the configs' errors
and the resume checks (cxr.train.settings). What a job made records its config (the
manifest holds the PreprocessConfig, run.json the TrainConfig, `to_dict`), and `--config`
reads such a record, or any YAML or JSON file of the same shape, back (cxr.options.from_mapping).

- preprocess.py: PreprocessConfig and its parts, the Kaggle source's constants;
- train.py: TrainConfig and AugmentConfig, the model names;
- tune.py: TuneConfig, SearchParameter and the default search space;
- scoring.py: EvaluateConfig and PredictConfig;
- checks.py: the one-line checks and the settings several jobs share.

Every name is importable from `cxr.config` as well, where the rest of the package takes it.
"""

from __future__ import annotations

from cxr.config.checks import (  # noqa: F401
    DEFAULT_WAIT_TIMEOUT, MAX_SEED, comma_list,
)
from cxr.config.preprocess import (  # noqa: F401
    MARKING_POLICIES, DEFAULT_MARKING_THRESHOLD, ClaheConfig, MarkingConfig, LungFocusConfig, split_ratios,
    SplitConfig, MAX_SYNTHETIC_SOURCES, SyntheticConfig, KAGGLE_SOURCE, KAGGLE_DEFAULT_DATASET,
    KAGGLE_DEFAULT_CLASSES, is_kaggle_source, class_list, UNKNOWN_POLICIES, CohortConfig, label_pairs,
    DownloadConfig, PreprocessConfig,
)
from cxr.config.train import (  # noqa: F401
    MODEL_NAMES, LR_SCHEDULES, check_model_name, APPEARANCE_PRESET, AugmentConfig, appearance_settings,
    no_geometric_augmentation, DEFAULT_APPEARANCE_STRENGTH, default_augmentation, parse_node_labels,
    TrainConfig,
)
from cxr.config.tune import (  # noqa: F401
    SEARCH_KINDS, TUNE_METRICS, SEARCHERS, SearchParameter, DEFAULT_SPACE, scaled_augmentation, TuneConfig,
)
from cxr.config.scoring import (  # noqa: F401
    PredictConfig, EvaluateConfig,
)

__all__ = [
    "DEFAULT_WAIT_TIMEOUT", "MAX_SEED", "comma_list", "MARKING_POLICIES", "DEFAULT_MARKING_THRESHOLD",
    "ClaheConfig", "MarkingConfig", "LungFocusConfig", "split_ratios", "SplitConfig", "MAX_SYNTHETIC_SOURCES",
    "SyntheticConfig", "KAGGLE_SOURCE", "KAGGLE_DEFAULT_DATASET", "KAGGLE_DEFAULT_CLASSES",
    "is_kaggle_source", "class_list", "UNKNOWN_POLICIES", "CohortConfig", "label_pairs", "DownloadConfig",
    "PreprocessConfig", "MODEL_NAMES", "LR_SCHEDULES", "check_model_name", "APPEARANCE_PRESET",
    "AugmentConfig", "appearance_settings", "no_geometric_augmentation", "DEFAULT_APPEARANCE_STRENGTH",
    "default_augmentation", "parse_node_labels", "TrainConfig", "SEARCH_KINDS", "TUNE_METRICS", "SEARCHERS",
    "SearchParameter", "DEFAULT_SPACE", "scaled_augmentation", "TuneConfig", "PredictConfig", "EvaluateConfig",
]
