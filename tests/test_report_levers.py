"""What the report and model card say about the levers against shortcuts a model was trained with."""

from __future__ import annotations

import pytest

from cxr.config import AugmentConfig, LungFocusConfig, MarkingConfig, PreprocessConfig, TrainConfig
from cxr.evaluate.report import _levers_sentence


def records(lungs: LungFocusConfig, augment: AugmentConfig, remove_all: bool = False) -> dict:
    """The parts of report.json the sentence reads, as evaluate writes them."""
    prep = PreprocessConfig(lungs=lungs, markings=MarkingConfig(remove_all=remove_all)).to_dict()
    config = TrainConfig(augment=augment).to_dict()
    return {"data": {"preprocessing": prep}, "model": {"training": {"config": config}}}


NONE = LungFocusConfig(crop=False)


@pytest.mark.parametrize("lungs, augment, remove_all, said", [
    (LungFocusConfig(), TrainConfig().augment, False, "Trained with the lung crop and appearance augmentation: "),
    (LungFocusConfig(), AugmentConfig(), False, "Trained with the lung crop: "),
    (NONE, AugmentConfig().with_appearance(0.5), False, "Trained with appearance augmentation: "),
    (LungFocusConfig(suppress=True), AugmentConfig(), True,
     "Trained with the lung crop, lung suppression and removal of every burned-in mark: "),
    (NONE, AugmentConfig(), False, "Trained without any lever against shortcuts"),
])
def test_the_sentence_names_the_levers_the_model_was_trained_with(lungs, augment, remove_all, said):
    sentence = _levers_sentence(records(lungs, augment, remove_all))
    assert sentence.startswith(said)
    assert "held-out source" in sentence and "generalization" in sentence


def test_records_older_than_the_levers_read_as_none():
    old = {"data": {"preprocessing": {"markings": {"policy": "drop"}}}, "model": {"training": None}}
    assert _levers_sentence(old).startswith("Trained without any lever")


def test_the_card_says_how_the_images_were_cropped():
    from cxr.evaluate.report import _lung_focus_text

    assert _lung_focus_text(None) == "" and _lung_focus_text({"crop": False, "suppress": False}) == ""
    recorded = PreprocessConfig().to_dict()["lungs"]
    assert _lung_focus_text(recorded) == "cropped to the box around the lung fields found in each image (margin 0.05), "
    both = _lung_focus_text({**recorded, "suppress": True})
    assert both.endswith("(margin 0.05) and blacked out outside them, ")
