"""Shortcut checks: does the model read the lungs, or the hospital?

In the COVID-19 Radiography Database class and source hospital are confounded: COVID
images come from other collections than most Normal ones, with their own exposure,
borders, text and devices. A model can score well by reading those (DeGrave et al.
2021, Nature Machine Intelligence). So the evaluation scores each image three ways:

- `full`: as preprocessed;
- `lungs_masked`: the lung fields blacked out. The disease is in the lungs; a model that
  still separates the classes here is reading something else;
- `lungs_only`: everything outside the lung fields blacked out: what the lungs alone give.

The lung fields are a fixed template of two ellipses on the centred, square frontal
image the preprocessing produces, fitted to the mean of the real sample's images (dark
lung fields at x 0.16-0.48 and 0.52-0.84, y 0.13-0.79 of the side). A template needs no
segmentation model and treats every image alike; it misses lungs of unusual position or
size, which the report says. Images cropped to their lung fields (`--lung-crop`) get the
same template fitted to the crop's frame: the crop is the lungs' box grown by the margin
on every side, so the template's box is scaled to fill the frame less that margin.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

VARIANTS = ("full", "lungs_masked", "lungs_only")
# (centre x, centre y, half width, half height), fractions of the image side; left, right.
LUNG_ELLIPSES = ((0.32, 0.46, 0.16, 0.33), (0.68, 0.46, 0.16, 0.33))


def template_ellipses(crop_margin: float | None = None) -> tuple[tuple[float, float, float, float], ...]:
    """LUNG_ELLIPSES, or, for images cropped to their lung fields grown by `crop_margin`, the
    same ellipses with their joint box scaled to [m, 1 - m] of the side, m = margin / (1 + 2 margin)."""
    if crop_margin is None:
        return LUNG_ELLIPSES
    inner = crop_margin / (1 + 2 * crop_margin)
    left, right = min(cx - rx for cx, _, rx, _ in LUNG_ELLIPSES), max(cx + rx for cx, _, rx, _ in LUNG_ELLIPSES)
    top, bottom = min(cy - ry for _, cy, _, ry in LUNG_ELLIPSES), max(cy + ry for _, cy, _, ry in LUNG_ELLIPSES)
    scale_x, scale_y = (1 - 2 * inner) / (right - left), (1 - 2 * inner) / (bottom - top)
    return tuple((inner + (cx - left) * scale_x, inner + (cy - top) * scale_y, rx * scale_x, ry * scale_y)
                 for cx, cy, rx, ry in LUNG_ELLIPSES)


@functools.cache
def lung_field_mask(height: int, width: int, crop_margin: float | None = None) -> np.ndarray:
    """True inside the lung-field template (template_ellipses), as a (height, width) boolean array."""
    rows, cols = np.mgrid[0:height, 0:width]
    y, x = (rows + 0.5) / height, (cols + 0.5) / width
    inside = np.zeros((height, width), dtype=bool)
    for cx, cy, rx, ry in template_ellipses(crop_margin):
        inside |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    inside.flags.writeable = False  # cached and shared: nobody may change it
    return inside


def apply_variant(images: np.ndarray, variant: str, crop_margin: float | None = None) -> np.ndarray:
    """A copy of (n, H, W, 1) images with the variant's region set to 0 (black); `crop_margin`
    for images cropped to their lung fields (template_ellipses)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if variant == "full":
        return images
    lungs = lung_field_mask(images.shape[1], images.shape[2], crop_margin)[None, :, :, None]
    keep = ~lungs if variant == "lungs_masked" else lungs
    return np.where(keep, images, np.zeros((), dtype=images.dtype))


def variant_functions(variants: tuple[str, ...] = VARIANTS, crop_margin: float | None = None
                      ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """{variant: its function of (n, H, W, 1) images}, as cxr.scoring.predictor.score takes them;
    `crop_margin` for images cropped to their lung fields (lung_crop_margin)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}")
    return {variant: functools.partial(apply_variant, variant=variant, crop_margin=crop_margin)
            for variant in variants}


def lung_crop_margin(export) -> float | None:
    """The lung crop's margin of the model's training images (which the scored images share:
    cxr.scoring.export.check_compatible), None when they were not cropped."""
    lungs = export.manifest.preprocess_config().lungs
    return lungs.margin if lungs.crop else None


# At or below this lower bound of the full-image AUC the shortcut check has nothing to say.
WEAK_MODEL_AUC = 0.6


def verdict(full_auc: dict, masked_auc: dict, lungs_only_auc: dict) -> str:
    """The shortcut finding in words, from AUCs with their intervals ({"value", "ci_low", "ci_high"})."""
    def fmt(auc: dict) -> str:
        if auc["value"] is None:
            return "n/a"
        return f"{auc['value']:.3f} (95% CI {auc['ci_low']:.3f}-{auc['ci_high']:.3f})"

    if masked_auc["value"] is None or full_auc["value"] is None:
        return "The shortcut check could not be computed: the evaluated images hold one class only."
    lines = [f"AUC on full images {fmt(full_auc)}; with the lung fields blacked out {fmt(masked_auc)}; "
             f"with only the lung fields left {fmt(lungs_only_auc)}."]
    full_low = full_auc["ci_low"] if full_auc["ci_low"] is not None else full_auc["value"]
    if full_low <= WEAK_MODEL_AUC:
        # A model near chance on whole images has nothing to lose when the lungs go: a low
        # masked AUC would then say nothing about where it looks.
        lines.append(f"The model itself is not clearly better than chance on these images (the lower bound "
                     f"of its AUC is {full_low:.3f}), so this check cannot tell whether it reads the lungs "
                     "or shortcuts.")
        return " ".join(lines)
    masked_low = masked_auc["ci_low"] if masked_auc["ci_low"] is not None else masked_auc["value"]
    if masked_low > 0.7:
        lines.append("WARNING: without the lungs the model still separates the classes well, so it reads "
                     "shortcuts outside the lung fields (source hospital, borders, text, devices, patient "
                     "position). Its accuracy here is not evidence that it recognises COVID-19 in the lungs.")
    elif masked_low > 0.5:
        lines.append("Without the lungs the model separates the classes better than chance: part of what it "
                     "uses lies outside the lung fields, a likely shortcut.")
    else:
        lines.append("Without the lungs the model is not shown to be better than chance: no shortcut outside "
                     "the lung fields was detected by this check.")
    if lungs_only_auc["value"] is not None and lungs_only_auc["value"] < full_auc["value"] - 0.1:
        lines.append("With only the lungs visible the AUC drops markedly: the model depends on the image "
                     "outside the lungs.")
    return " ".join(lines)
