"""The shortcut check's lung-field template, its masking, and the verdict it puts into words."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.evaluate.shortcuts import apply_variant, lung_field_mask, verdict


def test_lung_template_covers_two_lungs_and_spares_the_midline_and_borders():
    mask = lung_field_mask(200, 200)
    assert mask.shape == (200, 200) and mask.dtype == bool
    # Two ellipses of half-axes 0.16 x 0.33: 2 * pi * 0.16 * 0.33 = 33% of the image.
    assert mask.mean() == pytest.approx(2 * np.pi * 0.16 * 0.33, abs=0.01)
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # left-right symmetric
    assert mask[92, 64] and mask[92, 136]  # the centres of both lungs (0.32 and 0.68 of the width)
    assert not mask[:, 98:102].any()  # the mediastinum
    assert not mask[:20].any() and not mask[-35:].any() and not mask[:, :28].any()  # neck, abdomen, sides
    with pytest.raises(ValueError):
        mask[0, 0] = True  # shared between callers


def test_variants_black_out_the_lungs_or_everything_else():
    images = np.full((2, 50, 50, 1), 200, dtype=np.uint8)
    lungs = lung_field_mask(50, 50)
    masked, only = apply_variant(images, "lungs_masked"), apply_variant(images, "lungs_only")
    assert (masked[:, lungs] == 0).all() and (masked[:, ~lungs] == 200).all()
    assert (only[:, lungs] == 200).all() and (only[:, ~lungs] == 0).all()
    assert apply_variant(images, "full") is images and (images == 200).all()  # input untouched
    with pytest.raises(ValueError):
        apply_variant(images, "lungs")


def auc(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def test_verdict_names_a_shortcut_only_when_the_masked_auc_is_clearly_above_chance():
    shortcut = verdict(auc(0.99, 0.98, 1.0), auc(0.93, 0.90, 0.96), auc(0.97, 0.95, 0.99))
    assert shortcut.startswith("AUC on full images 0.990") and "WARNING" in shortcut and "shortcuts" in shortcut
    partial = verdict(auc(0.95, 0.92, 0.97), auc(0.62, 0.55, 0.69), auc(0.94, 0.91, 0.96))
    assert "WARNING" not in partial and "better than chance" in partial and "likely shortcut" in partial
    clean = verdict(auc(0.95, 0.92, 0.97), auc(0.52, 0.45, 0.59), auc(0.80, 0.75, 0.85))
    assert "no shortcut" in clean and "drops markedly" in clean
    assert "could not be computed" in verdict(auc(None, None, None), auc(None, None, None), auc(None, None, None))


def test_verdict_draws_no_conclusion_from_a_model_near_chance():
    weak = verdict(auc(0.64, 0.51, 0.78), auc(0.50, 0.40, 0.60), auc(0.60, 0.48, 0.72))
    assert "cannot tell" in weak and "0.510" in weak
    assert "no shortcut" not in weak and "WARNING" not in weak


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.2])
def test_on_images_cropped_to_their_lungs_the_template_fits_the_crop(margin):
    from cxr.preprocess.lungs import crop_to_box, ellipse_mask, find_lungs

    # Lungs where the template puts them, in a 200 px image, found and cropped as preprocessing does.
    side = 200
    lungs = ellipse_mask(side, side)
    image = np.where(lungs, 0.2, 0.8).astype(np.float32)
    found = find_lungs(image, margin)
    cropped_lungs = crop_to_box(lungs, found.box)
    height, width = cropped_lungs.shape
    fitted, fixed = lung_field_mask(height, width, margin), lung_field_mask(height, width)
    assert iou(fitted, cropped_lungs) > 0.85
    assert iou(fitted, cropped_lungs) > iou(fixed, cropped_lungs) + 0.1
    # The template's box fills the frame less the margin.
    inner = margin / (1 + 2 * margin)
    cols = np.flatnonzero(fitted.any(axis=0)) / width
    assert cols[0] == pytest.approx(inner, abs=0.02) and cols[-1] == pytest.approx(1 - inner, abs=0.02)
    images = np.full((1, height, width, 1), 200, dtype=np.uint8)
    assert (apply_variant(images, "lungs_masked", crop_margin=margin)[0, fitted] == 0).all()
