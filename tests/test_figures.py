"""The evaluation's figures: real PNGs with something drawn, edge cases drawn, bad inputs refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr.evaluate import figures


def decoded(png: bytes) -> np.ndarray:
    """The PNG's pixels; fails unless it is a real, non-trivial, non-blank image."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.width >= 200 and image.height >= 200, image.size
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0
    return pixels


def reliability_bins(counts: list[int]) -> list[dict]:
    edges = np.linspace(0, 1, len(counts) + 1)
    return [{"low": float(lo), "high": float(hi), "count": c,
             "confidence": (lo + hi) / 2 if c else None, "accuracy": min(1.0, lo + 0.05) if c else None}
            for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


def test_roc_draws_several_curves():
    fpr = np.linspace(0, 1, 50)
    curves = {"full image": (fpr, np.sqrt(fpr), 0.667), "lungs masked": (fpr, fpr ** 0.8, 0.556),
              "lungs only": ([0.0, 1.0], [0.0, 1.0], None)}  # two points; AUC not computable
    one = decoded(figures.roc_png({"full image": curves["full image"]}, "test ROC"))
    three = decoded(figures.roc_png(curves, "test ROC"))
    assert one.shape == three.shape and not np.array_equal(one, three)


@pytest.mark.parametrize("curves", [
    {},
    {"a": ([0, 0.5, 1], [0, 1], 0.9)},  # fpr and tpr of different lengths
    {"a": ([0.5], [0.5], 0.5)},  # one point is no curve
    {"a": ([0, 1], [0, 1])},  # no auc
])
def test_roc_refuses_bad_curves(curves):
    with pytest.raises(ValueError):
        figures.roc_png(curves, "bad")


def test_confusion_matrix_with_an_empty_class():
    decoded(figures.confusion_png([[40, 3], [5, 52]], ["COVID", "Normal"], "2 classes"))
    # No image of "Viral Pneumonia" in the test split: an empty row, no division by zero.
    decoded(figures.confusion_png([[10, 2, 0], [0, 0, 0], [1, 1, 30]], ["COVID", "Viral Pneumonia", "Normal"],
                                  "3 classes"))


@pytest.mark.parametrize("matrix, names", [
    ([[1, 2], [3, 4]], ["only one"]),
    ([[1, 2, 3], [4, 5, 6]], ["a", "b"]),
    ([[1, 2], [3]], ["a", "b"]),  # ragged
    ([[1, -2], [3, 4]], ["a", "b"]),
    ([[1.5, 2], [3, 4]], ["a", "b"]),
    ([], []),
])
def test_confusion_refuses_mismatched_inputs(matrix, names):
    with pytest.raises(ValueError):
        figures.confusion_png(matrix, names, "bad")


def test_reliability_with_empty_bins():
    every_bin = reliability_bins([5, 8, 13, 21, 34, 55, 89, 144, 233, 377])
    most_empty = reliability_bins([0, 0, 0, 0, 0, 3, 0, 10, 40, 200])
    full = decoded(figures.reliability_png(every_bin, 0.042, "calibrated-ish"))
    sparse = decoded(figures.reliability_png(most_empty, float("nan"), "most bins empty"))
    assert full.shape == sparse.shape and not np.array_equal(full, sparse)
    decoded(figures.reliability_png(reliability_bins([0] * 10), 0.0, "all empty"))


@pytest.mark.parametrize("change", [
    {"accuracy": None},  # a filled bin without its accuracy
    {"count": 0},  # an empty bin with means
    {"low": 0.5, "high": 0.4},
    {"count": -1},
])
def test_reliability_refuses_inconsistent_bins(change):
    bins = reliability_bins([4, 6])
    bins[1] = {**bins[1], **change}
    with pytest.raises(ValueError):
        figures.reliability_png(bins, 0.1, "bad")
    missing = [{k: v for k, v in b.items() if k != "count"} for b in reliability_bins([4, 6])]
    with pytest.raises(ValueError, match="count"):
        figures.reliability_png(missing, 0.1, "bad")
    with pytest.raises(ValueError):
        figures.reliability_png([], 0.1, "bad")


def test_gradcam_grid_of_panels():
    rng = np.random.default_rng(0)
    panels = [(f"COVID p={i / 10:.2f}", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(6)]
    two_rows = decoded(figures.gradcam_grid_png(panels, "Grad-CAM", columns=4))
    one_panel = decoded(figures.gradcam_grid_png(panels[:1], "Grad-CAM", columns=4))
    assert two_rows.shape[0] > one_panel.shape[0] and two_rows.shape[1] > one_panel.shape[1]


@pytest.mark.parametrize("panels, columns", [
    ([], 4),
    ([("gray", np.zeros((8, 8), np.uint8))], 4),
    ([("float", np.zeros((8, 8, 3), np.float32))], 4),
    ([("ok", np.zeros((8, 8, 3), np.uint8))], 0),
])
def test_gradcam_grid_refuses_bad_panels(panels, columns):
    with pytest.raises(ValueError):
        figures.gradcam_grid_png(panels, "bad", columns=columns)


def test_figures_are_closed():
    from matplotlib import pyplot as plt

    figures.roc_png({"a": ([0, 1], [0, 1], 0.5)}, "t")
    figures.confusion_png([[1]], ["only"], "t")
    assert plt.get_fignums() == []
