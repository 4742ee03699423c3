"""`cxr tune` and jobs/tune.py: the tuning job (its options are TuneConfig's settings: the
training job's and the search's)."""

from __future__ import annotations

import dataclasses

from cxr.cli.job import Job
from cxr.config import TuneConfig


def tune(config: TuneConfig) -> str:
    # Ray Tune, Ray Train and pyarrow load here.
    from cxr.tune.job import format_summary, run_tuning

    return format_summary(run_tuning(config))


def with_space_file(config: TuneConfig) -> TuneConfig:
    """The config with the space --space names, read before anything starts."""
    if config.space_file is None:
        return config
    from cxr.tune.space import load_space  # pyarrow, for s3://

    return dataclasses.replace(config, space=load_space(config.space_file))


def sweep_settings(record: dict) -> dict:
    """A --config file's settings: a sweep's sweep.json as TuneConfig's, any other file as it is."""
    if not {"search", "train"} <= set(record) or not isinstance(record.get("search"), dict):
        return record
    from cxr.tune.space import space_parameters

    search = record["search"]
    parameters = space_parameters(search.get("space") or {}, "the recorded search space")
    drawn = {parameter.name for parameter in parameters}
    # A drawn setting is each trial's own: sweep.json keeps none for it.
    train = {key: value for key, value in record["train"].get("config", {}).items() if key not in drawn}
    kept = ("trials", "metric", "grace_period", "reduction_factor", "searcher", "max_concurrent")
    return {"train": train, "space": [dataclasses.asdict(parameter) for parameter in parameters],
            **{key: search[key] for key in kept if key in search}}


JOB = Job("tune", "Search a chest X-ray classifier's hyperparameters with Ray Tune: each trial is a training run "
                  "with these options, the search space replacing the settings it names.", TuneConfig, tune,
          from_record=sweep_settings, finish=with_space_file, uses_gpu=lambda config: config.train.gpu)
