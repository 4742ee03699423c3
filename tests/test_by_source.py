"""Metrics per source and for held-out sources, on scores made up for the purpose."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from cxr.artifacts import UNKNOWN_SOURCE
from cxr.evaluate import by_source
from cxr.evaluate.report import format_ci

NAMES = ["COVID", "Normal"]


@dataclass
class Scored:
    """What cxr.evaluate.job.Scored holds that the per-source metrics read."""

    labels: np.ndarray
    probs: dict
    sources: list
    held_out: tuple = ()
    split: str | None = "test"
    description: str = "shards, test split"
    rejected: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def scored(held_out=("c",), split="test") -> Scored:
    # Sources a and b: the model separates the classes perfectly; source c: it inverts them.
    labels = np.array([0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0])
    sources = ["a"] * 3 + ["b"] * 3 + ["c"] * 4 + [None] * 2
    covid = np.where(labels == 0, 0.9, 0.1)
    covid[6:10] = 1 - covid[6:10]
    probs = np.c_[covid, 1 - covid]
    masked = np.full_like(probs, 0.5)
    return Scored(labels=labels, probs={"full": probs, "lungs_masked": masked}, sources=sources, held_out=held_out,
                  split=split, description=f"shards, {split} split")


def test_held_out_and_training_groups_and_each_source():
    result = by_source.source_metrics(scored(), NAMES, 0, 0.5, resamples=200, seed=0)
    assert result["held_out"] == ["c"]
    held, training = result["groups"]["held-out sources"], result["groups"]["training sources"]
    assert held["sources"] == ["c"] and held["n"] == 4 and held["per_class"] == {"COVID": 1, "Normal": 3}
    assert held["auc"]["value"] == 0.0 and held["accuracy"]["value"] == 0.0
    assert training["sources"] == ["a", "b", UNKNOWN_SOURCE] and training["n"] == 8
    assert training["auc"]["value"] == 1.0
    assert held["auc_lungs_masked"]["value"] == 0.5
    per_source = result["per_source"]
    assert set(per_source) == {"a", "b", "c", UNKNOWN_SOURCE}
    assert [per_source[s]["held_out"] for s in ("a", "b", "c")] == [False, False, True]
    # A source of one class has an accuracy but no AUC.
    assert per_source[UNKNOWN_SOURCE]["per_class"] == {"COVID": 2, "Normal": 0}
    assert per_source[UNKNOWN_SOURCE]["auc"]["value"] is None
    assert per_source[UNKNOWN_SOURCE]["accuracy"]["value"] == 1.0


def test_the_report_section_and_summary_say_what_is_held_out():
    result = by_source.source_metrics(scored(), NAMES, 0, 0.5, resamples=200, seed=0)
    text = "\n".join(by_source.markdown_section(result, NAMES, format_ci))
    assert "holds out the source c: every one of their images" in text
    assert "| **held-out sources** | yes | 4 | 1 / 3 | 0.000" in text
    assert "| (unknown) | no | 2 | 2 / 0 | 1.000 (1.000-1.000) | 1.000 (1.000-1.000) | n/a |" in text
    lines = by_source.summary_lines(result, format_ci)
    assert lines[0].startswith("  held-out sources (c): 4 images, accuracy 0.000")


def test_several_sources_without_held_out_ones_give_each_source():
    result = by_source.source_metrics(scored(held_out=()), NAMES, 0, 0.5, resamples=200, seed=0)
    assert result["groups"] == {} and result["held_out"] == []
    assert "each also seen in training" in by_source.split_note(result)
    assert by_source.summary_lines(result, format_ci)[0].startswith("  source a: 3 images")


@pytest.mark.parametrize("sources", [["only"] * 12, [None] * 12])
def test_one_source_or_none_known_adds_nothing(sources):
    data = scored(held_out=())
    data.sources = sources
    assert by_source.source_metrics(data, NAMES, 0, 0.5, resamples=200, seed=0) is None
    assert by_source.markdown_section(None, NAMES, format_ci) == []


def test_the_validation_split_says_whether_the_model_was_chosen_on_unseen_sources():
    held = by_source.source_metrics(scored(split="val"), NAMES, 0, 0.5, resamples=200, seed=0)
    assert held["split"] == "val"
    note = by_source.split_note(held)
    assert note.startswith("The validation split holds out the source c: every one of their images, none of which "
                           "was in training.")
    assert "chosen on this split" in note and "test" not in note
    text = "\n".join(by_source.markdown_section(held, NAMES, format_ci, "Per source, validation split"))
    assert text.startswith("## Per source, validation split\n") and "| **held-out sources** | yes | 4 |" in text
    assert by_source.summary_lines(held, format_ci, "validation split, ")[0].startswith(
        "  validation split, held-out sources (c): 4 images")
    seen = by_source.split_note(by_source.source_metrics(scored(held_out=(), split="val"), NAMES, 0, 0.5,
                                                         resamples=200, seed=0))
    assert "sources also seen in training: it rewarded a model that recognises them" in seen


def test_the_training_datas_table_and_warning_as_report_markdown():
    table = {"bimcv": {"COVID": 90, "Normal": 0}, "a|b": {"COVID": 10, "Normal": 10},
             "rsna": {"COVID": 0, "Normal": 90}, UNKNOWN_SOURCE: {"COVID": 1, "Normal": 0}}
    record = by_source.training_sources(table, NAMES)
    assert record["table"] == table and record["confounded"] == ["COVID", "Normal"]
    text = "\n".join(by_source.training_sources_section(record, NAMES))
    assert "| source | COVID | Normal | total |\n| --- | --- | --- | --- |\n| bimcv | 90 | 0 | 90 |" in text
    assert "| a\\|b | 10 | 10 | 20 |" in text and "| (unknown) | 1 | 0 | 1 |" in text
    assert "- **Warning:** COVID: 89% from sources without Normal images; a model can learn the hospital." in text
    assert "- Images in sources that hold both classes: 9% (20 of 201)." in text
    unknown = by_source.training_sources({UNKNOWN_SOURCE: {"COVID": 3, "Normal": 3}}, NAMES)
    assert "No training image's source was recorded" in "\n".join(by_source.training_sources_section(unknown, NAMES))


def test_the_report_and_model_card_repeat_the_training_table_and_give_validation_per_source():
    from cxr.config import EvaluateConfig
    from cxr.evaluate.report import build_report, model_card, report_markdown
    from cxr.scoring.export import Export
    from tests.manifests import as_manifest

    per_source = {"train": {"a": {"COVID": 11, "Normal": 0, "total": 11}, "b": {"COVID": 0, "Normal": 29, "total": 29}},
                  "val": {"c": {"COVID": 1, "Normal": 4, "total": 5}},
                  "test": {"a": {"COVID": 2, "Normal": 0, "total": 2}, "b": {"COVID": 0, "Normal": 3, "total": 3}}}
    manifest = as_manifest({"counts": {"sources": per_source}, "config": {"split": {"val_sources": ["c"]}}})
    export = Export(uri="runs/x/model", manifest=manifest, training={"model": "scratch_cnn"})
    evaluated = scored(held_out=())
    evaluated.probs = {"full": evaluated.probs["full"]}
    report = build_report(export, evaluated, scored(held_out=("c",), split="val"),
                          EvaluateConfig(run="runs/x", resamples=100, gradcam_examples=0))
    assert report["data"]["training_sources"]["table"] == {"a": {"COVID": 13, "Normal": 0},
                                                           "b": {"COVID": 0, "Normal": 32},
                                                           "c": {"COVID": 1, "Normal": 4}}
    assert report["validation_sources"]["held_out"] == ["c"] and report["sources"]["split"] == "test"
    markdown, card = report_markdown(report), model_card(report)
    for text in (markdown, card):
        assert "## Training data by source" in text and "| a | 13 | 0 | 13 |" in text
        assert "COVID: 92% from sources without Normal images; a model can learn the hospital" in text
        assert "The validation split holds out the source c" in text
    assert "## Per source, validation split" in markdown and "## Per source\n" in markdown
    assert "- validation split, held-out sources: 4 images" in card
