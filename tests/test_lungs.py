"""The training levers at preprocessing: the lung-field focus and removing every detected marking.

Pure functions directly; the whole image work (process_image) with each lever; the manifest
that carries them to scoring; and, on a real local Ray, the pipeline's shards against what
evaluate and predict make of the same raw images.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from cxr.artifacts import Manifest
from cxr.config import LungFocusConfig, MarkingConfig, PreprocessConfig
from cxr.errors import UserError
from cxr.ingest.synthetic import draw_marking, render_synthetic_png
from cxr.preprocess.lungs import crop_to_box, ellipse_mask, find_lungs, suppress_outside
from cxr.preprocess.pipeline import process_image
from cxr.preprocess.transforms import decode_png_gray
from tests.manifests import as_manifest


def phantom(side: int = 200, lungs=((0.27, 0.36), (0.60, 0.36)), half=(0.12, 0.22)) -> np.ndarray:
    """A bright body on dark air with two dark lungs (centres x, y; half width, height)."""
    y, x = np.mgrid[0:side, 0:side] / side
    image = np.full((side, side), 0.05, dtype=np.float32)
    image[(np.abs(x - 0.45) < 0.4) & (y > 0.05)] = 0.75  # the body
    for cx, cy in lungs:
        image[((x - cx) / half[0]) ** 2 + ((y - cy) / half[1]) ** 2 <= 1] = 0.2
    return image


def test_the_lungs_are_found_where_they_are_not_where_the_template_puts_them():
    image = phantom()
    field = find_lungs(image, margin=0.0)
    assert field.found
    top, bottom, left, right = (v / 200 for v in field.box)
    # Lungs drawn at y 0.14-0.58, x 0.15-0.72: the template's box would be y 0.13-0.79, x 0.16-0.84.
    assert top == pytest.approx(0.14, abs=0.04) and bottom == pytest.approx(0.58, abs=0.04)
    assert left == pytest.approx(0.15, abs=0.04) and right == pytest.approx(0.72, abs=0.04)
    assert field.mask[int(0.36 * 200), int(0.27 * 200)] and not field.mask[int(0.36 * 200), int(0.44 * 200)]
    # The dark air outside the body is not taken for lung.
    assert not field.mask[:, :8].any()


def test_the_margin_grows_the_box_and_the_mask():
    tight, loose = find_lungs(phantom(), margin=0.0), find_lungs(phantom(), margin=0.1)
    assert loose.mask.sum() > tight.mask.sum() and (loose.mask | tight.mask == loose.mask).all()
    assert loose.box[0] < tight.box[0] and loose.box[3] > tight.box[3]


@pytest.mark.parametrize("image", [np.full((120, 100), 0.5, np.float32), np.zeros((90, 90), np.float32),
                                   phantom(half=(0.03, 0.05))])
def test_without_plausible_lungs_the_prior_stands_in(image):
    field = find_lungs(image, margin=0.0)
    assert not field.found
    assert field.mask.shape == image.shape
    prior = ellipse_mask(*image.shape)  # found at working size, so equal up to its edge pixels
    assert (field.mask & prior).sum() / (field.mask | prior).sum() > 0.95


def test_crop_and_suppress_are_pure():
    image = phantom()
    before = image.copy()
    field = find_lungs(image, margin=0.05)
    cropped = crop_to_box(image, field.box)
    suppressed = suppress_outside(image, field.mask)
    np.testing.assert_array_equal(image, before)
    assert cropped.shape == (field.box[1] - field.box[0], field.box[3] - field.box[2])
    assert (suppressed[~field.mask] == 0).all() and (suppressed[field.mask] == image[field.mask]).all()


def synthetic_png(index: int = 3) -> bytes:
    return render_synthetic_png("COVID", index, size=200, marking_fraction=0.0)[0]


def pixels_of(data: bytes, config: PreprocessConfig) -> np.ndarray:
    return decode_png_gray(process_image(data, config)["image_png"])


BASE = PreprocessConfig(image_size=64, lungs=LungFocusConfig(crop=False))
CROP = dataclasses.replace(BASE, lungs=LungFocusConfig(crop=True))
SUPPRESS = dataclasses.replace(BASE, lungs=LungFocusConfig(crop=False, suppress=True))
BOTH = dataclasses.replace(BASE, lungs=LungFocusConfig(crop=True, suppress=True))


def test_lung_focus_changes_the_image_and_repeats_exactly():
    data = synthetic_png()
    plain = pixels_of(data, BASE)
    for config in (CROP, SUPPRESS, BOTH):
        focused = pixels_of(data, config)
        assert focused.shape == plain.shape and not np.array_equal(focused, plain)
        np.testing.assert_array_equal(focused, pixels_of(data, config))
    # Suppression blacks out the corners (outside any lung), which CLAHE leaves grey otherwise.
    assert pixels_of(data, SUPPRESS)[:4, :4].max() == 0 and plain[:4, :4].max() > 0


def test_the_lung_crop_is_on_by_default_suppression_off_and_checked():
    assert PreprocessConfig().lungs == LungFocusConfig(crop=True, suppress=False)
    assert not PreprocessConfig().markings.remove_all
    with pytest.raises(UserError, match="--lung-margin"):
        LungFocusConfig(margin=0.9)


def marked_png() -> bytes:
    gray = np.asarray(Image.open(io.BytesIO(synthetic_png(5))))
    marked = draw_marking(gray, "text", np.random.default_rng(1))
    buffer = io.BytesIO()
    Image.fromarray(marked).save(buffer, format="PNG")
    return buffer.getvalue()


def test_remove_all_inpaints_marks_below_the_threshold_too():
    data = marked_png()
    # A threshold no score reaches: the policy never acts, only remove_all can.
    lenient = dataclasses.replace(BASE, markings=MarkingConfig(policy="drop", threshold=1.0))
    kept = process_image(data, lenient)
    assert kept["status"] == "ok" and not kept["marking_inpainted"] and kept["marking_score"] > 0
    removed = process_image(data, dataclasses.replace(lenient, markings=dataclasses.replace(
        lenient.markings, remove_all=True)))
    assert removed["marking_inpainted"] and removed["image_png"] != kept["image_png"]
    # A clean image is left alone.
    clean = synthetic_png()
    all_removed = dataclasses.replace(BASE, markings=MarkingConfig(remove_all=True))
    assert process_image(clean, all_removed)["image_png"] == process_image(clean, BASE)["image_png"]
    # Heavily marked images are still dropped under "drop".
    assert process_image(data, all_removed)["status"] == "marking"


def test_the_manifest_carries_the_levers_to_scoring_and_older_manifests_have_none():
    levers = dataclasses.replace(BOTH, markings=MarkingConfig(remove_all=True))
    manifest = as_manifest({"config": levers.to_dict()})
    config = manifest.preprocess_config(source="elsewhere")
    assert config.lungs == levers.lungs and config.markings.remove_all
    record = as_manifest().to_dict()  # as written before the levers existed
    assert "lungs" not in record["config"] and "remove_all" not in record["config"]["markings"]
    # Made before the lung crop became the default: read as made, without one.
    config = Manifest.from_dict(record).preprocess_config()
    assert not config.lungs.enabled and not config.markings.remove_all



def test_shards_made_with_other_levers_than_the_models_data_are_refused():
    from cxr.scoring.export import Export, check_compatible

    levers = dataclasses.replace(BOTH, markings=MarkingConfig(remove_all=True))
    model = Export(uri="run/model", manifest=as_manifest({"config": levers.to_dict()}), training={})
    check_compatible(model, as_manifest({"config": levers.to_dict()}), "same")
    with pytest.raises(UserError, match="^plain: made with --no-lung-crop, the model's training data with "
                                        "--lung-crop --lung-suppress --lung-margin 0.05 --remove-all-markings; "):
        check_compatible(model, as_manifest(), "plain")
    plain = Export(uri="run/model", manifest=as_manifest(), training={})
    with pytest.raises(UserError, match="^cropped: made with --lung-crop --lung-suppress"):
        check_compatible(plain, as_manifest({"config": BOTH.to_dict()}), "cropped")


@pytest.mark.slow
def test_evaluate_and_predict_see_the_training_pixels(ray_session, tmp_path):
    """Shards (training) and the scoring datasets (evaluate's raw images, predict) agree pixel for pixel."""
    import pyarrow.parquet as pq

    from cxr.artifacts import read_manifest
    from cxr.ingest import sources
    from cxr.preprocess.pipeline import run_preprocess
    from cxr.scoring.datasets import preprocessed_images

    source = tmp_path / "raw"
    for class_name in ("COVID", "Normal"):
        (source / class_name).mkdir(parents=True)
        for index in range(4):
            data, _ = render_synthetic_png(class_name, index, size=160, marking_fraction=0.5)
            (source / class_name / f"{index}.png").write_bytes(data)
    config = PreprocessConfig(source=str(source), output=str(tmp_path / "shards"), image_size=64,
                              markings=MarkingConfig(policy="inpaint", remove_all=True),
                              lungs=LungFocusConfig(crop=True, suppress=True),
                              split=dataclasses.replace(PreprocessConfig().split, train=0.5, val=0.25, test=0.25))
    run_preprocess(config)
    manifest = read_manifest(config.output)
    trained, found, inpainted = {}, [], []
    for shard in (shard for files in manifest.shards.values() for shard in files):
        table = pq.read_table(tmp_path / "shards" / shard.path,
                              columns=["source_uri", "image_png", "lungs_found", "marking_inpainted"]).to_pylist()
        trained.update({row["source_uri"]: decode_png_gray(row["image_png"]) for row in table})
        found += [row["lungs_found"] for row in table]
        inpainted += [row["marking_inpainted"] for row in table]
    assert trained
    # The manifest counts what the shards hold: lung fields found or the template, marks inpainted.
    assert None not in found and dict(manifest.counts.lungs) == {"found": found.count(True),
                                                                 "template": found.count(False)}
    assert manifest.counts.inpainted == sum(inpainted) > 0
    # Evaluate on raw images and predict both list raw images and preprocess them with these settings.
    scoring = manifest.preprocess_config(source=str(source))
    assert scoring.lungs == config.lungs and scoring.markings.remove_all
    rows = preprocessed_images(sources.list_source(scoring).items, scoring).take_all()
    scored = {row["source_uri"]: row["image"][..., 0] for row in rows if row["status"] == "ok"}
    assert set(trained) <= set(scored)
    for uri, pixels in trained.items():
        np.testing.assert_array_equal(scored[uri], pixels)
