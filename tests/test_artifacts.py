"""cxr.artifacts: the manifest's typed view and where every file of a shard set, run, report and prediction goes."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from cxr import storage
from cxr.artifacts import (SPLITS, ExportLayout, KaggleSource, Manifest, PredictionsLayout, RunLayout, ShardsLayout,
                           positive_label, read_manifest)
from cxr.config import ClaheConfig, DownloadConfig, PreprocessConfig
from cxr.errors import UserError
from tests.manifests import SAMPLE, as_manifest, manifest_json


def test_manifest_view_reads_every_field_of_the_json():
    manifest = as_manifest()
    assert manifest.schema_version == 1
    assert manifest.class_names == ("COVID", "Normal") and manifest.positive_label == 0
    assert manifest.image_size == 64
    assert manifest.splits["train"].per_class == {"COVID": 11, "Normal": 29} and manifest.splits["train"].total == 40
    assert [manifest.splits[split].total for split in SPLITS] == [40, 5, 5]
    assert manifest.shards["val"][0].path == "val/part-00000.parquet" and manifest.shards["val"][0].rows == 5
    assert manifest.counts.found == 60 and manifest.counts.kept + manifest.counts.rejected == 60
    assert manifest.counts.rejected_by_reason == {"duplicate": 1, "marking": 9}
    assert manifest.source_uri == "synthetic" and manifest.kaggle is None
    assert manifest.wall_seconds == 12.5


def test_kaggle_source_is_typed_when_recorded():
    fetched = {"COVID": {"downloaded": 3}, "Normal": {"cached": 2, "failed": 1}}
    kaggle = {"dataset": "o/d", "version": 5, "mode": "files", "fetched": fetched}
    manifest = as_manifest({"source": {"kaggle": kaggle}})
    assert isinstance(manifest.kaggle, KaggleSource)
    assert (manifest.kaggle.dataset, manifest.kaggle.version) == ("o/d", 5)
    assert {name: dict(how) for name, how in manifest.kaggle.fetched.items()} == fetched


def test_manifest_view_is_read_only_and_its_json_a_copy():
    manifest = as_manifest()
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.image_size = 128
    with pytest.raises(TypeError):
        manifest.splits["train"] = None
    with pytest.raises(TypeError):
        manifest.splits["train"].per_class["COVID"] = 0
    copy = manifest.to_dict()
    assert copy == manifest_json()
    copy["class_names"].append("Other")
    assert manifest.to_dict()["class_names"] == ["COVID", "Normal"]


def test_the_view_does_not_follow_changes_to_the_dict_it_was_built_from():
    raw = manifest_json()
    manifest = Manifest.from_dict(raw)
    raw["counts"]["splits"]["train"]["total"] = 0
    assert manifest.to_dict()["counts"]["splits"]["train"]["total"] == 40


def test_manifest_travels_pickled_as_its_json():
    manifest = as_manifest()
    again = pickle.loads(pickle.dumps(manifest))
    assert again == manifest and again.to_dict() == manifest.to_dict()


@pytest.mark.parametrize("version", [99, 0, None, "1"])
def test_unknown_schema_version_is_one_line_naming_the_file(version):
    raw = {**manifest_json(), "schema_version": version}
    with pytest.raises(UserError) as info:
        Manifest.from_dict(raw, where="s3://bucket/shards/manifest.json")
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"s3://bucket/shards/manifest.json: schema version {version!r} is not supported "
                       f"(this cxr reads version 1)")


def test_read_manifest_checks_the_file(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({**SAMPLE, "schema_version": 2}))
    with pytest.raises(UserError, match="schema version 2 is not supported"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps(SAMPLE))
    assert read_manifest(str(tmp_path)).to_dict() == SAMPLE


def test_preprocess_config_repeats_the_image_work_not_the_download():
    manifest = as_manifest({"config": {"clahe": {"clip_limit": 0.02}, "classes": ["COVID", "Normal"],
                                       "download": {"concurrency": 2}}})
    config = manifest.preprocess_config()
    assert isinstance(config, PreprocessConfig)
    assert config.clahe == ClaheConfig(clip_limit=0.02) and config.image_size == 64
    assert config.classes == ("COVID", "Normal") and config.download == DownloadConfig()
    assert manifest.preprocess_config(source="elsewhere").source == ("elsewhere",)
    assert manifest.config_record()["download"]["concurrency"] == 2
    assert manifest.counts_record() == manifest_json()["counts"]


def test_split_paths_are_under_the_shard_set():
    data = storage.resolve("s3://bucket/shards")
    assert as_manifest().split_paths(data, "test") == ["bucket/shards/test/part-00000.parquet"]


def test_positive_class_is_covid_when_present_else_the_last():
    assert positive_label(("Normal", "COVID", "Viral Pneumonia")) == 1
    assert positive_label(["Normal", "Pneumonia"]) == 1
    assert as_manifest({"class_names": ["Lung_Opacity", "Normal", "COVID"]}).positive_label == 2


def test_a_shard_set_and_what_the_job_may_overwrite():
    shards = ShardsLayout.at("s3://bucket/shards/v1")
    assert shards.manifest.uri == "s3://bucket/shards/v1/manifest.json"
    assert shards.rejected.uri == "s3://bucket/shards/v1/rejected.parquet"
    assert shards.staging.uri == "s3://bucket/shards/v1/_staging"
    assert ShardsLayout.shard_name("val", 3) == "val/part-00003.parquet"
    assert all(ShardsLayout.is_ours(n) for n in ("manifest.json", "rejected.parquet", "train/part-00000.parquet",
                                                  "_staging/x.parquet"))
    assert not any(ShardsLayout.is_ours(n) for n in ("notes.txt", "other/manifest.json", "train.parquet"))


def test_a_run_its_export_and_its_report(tmp_path):
    run = RunLayout.at(str(tmp_path / "runs" / "exp1"))
    export = run.export
    root = f"{tmp_path}/runs/exp1"
    assert export.root.uri == f"{root}/model"
    assert [export.model.uri, export.manifest.uri, export.training.uri, export.history.uri,
            export.learning_curve.uri] == [f"{root}/model/{name}" for name in
                                           ("model.keras", "manifest.json", "training.json", "history.csv",
                                            "learning_curve.png")]
    assert run.worker_record(1).uri == f"{root}/workers/rank-1.json"
    assert ExportLayout.at(export.root.uri + "/").run == run
    report = run.report
    assert [report.report.uri, report.markdown.uri, report.model_card.uri, report.figure("roc.png").uri] == [
        f"{root}/report/{name}" for name in ("report.json", "report.md", "MODEL_CARD.md", "figures/roc.png")]


def test_predictions():
    output = PredictionsLayout.at("s3://bucket/predictions")
    assert [output.parquet.uri, output.csv.uri, output.summary.uri] == [
        f"s3://bucket/predictions/{name}" for name in ("predictions.parquet", "predictions.csv", "summary.json")]


def test_sources_held_out_sources_and_extra_columns_are_typed_and_older_manifests_have_none():
    assert as_manifest().sources == {} and as_manifest().test_sources == () and as_manifest().extra_columns == ()
    assert not as_manifest().has_column("source") and as_manifest().metadata_record() == {}
    by_source = {"train": {"a": {"COVID": 3, "Normal": 5, "total": 8}}, "val": {}, "test": {
        "b": {"COVID": 1, "Normal": 1, "total": 2}, "(unknown)": {"COVID": 0, "Normal": 1, "total": 1}}}
    csv = {"uri": "m.csv", "key": "path", "columns": ["patient_id"], "rows": 9, "rows_without_image": 0,
           "images_without_row": 1}
    manifest = as_manifest({"counts": {"sources": by_source}, "source": {"uri": "/data", "metadata": {"csv": csv}},
                            "columns": {"source": "string", "patient_id": "string"},
                            "config": {"split": {"test_sources": ["b"]}, "source": "/data", "metadata": "m.csv"}})
    assert manifest.sources["train"]["a"].per_class == {"COVID": 3, "Normal": 5}
    assert manifest.sources["test"]["(unknown)"].total == 1
    assert manifest.test_sources == ("b",) and manifest.extra_columns == ("patient_id",)
    assert manifest.has_column("source") and manifest.metadata_record()["csv"] == csv
    # Scoring other images repeats the image work, not the training data's metadata file.
    config = manifest.preprocess_config(source="elsewhere")
    assert config.split.test_sources == ("b",) and config.metadata is None
