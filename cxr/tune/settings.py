"""What defines a sweep, recorded when it starts and checked every time it resumes.

Rerunning a sweep's command resumes it (cxr.tune.job): Ray Tune restores its trials,
searcher and scheduler as they were, and each unfinished trial's run resumes from its
checkpoint. Resumed with other settings, the sweep would mix trials of two searches
(Ray Tune would even ignore a new space or trial count, silently). So `sweep.json` records,
before the first trial, the settings every trial shares (the training job's run record:
cxr.train.settings, so the same settings are refused or allowed as for a run) and the
search's own: trials, space, metric, scheduler, searcher, concurrency. A resume with any of
those changed is refused in one line, before any trial restarts; how the trials execute
(workers, GPUs, CPUs, failures tolerated, node labels, where the data is read from) may
change, and the log says what changed.
"""

from __future__ import annotations

import json

from cxr import options, storage
from cxr.artifacts import SWEEP_SETTINGS_FILE, SweepLayout
from cxr.config import SearchParameter, TuneConfig
from cxr.errors import UserError
from cxr.train import settings as train_settings
from cxr.tune.space import describe, space_record

# The search's settings: Ray Tune keeps them with the sweep, so none may change on resume
# (the space as read: a file named by --space may have changed since).
SEARCH_SETTINGS = tuple(leaf.name for leaf in options.leaves(TuneConfig)
                        if leaf.option.defines_run and not leaf.name.startswith("train.") and leaf.name != "space_file")


def sweep_record(config: TuneConfig, train_record: dict, concurrent: int) -> dict:
    """sweep.json's content for a sweep starting (or resuming) now, as JSON gives it back.

    `train_record` is cxr.train.settings.run_record of the settings the trials share;
    `concurrent` the number of trials at once chosen at the first start (--max-concurrent,
    or what the cluster held then), which a resume keeps as Ray Tune does.
    """
    # A setting the space draws is each trial's, not the command's: it has no say in a resume
    # (each trial's own run.json still holds what it drew).
    drawn = {parameter.name for parameter in config.space}
    train_record = {**train_record, "config": {key: None if key in drawn else value
                                               for key, value in train_record["config"].items()}}
    search = {"trials": config.trials, "space": space_record(config.space), "metric": config.metric,
              "grace_period": config.grace_period, "reduction_factor": config.reduction_factor,
              "searcher": config.searcher, "max_concurrent": config.max_concurrent, "concurrent": concurrent}
    return json.loads(json.dumps({"search": search, "train": train_record}))


def check_resume(sweep: SweepLayout, current: dict) -> tuple[dict, list[str]]:
    """Compare `current` (sweep_record) with the record of `sweep`, which is about to resume.

    Refuse, in one line, a changed setting; otherwise return the record to write (the first
    start's, with this start appended) and the allowed changes, described.
    """
    recorded = storage.read_json(sweep.settings)
    for key in SEARCH_SETTINGS:
        old, new = recorded["search"].get(key), current["search"].get(key)
        if old != new:
            raise UserError(f"{sweep.root.uri}: {_change(key, old, new)}; Ray Tune resumes a sweep with the "
                            f"search it started with, so resume it with {_fix(key, old)}, or start a new sweep "
                            f"with another --name")
    train_record, allowed = train_settings.check_record(sweep.root.uri, recorded["train"], current["train"],
                                                        what="sweep")
    return {**recorded, "train": train_record}, allowed


def recorded_concurrency(sweep: SweepLayout) -> int | None:
    """The trials at once of the sweep's first start, when it has a record."""
    if not storage.is_file(sweep.settings):
        return None
    return storage.read_json(sweep.settings)["search"]["concurrent"]


def _change(key: str, old, new) -> str:
    if key == "space":
        return f"the sweep was started with another search space ({_space_text(old)}), not {_space_text(new)}"
    shown = train_settings.shown
    return f"the sweep was started with {options.flag(TuneConfig, key)} {shown(old)}, not {shown(new)}"


def _fix(key: str, old) -> str:
    if key == "space":
        return f"that space (it is in {SWEEP_SETTINGS_FILE}, under search.space, in --space's format)"
    return f"{options.flag(TuneConfig, key)} {train_settings.shown(old)}"


def _space_text(record: dict) -> str:
    parameters = []
    for name, entry in record.items():
        kind, values = next(iter(entry.items())) if isinstance(entry, dict) else ("fixed", [entry])
        parameters.append(describe(SearchParameter(name, kind, tuple(values))))
    return "; ".join(parameters)
