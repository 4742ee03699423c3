"""The sweep's pure parts, without Ray: the search space (default and --space files), what a
trial trains, what a resumed sweep refuses, and the records it leaves (the best trial, the table,
the figure). Every mistake is one line, before any trial starts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cxr import storage
from cxr.artifacts import SweepLayout
from cxr.config import DEFAULT_SPACE, AugmentConfig, SearchParameter, TrainConfig, TuneConfig
from cxr.errors import UserError
from cxr.train.settings import run_record
from cxr.tune import records
from cxr.tune import settings as sweep_settings
from cxr.tune.space import describe, load_space, space_record
from tests.cli import assert_one_line_error, run_job
from tests.manifests import as_manifest

YAML_SPACE = """\
learning_rate: {loguniform: [1.0e-5, 1e-3]}   # PyYAML reads 1e-3 as a string: taken as the number
dropout: {uniform: [0.0, 0.5]}
batch_size: {choice: [16, 32]}
augment: 1.5
class_weights: {choice: [true, false]}
"""


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_default_space_tunes_the_five_settings_of_the_issue_and_every_value_trains():
    assert [p.name for p in DEFAULT_SPACE] == ["learning_rate", "dropout", "batch_size", "augment", "class_weights"]
    assert {p.name: p.kind for p in DEFAULT_SPACE}["learning_rate"] == "loguniform"
    TuneConfig()  # checks every bound and option against the training job's config


def test_yaml_and_json_spaces_read_alike_and_a_recorded_space_reads_back(tmp_path):
    from_yaml = load_space(write(tmp_path, "space.yaml", YAML_SPACE))
    assert from_yaml == (SearchParameter("learning_rate", "loguniform", (1e-5, 1e-3)),
                         SearchParameter("dropout", "uniform", (0.0, 0.5)),
                         SearchParameter("batch_size", "choice", (16, 32)),
                         SearchParameter("augment", "fixed", (1.5,)),
                         SearchParameter("class_weights", "choice", (True, False)))
    from_json = load_space(write(tmp_path, "space.json", json.dumps(space_record(from_yaml))))
    assert from_json == from_yaml
    assert describe(from_yaml[0]) == "learning_rate loguniform 1e-05..0.001"
    assert describe(from_yaml[2]) == "batch_size one of 16, 32"


@pytest.mark.parametrize("name, text, message", [
    ("empty.yaml", "", "the search space is empty; name at least one of learning_rate"),
    ("empty.json", "{}", "the search space is empty"),
    ("comments.yaml", "# nothing yet\n", "the search space is empty"),
    ("broken.json", '{"dropout": ', "not valid JSON: Expecting value (line 1, column 13)"),
    ("broken.yaml", "dropout: {uniform: [0, 0.5]\nbatch_size: 3\n", "not valid YAML"),
    ("list.yaml", "- dropout\n- batch_size\n", "expected a mapping of settings to draws"),
    ("unknown.yaml", "lr: {loguniform: [1.0e-5, 1.0e-3]}\n", "unknown parameter 'lr' (tunable: learning_rate,"),
    ("kind.yaml", "batch_size: {uniform: [16, 64]}\n", "batch_size: 'uniform' is not one of choice, fixed"),
    ("two.yaml", "dropout: {uniform: [0, 0.5], choice: [0.1]}\n", "dropout: expected one of {loguniform: [...]}"),
    ("order.yaml", "dropout: {uniform: [0.5, 0.1]}\n", "dropout: uniform needs low < high, got [0.5, 0.1]"),
    ("zero.yaml", "learning_rate: {loguniform: [0, 0.1]}\n", "learning_rate: loguniform needs low > 0, got 0"),
    ("type.yaml", "dropout: {uniform: [low, 0.5]}\n", "dropout: 'low' is not a float"),
    ("bool.yaml", "class_weights: maybe\n", "class_weights: 'maybe' is not a bool"),
    ("bare.yaml", "batch_size: [16, 32]\n", "batch_size: a list is ambiguous; write {choice: [16, 32]}"),
    ("dupes.yaml", "batch_size: {choice: [16, 16]}\n", "batch_size: choice has duplicates: [16, 16]"),
    ("notlist.yaml", "dropout: {uniform: 0.5}\n", "dropout: uniform takes a list, got 0.5"),
])
def test_a_bad_space_file_is_one_line_naming_the_file_and_the_entry(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(UserError) as refused:
        load_space(path)
    assert str(refused.value).startswith(f"--space {path}: ") and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_missing_space_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"--space .*nowhere.yaml: no such file$"):
        load_space(str(tmp_path / "nowhere.yaml"))


@pytest.mark.parametrize("text, train, message", [
    ("dropout: {uniform: [0.0, 1.5]}\n", TrainConfig(),
     "dropout 1.5 cannot be trained: --dropout must be in [0, 1), got 1.5"),
    ("augment: {uniform: [0.0, 6.0]}\n", TrainConfig(),
     "augment 6.0 cannot be trained: --augment-zoom must be in [0, 0.5), got 0.6"),
    ("batch_size: {choice: [1, 32]}\n", TrainConfig(workers=2),
     "batch_size 1 cannot be trained: --batch-size 1 is smaller than --workers"),
    ("lr_schedule: {choice: [cosine, step]}\n", TrainConfig(),
     "lr_schedule 'step' cannot be trained: --lr-schedule must be one of cosine, constant, got 'step'"),
])
def test_a_space_value_the_model_cannot_take_is_refused_before_any_trial(tmp_path, text, train, message):
    path = write(tmp_path, "space.yaml", text)
    with pytest.raises(UserError) as refused:
        TuneConfig(train=train, space=load_space(path), space_file=path)
    assert str(refused.value) == f"--space {path}: {message}"


@pytest.mark.parametrize("changes, message", [
    ({"trials": 0}, "--trials must be at least 1, got 0"),
    ({"max_concurrent": 0}, "--max-concurrent must be at least 1, got 0"),
    ({"grace_period": 0}, "--grace-period must be at least 1, got 0"),
    ({"reduction_factor": 1}, "--reduction-factor must be at least 2, got 1"),
    ({"metric": "auc"}, "--metric must be one of val_loss, val_auc, got 'auc'"),
    ({"searcher": "grid"}, "--searcher must be one of auto, random, optuna, got 'grid'"),
    ({"space": ()}, "the search space is empty"),
    ({"space": DEFAULT_SPACE[:1] * 2}, "a parameter appears twice in ['learning_rate', 'learning_rate']"),
])
def test_search_settings_are_checked_on_construction(changes, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        TuneConfig(**changes)


def test_a_trial_trains_what_it_drew_and_takes_the_rest_from_the_command():
    sweep = TuneConfig(train=TrainConfig(learning_rate=1e-3, dropout=0.1, patience=4, name="sweep1"))
    trial = sweep.trial_config({"dropout": 0.3, "augment": 0.5, "batch_size": 64, "class_weights": False},
                               storage="/runs/sweep1/trials", name="abc12_00003")
    assert (trial.dropout, trial.batch_size, trial.class_weights) == (0.3, 64, False)
    assert trial.augment == AugmentConfig(rotation=0.015, shift=0.04, zoom=0.05).with_appearance(0.5)  # half the job's
    assert (trial.learning_rate, trial.patience) == (1e-3, 4)  # not in what it drew: the command's
    assert (trial.storage, trial.run_name) == ("/runs/sweep1/trials", "abc12_00003")
    assert sweep.sweep_name == "sweep1" and TuneConfig().sweep_name == "scratch_cnn-sweep"


def sweep_record(config: TuneConfig, concurrent: int = 1) -> dict:
    return sweep_settings.sweep_record(config, run_record(config.train, as_manifest(), "/data/shards", None),
                                       concurrent)


def test_a_resumed_sweep_refuses_another_search_or_training_setting_and_allows_another_execution(tmp_path):
    sweep = SweepLayout.at(str(tmp_path / "sweep1"))
    first = TuneConfig(train=TrainConfig(name="sweep1", storage=str(tmp_path)), trials=16)
    storage.write_json(sweep.settings, sweep_record(first, concurrent=2))

    def resume(**changes):
        train = dataclasses.replace(first.train, **changes.pop("train", {}))
        return sweep_settings.check_resume(sweep, sweep_record(dataclasses.replace(first, train=train, **changes),
                                                               concurrent=2))

    with pytest.raises(UserError, match=r"started with --trials 16, not 32; Ray Tune resumes a sweep with the "
                                        r"search it started with, so resume it with --trials 16, or start a new sweep"):
        resume(trials=32)
    with pytest.raises(UserError, match=r"started with another search space \(learning_rate loguniform "
                                        r"1e-05\.\.0\.001; .*\), not dropout uniform 0\.\.0\.3"):
        resume(space=(SearchParameter("dropout", "uniform", (0.0, 0.3)),))
    with pytest.raises(UserError, match=r"the sweep was started with --patience 10, not 3; resume it with "
                                        r"--patience 10, or start a new sweep with another --name$"):
        resume(train={"patience": 3})
    record, changed = resume(train={"workers": 2, "learning_rate": 1e-2})  # the space draws the learning rate
    assert changed == ["--workers 1 -> 2"]
    assert len(record["train"]["starts"]) == 2 and record["search"]["concurrent"] == 2


def run_tune_job(*args: str):
    return run_job("tune", *args, timeout=60)


def test_the_job_refuses_bad_search_input_in_one_line_before_ray_starts(tmp_path):
    """jobs/tune.py as a user runs it: each of these ends before Ray is imported (seconds)."""
    assert_one_line_error(run_tune_job("--trials", "0"), "--trials must be at least 1, got 0")
    assert_one_line_error(run_tune_job("--space", str(tmp_path / "none.yaml")), "none.yaml: no such file")
    empty = write(tmp_path, "empty.json", "{}")
    assert_one_line_error(run_tune_job("--space", empty), f"--space {empty}: the search space is empty")
    wide = write(tmp_path, "wide.yaml", "dropout: {uniform: [0.0, 1.0]}\n")
    assert_one_line_error(run_tune_job("--space", wide), "dropout 1.0 cannot be trained: --dropout must be in [0, 1)")
    assert_one_line_error(run_tune_job("--workers", "4", "--batch-size", "2"),
                          "--batch-size 2 is smaller than --workers")


def history(*epochs: tuple[float, float]) -> tuple[dict, ...]:
    return tuple({"epoch": index, "val_loss": loss, "val_auc": auc, "val_accuracy": 0.5 + auc / 4}
                 for index, (loss, auc) in enumerate(epochs))


def sample_records() -> list[records.TrialRecord]:
    drawn = {"learning_rate": 3e-4, "batch_size": 16, "class_weights": True}
    return [
        records.TrialRecord(1, "a_00000", "/runs/s/trials/a_00000", drawn, records.FINISHED,
                            history((0.6, 0.70), (0.5, 0.80)), best_epoch=1),
        records.TrialRecord(2, "a_00001", "/runs/s/trials/a_00001", drawn, records.SCHEDULER_STOPPED,
                            history((0.69, 0.50)), best_epoch=0),
        records.TrialRecord(3, "a_00002", "/runs/s/trials/a_00002", drawn, records.FAILED, (), None,
                            error="training stopped at a non-finite loss in epoch 1, step 3 (loss nan)"),
        # The lowest validation loss, but not the best AUC at the epoch its export keeps.
        records.TrialRecord(4, "a_00003", "/runs/s/trials/a_00003", drawn, records.FINISHED,
                            history((0.45, 0.75), (0.47, 0.90)), best_epoch=0),
    ]


def test_the_best_trial_is_chosen_on_the_metric_of_the_epoch_its_export_keeps():
    trials = sample_records()
    assert records.best_trial(trials, "val_loss", "min").number == 4
    # Trial 4 reached an AUC of 0.90, in an epoch its export does not keep (its val_loss was higher).
    assert records.best_trial(trials, "val_auc", "max").number == 1
    assert records.best_trial(trials[1:3], "val_loss", "min").number == 2  # never a failed trial
    assert records.best_trial(trials[2:3], "val_loss", "min") is None


def test_the_table_says_how_every_trial_ended_and_the_figure_draws_them(tmp_path):
    config = TuneConfig(space=DEFAULT_SPACE[:1] + DEFAULT_SPACE[2:3] + DEFAULT_SPACE[4:], trials=4)
    trials = sample_records()
    rows = records.table_rows(trials, config)
    assert [(row["trial"], row["status"], row["stopped_by_scheduler"], row["epochs"]) for row in rows] == [
        (1, "finished", False, 2), (2, "stopped by the scheduler", True, 1), (3, "failed", False, 0),
        (4, "finished", False, 2)]
    assert (rows[3]["best_epoch"], rows[3]["score"], rows[3]["best_val_loss"], rows[3]["best_val_auc"]) == (
        1, 0.45, 0.45, 0.90)
    assert rows[2]["error"].startswith("training stopped at a non-finite loss") and rows[2]["best_val_loss"] is None
    assert records.trials_csv(rows).decode().splitlines()[0].startswith("trial,trial_id,status,stopped_by_scheduler,")
    sweep = SweepLayout.at(str(tmp_path / "s"))
    markdown = records.trials_markdown(rows, trials[3], config, sweep, "Searcher: random.").decode()
    assert "Best: trial 4 (`a_00003`), val_loss 0.4500" in markdown
    assert "| trial | status | epochs | best_epoch | score |" in markdown and markdown.count("\n| ") == 5
    assert records.val_auc_png(trials, trials[3], "s").startswith(b"\x89PNG")


def test_a_trial_error_is_one_line():
    class Wrapped(Exception):  # as Ray hands over a trial's exception: the original as `cause`
        def __init__(self, cause):
            super().__init__(f"Traceback ...\n{cause}")
            self.cause = cause

    assert records.error_text(Wrapped(UserError("stopped at a non-finite loss"))) == "stopped at a non-finite loss"
    assert records.error_text(Wrapped(ValueError("boom\nmore"))) == "ValueError: boom"
    assert records.drawn_text({"learning_rate": 0.00021, "class_weights": False}) == \
        "learning_rate 0.00021, class_weights off"


def test_trials_are_numbered_in_the_order_the_searcher_created_them():
    # Random search counts from 0, a model-based searcher from 1; a restored sweep lists its
    # trials in another order: the number comes from the tag's counter, never the list order.
    tags = ["3_learning_rate=0.05", "0_learning_rate=0.0003", "2_learning_rate=0.05", "1_learning_rate=0.0003"]
    assert [records.trial_number(tag, tags) for tag in tags] == [4, 1, 3, 2]
    assert records.trial_number("7_dropout=0.1", ["7_dropout=0.1", "10_dropout=0.2"]) == 1  # not text order
    assert records.trial_number("1", ["1"]) == 1
