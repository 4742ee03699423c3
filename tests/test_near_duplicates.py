"""Near-duplicates: fingerprints, groups, and a split that keeps every group in one split."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cxr.config import PreprocessConfig, SplitConfig
from cxr.ingest.sources import list_source
from cxr.preprocess.fingerprints import (FINGERPRINT_BITS, hamming_distance, near_duplicate_groups,
                                         nearest_distances, perceptual_hash)
from cxr.preprocess.pipeline import process_image
from cxr.preprocess.shards import assign_splits, group_near_duplicates
from cxr.scoring.datasets import preprocess_for_model
from tests.trees import synthetic_png, write_tree

DISTANCE = 24


def smooth_image(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random picture: like X-rays, its content is in low frequencies."""
    noise = np.random.default_rng(seed).random((size, size))
    smooth = ndimage.gaussian_filter(noise, 6)
    return np.rint((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)


def jpeg_copy(pixels: np.ndarray, quality: int = 60) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def test_copies_are_near_and_other_images_far():
    original = smooth_image(0)
    copies = {
        "resized": np.asarray(Image.fromarray(original).resize((96, 96), Image.Resampling.BILINEAR)),
        "re-windowed": np.rint(255 * (original / 255.0) ** 0.8).astype(np.uint8),
        "re-compressed": jpeg_copy(original),
    }
    fingerprint = perceptual_hash(original)
    assert len(fingerprint) == FINGERPRINT_BITS // 4
    for name, copy in copies.items():
        assert hamming_distance(fingerprint, perceptual_hash(copy)) <= DISTANCE, name
    for seed in range(1, 6):
        assert hamming_distance(fingerprint, perceptual_hash(smooth_image(seed))) > 3 * DISTANCE


def fingerprint_with(bits: set[int]) -> str:
    """A fingerprint whose set bits are `bits`: distances between such are set differences."""
    return f"{sum(1 << (FINGERPRINT_BITS - 1 - b) for b in bits):0{FINGERPRINT_BITS // 4}x}"


def test_groups_are_connected_components_at_the_distance():
    prints = [fingerprint_with(set()), fingerprint_with({1, 2, 3}), fingerprint_with({1, 2, 3, 4, 5, 6}),
              fingerprint_with(set(range(100, 140)))]
    assert hamming_distance(prints[0], prints[2]) == 6
    # 0-1 and 1-2 are 3 apart: one group through 1, though 0 and 2 are 6 apart.
    assert near_duplicate_groups(prints, 3) == [0, 0, 0, 3]
    assert near_duplicate_groups(prints, 2) == [0, 1, 2, 3]
    assert near_duplicate_groups(prints, 40) == [0, 0, 0, 0]
    assert nearest_distances(prints[:2], prints[2:]).tolist() == [6, 3]
    assert nearest_distances(prints[:1], []).tolist() == [FINGERPRINT_BITS + 1]


def row(uri: str, label: int, bits: set[int]) -> dict:
    return {"source_uri": uri, "label": label, "class_name": ["COVID", "Normal"][label],
            "content_hash": f"hash-{uri}", "fingerprint": fingerprint_with(bits)}


def test_a_group_stays_in_one_split_and_conflicting_groups_are_rejected():
    rows = [row(f"n{i}", 1, {i}) for i in range(40)]  # 40 Normal images, each 2 bits from the next
    rows += [row(f"c{i}", 0, {200 + i, 201 + i, 202 + i, 203 + i, 204 + i, 205 + i}) for i in range(0, 48, 6)]
    rows += [row("conflict-a", 0, set(range(60, 90))), row("conflict-b", 1, set(range(60, 91)))]
    kept, rejected, counts = group_near_duplicates(rows, max_distance=2)
    assert sorted(r["source_uri"] for r in rejected) == ["conflict-a", "conflict-b"]
    assert {r["reason"] for r in rejected} == {"conflicting_duplicate"}
    assert "near-duplicate images filed as COVID, Normal" in rejected[0]["detail"]
    assert len(kept) + len(rejected) == len(rows)
    assert counts == {"max_distance": 2, "groups": 2, "images_in_groups": 42, "group_sizes": {"2": 1, "40": 1}}
    assignment = assign_splits(kept, SplitConfig())
    assert len({assignment[f"n{i}"] for i in range(40)}) == 1  # the chained group, whole


def test_without_groups_the_split_is_the_pixel_hash_split():
    rows = [row(f"n{i}", 1, {i}) for i in range(50)]
    kept, _, counts = group_near_duplicates(rows, max_distance=-1)
    assert counts["groups"] == 0
    splits = list(assign_splits(kept, SplitConfig()).values())
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (40, 5, 5)
    assert assign_splits(kept, SplitConfig()) == assign_splits(rows, SplitConfig())


@pytest.mark.parametrize("distance", [-2, 256])
def test_the_distance_is_checked(distance):
    from cxr.errors import UserError

    with pytest.raises(UserError, match="near-duplicate-distance"):
        SplitConfig(near_duplicate_distance=distance)


def test_a_held_out_sources_near_duplicates_go_to_test_with_it():
    # 40 Normal images of a training source; two of them are near-copies of a held-out one.
    rows = [{**row(f"a{i}", 1, {3 * i}), "source": "a"} for i in range(40)]
    rows += [{**row("b0", 1, {0, 1}), "source": "b"}, {**row("b1", 1, {200}), "source": "b"}]
    kept, rejected, counts = group_near_duplicates(rows, max_distance=1)
    assert not rejected and counts["groups"] == 1  # b0 with a0, 1 bit apart
    assignment = assign_splits(kept, SplitConfig(test_sources=("b",)))
    assert assignment["b0"] == assignment["b1"] == assignment["a0"] == "test"
    rest = [r for r in kept if r["source_uri"] not in ("a0", "b0", "b1")]
    assert {u: s for u, s in assignment.items() if u not in ("a0", "b0", "b1")} == assign_splits(rest, SplitConfig())


def test_raw_images_scored_carry_the_fingerprint_preprocessing_gives_them(tmp_path):
    """Evaluation on a raw tree looks its images up in the training data by these fingerprints."""
    import pyarrow as pa

    files = {"COVID/a.png": synthetic_png("COVID", 0), "Normal/b.png": synthetic_png("Normal", 1),
             "Normal/broken.png": b"not a png"}
    config = PreprocessConfig(source=str(write_tree(tmp_path / "raw", files)), output="unused", image_size=32)
    rows = preprocess_for_model(pa.Table.from_pylist(list_source(config).items), config)
    found = dict(zip((u.rsplit("/", 1)[-1] for u in rows["source_uri"]), rows["fingerprint"]))
    assert found == {"a.png": process_image(files["COVID/a.png"], config)["fingerprint"],
                     "b.png": process_image(files["Normal/b.png"], config)["fingerprint"], "broken.png": None}


def test_the_fingerprint_is_of_the_whole_film_whatever_the_lung_focus():
    """A copy's lung box moves with its resizing, so a fingerprint of the crop would miss it:
    the fingerprint is of the image as it would be without the lung focus."""
    from cxr.config import LungFocusConfig

    original = synthetic_png("COVID", 3)
    pixels = np.asarray(Image.open(io.BytesIO(original)))
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((150, 150), Image.Resampling.BILINEAR).save(buffer, format="PNG")
    whole = PreprocessConfig(image_size=64, lungs=LungFocusConfig(crop=False))
    for lungs in (LungFocusConfig(crop=True), LungFocusConfig(crop=True, suppress=True),
                  LungFocusConfig(crop=False, suppress=True)):
        focused = PreprocessConfig(image_size=64, lungs=lungs)
        for data in (original, buffer.getvalue()):
            assert process_image(data, focused)["fingerprint"] == process_image(data, whole)["fingerprint"]
            assert process_image(data, focused)["image_png"] != process_image(data, whole)["image_png"]
