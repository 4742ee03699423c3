"""--config FILE: every job reads its settings from a YAML or JSON file, a preset or its own
record (run.json, manifest.json, sweep.json, report.json, summary.json), and the flags given
beside it win; a bad file is one line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cxr import storage
from cxr.artifacts import RunLayout, ShardsLayout
from cxr.cli.command import JOBS
from cxr.config import AugmentConfig, PredictConfig, TrainConfig, TuneConfig
from cxr.errors import UserError
from tests.cli import assert_one_line_error, run_cxr


def built(job: str, *argv: str):
    return JOBS[job].build_config(JOBS[job].parse_args(list(argv)))


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_yaml_or_json_file_sets_what_it_names_and_the_flags_beside_it_win(tmp_path):
    text = "epochs: 12\nlearning_rate: 1e-3\naugment: {zoom: 0.2}\nnode_labels: [[cxr-pool, gpu]]\n"
    from_yaml = built("train", "--config", write(tmp_path, "train.yaml", text))
    assert (from_yaml.epochs, from_yaml.learning_rate, from_yaml.node_labels) == (12, 1e-3, (("cxr-pool", "gpu"),))
    # A nested setting it names replaces that one; the others keep the job's defaults.
    assert from_yaml.augment == dataclasses.replace(TrainConfig().augment, zoom=0.2)
    as_json = {"epochs": 12, "learning_rate": 0.001, "augment": {"zoom": 0.2}, "node_labels": [["cxr-pool", "gpu"]]}
    assert built("train", "--config", write(tmp_path, "train.json", json.dumps(as_json))) == from_yaml
    overridden = built("train", "--config", write(tmp_path, "t.yaml", text), "--epochs", "3", "--no-augment")
    assert overridden.epochs == 3 and overridden.learning_rate == 1e-3
    assert (overridden.augment.rotation, overridden.augment.zoom) == (0.0, 0.0)  # --no-augment beats the file
    assert built("train", "--config", write(tmp_path, "g.yaml", text), "--augment-zoom", "0.3").augment.zoom == 0.3


def test_the_presets_hold_the_recipes_they_are_named_for():
    paper = built("train", "--config", "paper")
    assert (paper.learning_rate, paper.lr_schedule, paper.dropout, paper.class_weights) == (1e-3, "constant", 0.0, False)
    assert paper.augment == AugmentConfig() and not paper.augment.appearance  # Keras' generator: geometric only
    paper_images = built("preprocess", "--config", "paper")
    assert (paper_images.image_size, paper_images.lungs.crop, paper_images.markings.policy) == (299, False, "drop")
    quick = built("preprocess", "--config", "quickstart")
    assert (quick.source, quick.image_size, quick.synthetic.images) == (("synthetic",), 96, 1000)
    assert built("train", "--config", "quickstart").data == quick.output
    real = built("train", "--config", "real")
    assert (real.epochs, real.data) == (30, built("preprocess", "--config", "real").output)
    # A sweep follows a preset's training recipe; a job a preset has nothing for says so.
    sweep = built("tune", "--config", "paper")
    assert sweep.train == dataclasses.replace(paper, name=None) and sweep.sweep_name == "scratch_cnn-sweep"
    with pytest.raises(UserError, match=r"^--config quickstart: has settings for preprocess, train, none for predict$"):
        built("predict", "--config", "quickstart")


@pytest.mark.parametrize("text, name, message", [
    ("epochs: [3]\n", "a.yaml", "--config {path}: epochs: expected an int, got [3]"),
    ("epochs: 3\nepoch: 4\n", "a.yaml", "--config {path}: unknown setting 'epoch' for TrainConfig (known: "),
    ("augment: {spin: 0.1}\n", "a.yaml", "--config {path}: augment: unknown setting 'spin' for AugmentConfig"),
    ("epochs: 0\n", "a.yaml", "--epochs must be at least 1, got 0"),
    ("- epochs\n", "a.yaml", "--config {path}: expected a mapping of settings, got list"),
    ("epochs: [\n", "a.yaml", "--config {path}: not valid YAML: "),
    ("{\"epochs\": }", "a.json", "--config {path}: not valid JSON: "),
    ("epochs: &a [*a]\n", "a.yaml", "--config {path}: epochs: expected an int, got a list that contains itself"),
    ("augment: &a {zoom: *a}\n", "a.yaml", "--config {path}: augment: zoom: expected a float, got a dict that contains itself"),
    ("epochs: 2026-12-08\n", "a.yaml", "--config {path}: epochs: expected an int, got datetime.date(2026, 12, 8)"),
    (None, "nowhere.yaml", "--config {path}: no such file"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, name, message):
    path = write(tmp_path, name, text) if text is not None else str(tmp_path / name)
    with pytest.raises(UserError) as refused:
        built("train", "--config", path)
    assert str(refused.value).startswith(message.format(path=path))


def test_required_settings_may_come_from_the_file_and_are_named_when_missing(tmp_path):
    path = write(tmp_path, "predict.yaml", "model: runs/a/model\ninput: images/\n")
    assert built("predict", "--config", path, "--output", "out") == PredictConfig("runs/a/model", "images/", "out")
    with pytest.raises(UserError, match=r"^the following arguments are required: --output$"):
        built("predict", "--config", path)


def test_a_run_json_replays_the_run_it_records(tiny_run):
    recorded = storage.read_json(RunLayout.at(str(tiny_run)).settings)
    replayed = built("train", "--config", str(tiny_run / "run.json"))
    assert replayed == TrainConfig.from_dict(recorded["config"]) and replayed.name == "tiny"
    assert replayed.augment == AugmentConfig(0, 0, 0) and replayed.epochs == 2
    assert built("train", "--config", str(tiny_run / "run.json"), "--name", "again").name == "again"


def test_a_manifest_replays_the_preprocessing_it_records(tiny_shards):
    manifest = ShardsLayout.at(tiny_shards).manifest
    replayed = built("preprocess", "--config", manifest.uri)
    assert (replayed.image_size, replayed.synthetic.images, replayed.output) == (64, 240, tiny_shards)
    assert json.loads(json.dumps(replayed.to_dict())) == storage.read_json(manifest)["config"]


def test_a_sweep_json_replays_the_sweep_it_records(tmp_path):
    from cxr.train.settings import run_record
    from cxr.tune.settings import sweep_record
    from cxr.tune.space import load_space
    from tests.manifests import as_manifest

    space = load_space(write(tmp_path, "space.yaml", "dropout: {uniform: [0.0, 0.4]}\nbatch_size: {choice: [16, 32]}\n"))
    sweep = TuneConfig(train=TrainConfig(epochs=4, learning_rate=1e-3, name="s1"), trials=6, space=space,
                       metric="val_auc", grace_period=2)
    record = sweep_record(sweep, run_record(sweep.train, as_manifest(), "shards/", None), concurrent=2)
    replayed = built("tune", "--config", write(tmp_path, "sweep.json", json.dumps(record)))
    assert replayed == sweep


def test_the_cxr_command_says_a_bad_config_in_one_line(tmp_path):
    result = run_cxr("train", "--config", str(tmp_path / "nowhere.yaml"))
    assert_one_line_error(result, f"--config {tmp_path / 'nowhere.yaml'}: no such file")
    listed = run_cxr("train", "--help").stdout
    assert "--config FILE" in listed and "paper, quickstart, real" in " ".join(listed.split())
