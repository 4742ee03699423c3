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
    extra: dict = field(default_factory=dict)


def scored(held_out=("c",)) -> Scored:
    # Sources a and b: the model separates the classes perfectly; source c: it inverts them.
    labels = np.array([0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0])
    sources = ["a"] * 3 + ["b"] * 3 + ["c"] * 4 + [None] * 2
    covid = np.where(labels == 0, 0.9, 0.1)
    covid[6:10] = 1 - covid[6:10]
    probs = np.c_[covid, 1 - covid]
    masked = np.full_like(probs, 0.5)
    return Scored(labels=labels, probs={"full": probs, "lungs_masked": masked}, sources=sources, held_out=held_out)


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
