"""The evaluation's figures, each a function from plain numbers to PNG bytes.

The evaluation computes the numbers (ROC points, confusion counts, calibration bins,
Grad-CAM overlays) and writes them as JSON beside these figures; the figures only draw
them, so a plot can be redrawn from the JSON and a test needs no model. Inputs that do not
fit together raise ValueError rather than drawing something misleading.
"""

from __future__ import annotations

import math

import numpy as np

from cxr.plotting import png, pyplot

BIN_KEYS = ("low", "high", "count", "confidence", "accuracy")


def roc_png(curves: dict[str, tuple], title: str) -> bytes:
    """ROC curves, {name: (fpr, tpr, auc)}, on one plot with the chance diagonal.

    Several curves compare the same model on differently masked inputs ("full image",
    "lungs masked", "lungs only"): a model that still scores well without the lungs has
    learned a shortcut. `auc` may be None (not computable, e.g. one class only).
    """
    if not curves:
        raise ValueError("roc_png needs at least one curve")
    checked = {name: _roc_points(name, curve) for name, curve in curves.items()}
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5.0))
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in checked.items():
        axis.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC {_fmt(auc)})")
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
             title=title, aspect="equal")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    return png(plt, figure)


def confusion_png(matrix: list[list[int]], class_names: list[str], title: str) -> bytes:
    """The confusion matrix (rows true, columns predicted): counts and row percentages.

    Colour is the row fraction, so a rare class reads as clearly as a common one. A class
    with no images (an empty row) shows counts of 0 and no percentages.
    """
    counts = np.asarray(matrix)
    n = len(class_names)
    if n == 0 or counts.shape != (n, n):
        raise ValueError(f"confusion matrix must be {n}x{n} for {n} class names, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError("confusion matrix entries must be non-negative integers")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    plt = pyplot()
    side = 2.2 + 1.1 * n
    figure, axis = plt.subplots(figsize=(side + 1.0, side))
    image = axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for row in range(n):
        for column in range(n):
            share = f"\n{100 * fractions[row, column]:.1f}%" if totals[row, 0] else ""
            # White text on the dark cells, black on the light ones.
            color = "white" if fractions[row, column] > 0.6 else "black"
            axis.text(column, row, f"{counts[row, column]}{share}", ha="center", va="center",
                      color=color, fontsize=10)
    axis.set(xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names,
             xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    return png(plt, figure)


def reliability_png(bins: list[dict], ece: float, title: str) -> bytes:
    """A reliability diagram: accuracy per confidence bin against the diagonal, with counts.

    Each bin is {"low", "high", "count", "confidence", "accuracy"}; an empty bin has count 0
    and None for both means, and gets no bar. Bars below the diagonal are overconfidence.
    """
    checked = [_bin(i, b) for i, b in enumerate(bins)]
    if not checked:
        raise ValueError("reliability_png needs at least one bin")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5.0))
    axis.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    filled = [b for b in checked if b["count"]]
    axis.bar([b["low"] for b in filled], [b["accuracy"] for b in filled],
             width=[b["high"] - b["low"] for b in filled], align="edge",
             color="tab:blue", edgecolor="black", alpha=0.8, label="accuracy")
    axis.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o",
              color="tab:orange", markersize=4, label="mean confidence")
    for b in checked:
        height = b["accuracy"] if b["count"] else 0.0
        axis.text((b["low"] + b["high"]) / 2, min(height + 0.02, 0.97), str(b["count"]),
                  ha="center", va="bottom", fontsize=7)
    axis.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence", ylabel="accuracy",
             title=f"{title}\nECE {_fmt(ece)} (numbers: images per bin)", aspect="equal")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    return png(plt, figure)


def gradcam_grid_png(panels: list[tuple[str, np.ndarray]], title: str, columns: int = 4) -> bytes:
    """Captioned RGB uint8 images (Grad-CAM overlays) in a grid, `columns` wide."""
    if not panels:
        raise ValueError("gradcam_grid_png needs at least one panel")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    for caption, image in panels:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"panel {caption!r} must be an RGB uint8 (H, W, 3) image, "
                             f"got {image.dtype} of shape {image.shape}")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (caption, image) in zip(axes.flat, panels):
        axis.imshow(np.asarray(image))
        axis.set_title(caption, fontsize=8)
    figure.suptitle(title)
    return png(plt, figure)


def _roc_points(name: str, curve) -> tuple[np.ndarray, np.ndarray, float | None]:
    if len(curve) != 3:
        raise ValueError(f"ROC curve {name!r} must be (fpr, tpr, auc)")
    fpr, tpr, auc = curve
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if fpr.ndim != 1 or fpr.shape != tpr.shape or len(fpr) < 2:
        raise ValueError(f"ROC curve {name!r}: fpr and tpr must be two equally long lists of at least "
                         f"2 points, got shapes {fpr.shape} and {tpr.shape}")
    return fpr, tpr, auc


def _bin(index: int, b: dict) -> dict:
    missing = [key for key in BIN_KEYS if key not in b]
    if missing:
        raise ValueError(f"calibration bin {index} lacks {', '.join(missing)}")
    if not 0 <= b["low"] < b["high"] <= 1 or b["count"] < 0:
        raise ValueError(f"calibration bin {index} must have 0 <= low < high <= 1 and count >= 0, got {b}")
    has_means = b["confidence"] is not None and b["accuracy"] is not None
    if has_means != (b["count"] > 0):
        raise ValueError(f"calibration bin {index}: confidence and accuracy must be numbers exactly "
                         f"when count > 0, got {b}")
    return b


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
