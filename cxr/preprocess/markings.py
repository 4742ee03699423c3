"""Burned-in marking detector: scores how much of a chest X-ray is text, arrows or rulers.

The source paper dropped radiographs with heavy burned-in annotations because a classifier
can learn a hospital's text overlay instead of the lungs. Laterality letters ("L", "R") are
on almost every film and are not a reason to drop one.

Approach, at a working resolution of at most 400 px: a white top-hat (and a black one
inside white boxes) isolates thin strokes that close most of the gap to full white, as a
burned-in overlay does whatever lies under it. Three narrow detectors then look for what
anatomy and hardware do not make: rows of three or more sharp-edged characters, straight
axis-aligned lines carrying evenly spaced ticks, and solid, flat-valued, head-heavy arrow
shapes. The score saturates with the image fraction covered by what they find. Each
constant was tuned on the 3,800 real images of the shared sample, with markings drawn
onto them by cxr.ingest.synthetic.draw_marking, and checked on synthetic images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import label
from skimage.morphology import closing, dilation, erosion, footprint_rectangle, opening

# The smallest heavy marking found (a 3-character text row, one arrow) covers 0.1-0.2% of
# the image; the score crosses 0.5 (the default threshold, cxr.config.DEFAULT_MARKING_THRESHOLD)
# at 0.1%, so any one of them drops the image, while a lone laterality letter, which none
# of the three detectors accepts, scores 0. Scores are nearly binary in practice.
_EVIDENCE_AT_THRESHOLD = 0.001

_MAX_WORK_SIDE = 400  # larger inputs are block-averaged to at most this, for speed
_FOOTPRINT_FRACTION = 0.05  # top-hat footprint: wider than any glyph stroke or arrow head
_MIN_GLYPH_SHARPNESS = 0.75  # edge step / stroke contrast; see _text
_MIN_ARROW_SHARPNESS = 0.5  # the same on a solid shape's rim; see _arrows
_MIN_ARROW_SKEWNESS = 0.25  # mass skewness along the principal axis; see _arrows


@dataclass(frozen=True)
class MarkingResult:
    score: float  # in [0, 1]; 0 = clean, 1 = heavily marked
    mask: np.ndarray  # bool, same shape as the input: pixels judged to be markings


# ---------------------------------------------------------------- components


@dataclass(frozen=True)
class _Components:
    labels: np.ndarray  # int, 0 = background
    pixels: np.ndarray  # flat indices of labelled pixels
    ids: np.ndarray  # component index (label - 1) of each of those pixels
    top: np.ndarray
    bottom: np.ndarray  # inclusive
    left: np.ndarray
    right: np.ndarray  # inclusive
    area: np.ndarray

    @property
    def height(self) -> np.ndarray:
        return self.bottom - self.top + 1

    @property
    def width(self) -> np.ndarray:
        return self.right - self.left + 1

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-component sum of a per-pixel map (only labelled pixels are read)."""
        return np.bincount(self.ids, weights=values.ravel()[self.pixels], minlength=len(self.area))

    def inside(self, shape: tuple[int, int]) -> np.ndarray:
        # Components hugging the border are collimation edges, frame lines or scanner
        # artefacts; overlays are placed a little inside the field.
        margin = _border_margin(shape)
        return (
            (self.top >= margin)
            & (self.left >= margin)
            & (self.bottom < shape[0] - margin)
            & (self.right < shape[1] - margin)
        )


def _border_margin(shape: tuple[int, int]) -> int:
    return max(2, int(round(0.01 * min(shape))))


def _components(mask: np.ndarray) -> _Components:
    # Vectorised bounding boxes: regionprops builds one Python object per component,
    # which costs more than the whole detector on a noisy image.
    labels = label(mask, connectivity=2)
    pixels = np.flatnonzero(labels)
    ids = labels.ravel()[pixels] - 1
    rows, cols = np.divmod(pixels, labels.shape[1])
    count = int(labels.max())
    top = np.full(count, np.iinfo(np.int64).max)
    left = top.copy()
    bottom = np.full(count, -1)
    right = bottom.copy()
    np.minimum.at(top, ids, rows)
    np.minimum.at(left, ids, cols)
    np.maximum.at(bottom, ids, rows)
    np.maximum.at(right, ids, cols)
    area = np.bincount(ids, minlength=count)
    return _Components(labels, pixels, ids, top, bottom, left, right, area)


def _run_starts(mask: np.ndarray) -> np.ndarray:
    """Pixels where a horizontal run of True begins."""
    starts = mask.copy()
    starts[:, 1:] &= ~mask[:, :-1]
    return starts


# ---------------------------------------------------------------- text rows


def _edge_strength(small: np.ndarray) -> np.ndarray:
    """Largest step to any 4-neighbour: high where an edge is one pixel wide."""
    dx = np.abs(np.diff(small, axis=1))
    dy = np.abs(np.diff(small, axis=0))
    step = np.zeros_like(small)
    step[:, 1:] = dx
    step[:, :-1] = np.maximum(step[:, :-1], dx)
    step[1:] = np.maximum(step[1:], dy)
    step[:-1] = np.maximum(step[:-1], dy)
    return step


def _text(strokes: np.ndarray, contrast: np.ndarray, edges: np.ndarray) -> tuple[float, np.ndarray]:
    """Rows of at least three characters: the signature of burned-in text."""
    shape = strokes.shape
    height = shape[0]
    # Close the gaps between letters and between words, so a line becomes a few blobs.
    gap = max(3, int(round(0.015 * height)) | 1)
    words = _components(dilation(strokes, footprint_rectangle((1, gap))))
    if words.area.size == 0:
        return 0.0, np.zeros(shape, dtype=bool)
    # A row of characters crosses about 1.5 strokes per character on each pixel row, so
    # counting stroke starts per row estimates characters without segmenting glyphs. Fonts
    # a few pixels high blur into solid words, which the width (about 0.8 heights a
    # character) counts instead; only there, as a bone is a solid bar too.
    per_row = words.sum(_run_starts(strokes)) / words.height
    blurred = (per_row >= 1.3) & (words.height <= 7)
    characters = np.maximum(per_row / 1.5, np.where(blurred, words.width / (0.8 * words.height), 0.0))
    # Rendered glyphs reach their full contrast within one pixel; bone, whose brightness
    # follows its thickness, ramps up over several. Measured on real films with drawn
    # text: glyphs above 0.84 in 95% of words, anatomy mostly below 0.7.
    sharpness = words.sum(edges * strokes) / np.maximum(words.sum(contrast * strokes), 1e-6)
    plausible = (
        words.inside(shape)
        & (_busiest_row_share(words, strokes) <= 0.55)
        & (words.height >= 3)
        & (words.height <= 0.08 * height)
        & (words.width <= 0.5 * shape[1])
        & (words.sum(strokes) >= 0.15 * words.height * words.width)
        & (sharpness >= _MIN_GLYPH_SHARPNESS)
    )
    in_row = _group_rows(words, plausible, characters) & plausible
    box = (words.height * words.width)[in_row]
    lookup = np.concatenate([[False], in_row])
    return float(box.sum()) / (shape[0] * shape[1]), lookup[words.labels] & strokes


def _busiest_row_share(words: _Components, strokes: np.ndarray) -> np.ndarray:
    """Share of each word's stroke pixels on its fullest pixel row.

    Glyphs spread their strokes over their height; a bright line at the edge of the
    exposed field (an edge-enhancement overshoot) puts nearly all of them on one row.
    """
    on_stroke = strokes.ravel()[words.pixels]
    rows = words.pixels[on_stroke] // strokes.shape[1]
    ids = words.ids[on_stroke]
    depth = int(words.height.max())
    per_row = np.bincount(ids * depth + (rows - words.top[ids]), minlength=len(words.area) * depth)
    per_row = per_row.reshape(len(words.area), depth)
    return per_row.max(axis=1) / np.maximum(per_row.sum(axis=1), 1)


def _group_rows(words: _Components, plausible: np.ndarray, characters: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(plausible)
    in_row = np.zeros(len(words.area), dtype=bool)
    if idx.size == 0:
        return in_row
    h = words.height[idx].astype(float)
    cy = (words.top[idx] + words.bottom[idx]) / 2
    taller = np.maximum(h[:, None], h[None, :])
    gap = np.maximum(words.left[idx][:, None], words.left[idx][None, :]) - np.minimum(
        words.right[idx][:, None], words.right[idx][None, :]
    )
    neighbours = (
        (np.abs(cy[:, None] - cy[None, :]) <= 0.35 * taller)
        & (np.minimum(h[:, None], h[None, :]) >= 0.5 * taller)
        & (gap <= 1.5 * taller)
    )
    # Label propagation over the neighbour graph; a handful of words, so O(n^2) is cheap.
    group = np.arange(idx.size)
    while True:
        merged = np.where(neighbours, group[None, :], idx.size).min(axis=1)
        if np.array_equal(merged, group):
            break
        group = merged
    per_group = np.bincount(group, weights=characters[idx])
    # A row spanning most of the image is the edge of the exposed field or a scan line,
    # broken into pieces by noise; burned-in text keeps to a corner or a band of it.
    left = np.full(idx.size, np.iinfo(np.int64).max)
    right = np.full(idx.size, -1)
    np.minimum.at(left, group, words.left[idx])
    np.maximum.at(right, group, words.right[idx])
    extent = right - left + 1
    in_row[idx] = (per_group[group] >= 3) & (extent[group] <= 0.5 * words.labels.shape[1])
    return in_row


# ---------------------------------------------------------------- rulers


def _row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All horizontal runs of True: (row, start, stop) with stop exclusive."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    change = np.diff(padded, axis=1)
    rows, starts = np.nonzero(change == 1)
    _, stops = np.nonzero(change == -1)
    return rows, starts, stops


def _regular_ticks(beside: np.ndarray) -> bool:
    """Five or more short, evenly spaced marks along a line: a ruler's scale.

    `beside` holds the two pixel rows just past the line; a tick must cross both, which
    noise on a bright bone edge rarely does at five regular places.
    """
    ticks = beside[0] & beside[1]
    if beside[0].mean() > 0.5:
        return False  # a band, not a row of ticks
    _, starts, stops = _row_runs(ticks[None, :])
    if starts.size < 5:
        return False
    spacing = np.diff(starts)
    return bool(spacing.std() <= 0.2 * spacing.mean() and np.median(stops - starts) <= 0.5 * spacing.mean())


def _horizontal_rulers(lines: np.ndarray, short_side: int) -> tuple[float, np.ndarray]:
    height, width = lines.shape
    marked = np.zeros_like(lines)
    rows, starts, stops = _row_runs(lines)
    margin = _border_margin(lines.shape)
    long_runs = np.flatnonzero((stops - starts >= 0.2 * width) & (rows >= margin) & (rows < height - margin))
    tick_reach = max(2, int(round(0.03 * short_side)))
    area, done = 0, set()
    for run in long_runs:
        row, start, stop = rows[run], starts[run], stops[run]
        if row in done:
            continue
        for direction in (-1, 1):
            # Ticks start right past the line's own thickness, wherever that ends.
            offset = 1
            while 0 <= row + direction * offset < height:
                if lines[row + direction * offset, start:stop].mean() <= 0.8:
                    break
                offset += 1
            probes = row + direction * offset, row + direction * (offset + 1)
            if not all(0 <= p < height for p in probes):
                continue
            if not _regular_ticks(lines[list(probes), start:stop]):
                continue
            lo, hi = sorted((row, row + direction * (offset + tick_reach)))
            lo, hi = max(lo, 0), min(hi, height - 1)
            marked[lo : hi + 1, start:stop] |= lines[lo : hi + 1, start:stop]
            area += (hi - lo + 1) * (stop - start)
            done.update(range(lo, hi + 1))
            break
    return float(area) / (height * width), marked


def _rulers(lines: np.ndarray) -> tuple[float, np.ndarray]:
    short_side = min(lines.shape)
    across, marked_rows = _horizontal_rulers(lines, short_side)
    down, marked_cols = _horizontal_rulers(np.ascontiguousarray(lines.T), short_side)
    return across + down, marked_rows | marked_cols.T


# ---------------------------------------------------------------- arrows


def _axis_skewness(comps: _Components) -> np.ndarray:
    """Skewness of each component's mass along its principal axis.

    An arrow carries its mass in the head at one end; cables, tubes, bone edges and
    letters are close to symmetric along their length.
    """
    rows, cols = np.divmod(comps.pixels, comps.labels.shape[1])
    ids = comps.ids
    area = np.maximum(comps.area, 1)
    dr = rows - (np.bincount(ids, rows, len(area)) / area)[ids]
    dc = cols - (np.bincount(ids, cols, len(area)) / area)[ids]
    srr = np.bincount(ids, dr * dr, len(area))
    scc = np.bincount(ids, dc * dc, len(area))
    src = np.bincount(ids, dr * dc, len(area))
    angle = 0.5 * np.arctan2(2 * src, srr - scc)
    along = dr * np.cos(angle)[ids] + dc * np.sin(angle)[ids]
    second = np.bincount(ids, along**2, len(area)) / area
    third = np.bincount(ids, along**3, len(area)) / area
    return np.abs(third) / np.maximum(second, 1e-6) ** 1.5


def _arrows(
    strokes: np.ndarray, small: np.ndarray, contrast: np.ndarray, edges: np.ndarray, exclude: np.ndarray
) -> tuple[float, np.ndarray]:
    """Solid, flat-valued, head-heavy shapes of annotation size."""
    shape = small.shape
    short_side = min(shape)
    comps = _components(strokes & ~exclude)
    if comps.area.size == 0:
        return 0.0, np.zeros(shape, dtype=bool)
    long_side = np.maximum(comps.height, comps.width)
    box = comps.height * comps.width
    # An overlay is drawn at one value, so its pixels share it; bone and metal in a
    # radiograph are graded by thickness. Measured on the core (pixels surviving a 3x3
    # erosion), away from anti-aliased or downscaled edges.
    core = erosion(strokes, footprint_rectangle((3, 3)))
    core_area = comps.sum(core)
    mean = comps.sum(small * core) / np.maximum(core_area, 1)
    spread = np.sqrt(np.maximum(comps.sum(small**2 * core) / np.maximum(core_area, 1) - mean**2, 0.0))
    # Measured on real films: drawn arrows' rims above 0.58 in 95%, bright anatomy that
    # passes the other tests has a median of 0.36.
    rim = strokes & ~core
    sharpness = comps.sum(edges * rim) / np.maximum(comps.sum(contrast * rim), 1e-6)
    arrow = (
        comps.inside(shape)
        & (long_side >= 0.06 * short_side)
        & (long_side <= 0.25 * short_side)
        & (comps.area <= 0.7 * box)
        & (core_area >= 4)
        & (spread <= 0.03)
        & (mean >= 0.85)
        & (sharpness >= _MIN_ARROW_SHARPNESS)
        & (_axis_skewness(comps) >= _MIN_ARROW_SKEWNESS)
    )
    lookup = np.concatenate([[False], arrow])
    return float(box[arrow].sum()) / (shape[0] * shape[1]), lookup[comps.labels]


# ---------------------------------------------------------------- detection


def _block_mean(gray: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return gray
    height, width = gray.shape
    padded = np.pad(gray, ((0, -height % factor), (0, -width % factor)), mode="edge")
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))


@dataclass(frozen=True)
class _StrokeMaps:
    bright: np.ndarray  # thin strokes brighter than their surroundings
    bright_contrast: np.ndarray
    dark: np.ndarray  # dark strokes on a white box (black text on a label)
    dark_contrast: np.ndarray
    lines: np.ndarray  # faint thin bright structures, for the ruler's exact geometry


def _stroke_maps(small: np.ndarray) -> _StrokeMaps:
    size = max(3, int(round(_FOOTPRINT_FRACTION * min(small.shape))) | 1)
    footprint = footprint_rectangle((size, size), decomposition="separable")
    background = opening(small, footprint)
    white_tophat = small - background
    # Overlays are drawn at full white, so they close most of the gap between their
    # background and white whatever that background is; anatomy adds only a fraction.
    # This keeps faint-looking text on a bright abdomen and drops ribs on dark lungs.
    headroom = np.maximum(1.0 - background, 0.05)
    bright = (white_tophat >= 0.08) & (white_tophat >= 0.5 * headroom)
    white_background = closing(small, footprint)
    black_tophat = white_background - small
    dark = (black_tophat >= 0.3) & (white_background >= 0.85)
    # Rulers are found by exact geometry, so they may be fainter than text.
    lines = (white_tophat >= 0.04) & (white_tophat >= 0.5 * headroom)
    return _StrokeMaps(bright, white_tophat, dark, black_tophat, lines)


def _as_unit_float(gray: np.ndarray) -> np.ndarray:
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    if np.issubdtype(gray.dtype, np.integer):
        # Accept 8/16-bit pixels too rather than clipping them all to white.
        return gray.astype(np.float32) / np.iinfo(gray.dtype).max
    return np.nan_to_num(gray.astype(np.float32), nan=0.0).clip(0.0, 1.0)


def detect_markings(gray: np.ndarray) -> MarkingResult:
    """Score burned-in text, arrows and rulers in a 2-D float image in [0, 1]."""
    image = _as_unit_float(gray)
    factor = max(1, int(np.ceil(max(image.shape) / _MAX_WORK_SIDE)))
    small = _block_mean(image, factor)
    maps = _stroke_maps(small)
    edges = _edge_strength(small)
    bright_text_area, bright_text = _text(maps.bright, maps.bright_contrast, edges)
    dark_text_area, dark_text = _text(maps.dark, maps.dark_contrast, edges)
    text_area, text_mask = bright_text_area + dark_text_area, bright_text | dark_text
    ruler_area, ruler_mask = _rulers(maps.lines)
    arrow_area, arrow_mask = _arrows(maps.bright, small, maps.bright_contrast, edges, text_mask | ruler_mask)
    evidence = text_area + ruler_area + arrow_area
    score = float(1.0 - np.exp(-np.log(2.0) * evidence / _EVIDENCE_AT_THRESHOLD))
    marked = text_mask | ruler_mask | arrow_mask
    return MarkingResult(score=score, mask=_full_resolution_mask(marked, factor, image.shape))


def _full_resolution_mask(marked: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    # One pixel of margin covers the anti-aliased halo that would otherwise survive inpainting.
    grown = dilation(marked, footprint_rectangle((3, 3)))
    full = np.repeat(np.repeat(grown, factor, axis=0), factor, axis=1)
    return np.ascontiguousarray(full[: shape[0], : shape[1]])


# ---------------------------------------------------------------- inpainting


def _halve(values: np.ndarray) -> np.ndarray:
    padded = np.pad(values, ((0, values.shape[0] % 2), (0, values.shape[1] % 2)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))


def _double(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # Nearest-neighbour doubling, then a 3x3 mean: removes the block edges that would
    # otherwise read as new strokes to the detector.
    grown = np.repeat(np.repeat(values, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]
    padded = np.pad(grown, 1, mode="edge")
    return sum(padded[i : i + shape[0], j : j + shape[1]] for i in range(3) for j in range(3)) / 9.0


def _push_pull(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown pixels by normalised averaging over an image pyramid."""
    if min(values.shape) <= 1 or known.min() > 0:
        return np.where(known > 0, values / np.maximum(known, 1e-6), values)
    # `values` arrives premultiplied by `known`, so averaging both and dividing is a
    # normalised convolution; where a pixel is only partly known its own estimate is
    # blended with the coarser level's.
    smooth = _double(_push_pull(_halve(values), _halve(known)), values.shape)
    weight = np.clip(known, 0.0, 1.0)
    return values + (1.0 - weight) * smooth


def inpaint_markings(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill masked pixels from their surroundings (push-pull normalised convolution).

    Cost is linear in the image size whatever the hole size, unlike biharmonic inpainting.
    Returns float32 in [0, 1]; unmasked pixels are returned unchanged.
    """
    image = _as_unit_float(gray)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if not mask.any():
        return image.copy()
    if mask.all():
        return np.zeros_like(image)  # nothing to fill from
    known = (~mask).astype(np.float32)
    filled = _push_pull(image * known, known)
    return np.where(mask, filled, image).clip(0.0, 1.0).astype(np.float32)
