"""Near-duplicates through the preprocessing job and the evaluation's leakage check, on a real local Ray."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cxr.config import PreprocessConfig, SplitConfig
from cxr.evaluate.overlap import fingerprint_overlap, training_overlap
from cxr.preprocess.pipeline import run_preprocess
from tests.test_near_duplicates import smooth_image
from tests.test_preprocess_job import check_consistent, read_output
from tests.trees import png_bytes, write_tree

pytestmark = pytest.mark.slow


def copies_of(pixels: np.ndarray) -> list[bytes]:
    """The same picture as another collection would ship it: resized, re-windowed, re-compressed."""
    resized = np.asarray(Image.fromarray(pixels).resize((150, 150), Image.Resampling.BILINEAR))
    rewindowed = np.rint(255 * (pixels / 255.0) ** 0.8).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=70)
    return [png_bytes(resized), png_bytes(rewindowed), buffer.getvalue()]


def test_near_duplicates_are_grouped_counted_and_kept_in_one_split(ray_session, tmp_path):
    files = {}
    for c, class_name in enumerate(("COVID", "Normal")):
        for i in range(12):
            pixels = smooth_image(100 * c + i, size=192)
            files[f"{class_name}/{class_name}-{i}.png"] = png_bytes(pixels)
            if i < 3:  # three pictures per class come from other collections too
                for k, data in enumerate(copies_of(pixels)):
                    files[f"{class_name}/{class_name}-{i}-copy{k}.{'jpg' if k == 2 else 'png'}"] = data
    # One picture filed under both classes by two collections: its labels contradict.
    files["Normal/Normal-conflict.png"] = copies_of(smooth_image(5, size=192))[0]
    output = tmp_path / "shards"
    run_preprocess(PreprocessConfig(source=str(write_tree(tmp_path / "raw", files)), output=str(output),
                                    image_size=64, split=SplitConfig(near_duplicate_distance=24)))
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    assert manifest["counts"]["found"] == len(files)
    near = manifest["counts"]["near_duplicates"]
    # Three pictures a class with three copies each; and COVID-5 with its copy filed as Normal.
    assert near == {"max_distance": 24, "groups": 7, "images_in_groups": 26, "group_sizes": {"2": 1, "4": 6}}
    conflicting = sorted(r["source_uri"].rsplit("/", 1)[-1] for r in rejected if r["reason"] == "conflicting_duplicate")
    assert conflicting == ["COVID-5.png", "Normal-conflict.png"]
    splits_of_picture: dict[str, set[str]] = {}
    for split, rows in splits.items():
        for r in rows:
            picture = r["source_uri"].rsplit("/", 1)[-1].rsplit(".", 1)[0].split("-copy")[0]
            splits_of_picture.setdefault(picture, set()).add(split)
    assert len(splits_of_picture) == 2 * 12 - 1
    assert all(len(where) == 1 for where in splits_of_picture.values()), splits_of_picture


def test_the_leakage_check_finds_every_training_image_in_the_training_data(ray_session, tiny_shards):
    manifest, splits, _ = read_output(tiny_shards)
    train_uris = [r["source_uri"] for r in splits["train"]]
    overlap = training_overlap(tiny_shards, tiny_shards, "train", train_uris)
    assert overlap["evaluated_images"] == overlap["training_images"] == len(train_uris)
    assert overlap["with_near_duplicate"] == overlap["with_same_fingerprint"] == len(train_uris)
    assert overlap["max_distance"] == 24  # the tiny shards were made without grouping
    test = training_overlap(tiny_shards, tiny_shards, "test", [r["source_uri"] for r in splits["test"]])
    assert test["evaluated_images"] == len(splits["test"]) and test["with_same_fingerprint"] == 0
    # A raw tree's fingerprints (computed while it is scored) are compared alike.
    assert fingerprint_overlap(tiny_shards, [r["fingerprint"] for r in splits["test"]]) == test
    trained = fingerprint_overlap(tiny_shards, [r["fingerprint"] for r in splits["train"][:3]])
    assert trained["with_same_fingerprint"] == 3
    # Shards without fingerprints (made before they existed) give no answer rather than a wrong one.
    assert all(pq.read_schema(f"{tiny_shards}/{s['path']}").field("fingerprint") for s in manifest["shards"]["train"])
