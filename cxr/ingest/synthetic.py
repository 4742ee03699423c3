"""Deterministic chest-X-ray-like images: the project's embedded default data.

Each image is a function of (class_name, index, seed, size, marking_fraction) only, so a
data set of any length can be rebuilt anywhere without shipping pixels. Radiograph
convention throughout: air is dark, bone and metal are bright; the image's left is the
patient's right.

The COVID class differs from Normal only by bilateral, peripheral, lower-zone hazy
ground-glass opacities of variable strength. Everything else (anatomy, exposure, noise,
shape, burned-in markings) is drawn from one distribution shared by both classes, so a
classifier can only succeed by looking at the lungs.

Sites (`SITES`) are the testbed for shortcut learning: each draws the acquisition from
its own narrower distribution, as hospitals differ (exposure and gamma curve, noise, blur,
collimation border, laterality-marker style, patient size and age), and none of it
depends on the class. Whether a site's images are more often COVID is decided by the
listing (cxr.ingest.sources, SyntheticConfig.confound), never here: the disease signs stay
in the lungs, and the site is a shortcut only when the data set's class rates make it one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.filters import gaussian

SYNTHETIC_CLASSES = ("COVID", "Normal")
MARKING_KINDS = ("text", "letter", "arrow", "ruler")  # "letter" = a lone laterality letter
HEAVY_MARKING_KINDS = ("text", "arrow", "ruler")  # what the marking filter should catch


@dataclass(frozen=True)
class Acquisition:
    """How a site takes its pictures: each a (low, high) range drawn per image.

    Blur is a Gaussian sigma in units of the image side / 320; noise the standard deviation
    on [0, 1]; gain, offset and gamma the display curve; body_scale the patient's thorax in
    the frame (children are smaller); border the collimation or shutter frame, a fraction
    of the side, painted black or white; marker the laterality letter's corner.
    """

    name: str
    blur: tuple[float, float] = (0.5, 1.0)
    noise: tuple[float, float] = (0.008, 0.022)
    gain: tuple[float, float] = (0.9, 1.15)
    offset: tuple[float, float] = (-0.05, 0.05)
    gamma: tuple[float, float] = (0.8, 1.25)
    body_scale: tuple[float, float] = (0.92, 1.06)
    age: tuple[int, int] = (18, 90)  # years: documents the population; body_scale draws it
    border: str = "none"  # "none", "black" or "white"
    border_width: tuple[float, float] = (0.0, 0.0)
    marker: str = "none"  # "none", "top_left" or "top_right": a lone L or R
    marker_size: tuple[float, float] = (0.04, 0.06)  # letter height, fraction of the side


# The embedded default: one broad distribution, what every image had before sites existed.
DEFAULT_ACQUISITION = Acquisition(name="synthetic")
# Six hospitals, in the order SyntheticConfig.sources takes them. The ranges of a site are
# narrow and those of different sites far apart, as between a modern flat-panel department
# and a portable unit: CLAHE evens out some of it (exposure), not all (noise, blur, frames,
# markers). Markers are lone letters, which the marking filter keeps (cxr.preprocess.markings).
SITES = (
    Acquisition("site-a", blur=(0.3, 0.45), noise=(0.003, 0.006), gain=(1.05, 1.15), offset=(0.02, 0.06),
                gamma=(0.68, 0.78), body_scale=(0.96, 1.06), age=(40, 85), marker="top_right",
                marker_size=(0.035, 0.045)),
    Acquisition("site-b", blur=(1.2, 1.6), noise=(0.026, 0.034), gain=(0.85, 0.95), offset=(-0.06, -0.02),
                gamma=(1.28, 1.42), body_scale=(0.92, 1.02), age=(20, 70), border="black",
                border_width=(0.04, 0.07), marker="top_left", marker_size=(0.06, 0.075)),
    Acquisition("site-c", blur=(0.65, 0.85), noise=(0.012, 0.017), gain=(0.96, 1.04), offset=(-0.02, 0.02),
                gamma=(0.96, 1.06), body_scale=(0.90, 1.04), age=(25, 90), border="white",
                border_width=(0.02, 0.035)),
    Acquisition("site-d", blur=(0.5, 0.7), noise=(0.014, 0.02), gain=(0.9, 1.0), offset=(0.0, 0.04),
                gamma=(0.84, 0.94), body_scale=(0.72, 0.84), age=(1, 12), border="black",
                border_width=(0.015, 0.03), marker="top_right", marker_size=(0.05, 0.065)),
    Acquisition("site-e", blur=(0.9, 1.2), noise=(0.018, 0.026), gain=(0.95, 1.08), offset=(0.04, 0.08),
                gamma=(1.08, 1.18), body_scale=(1.0, 1.1), age=(50, 95), marker="top_left",
                marker_size=(0.04, 0.05)),
    Acquisition("site-f", blur=(0.4, 0.6), noise=(0.006, 0.01), gain=(1.15, 1.25), offset=(-0.1, -0.06),
                gamma=(0.86, 0.92), body_scale=(0.94, 1.04), age=(18, 80), border="white",
                border_width=(0.05, 0.08)),
)


@dataclass(frozen=True)
class SyntheticImage:
    pixels: np.ndarray  # uint8 2-D gray
    class_name: str
    markings: tuple[str, ...]  # ground truth: kinds drawn, () when clean


# ---------------------------------------------------------------- anatomy


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    # Normalised coordinates keep every anatomical constant independent of image size.
    y = (np.arange(height, dtype=np.float32) + 0.5) / height
    x = (np.arange(width, dtype=np.float32) + 0.5) / width
    return y[:, None], x[None, :]


def _soft_step(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    # A logistic edge instead of a hard one: real organ borders are blurred by
    # projection through tissue of varying thickness.
    return 0.5 + 0.5 * np.tanh(signed_distance / (2.0 * softness))


def _band(distance: np.ndarray, half_width: float) -> np.ndarray:
    # Bones are brightest at their centre line and fade to the edges (a cylinder in projection).
    return np.clip(1.0 - (distance / half_width) ** 2, 0.0, 1.0)


def _lung_field(y, x, centre_x, top, bottom, half_width, dome, side):
    """Soft mask of one lung; side=-1 for the image-left lung, +1 for the image-right one."""
    u = (x - centre_x) / half_width
    v = (y - (top + bottom) / 2) / ((bottom - top) / 2)
    # A superellipse gives the rounded-rectangle outline of a lung field in a PA view.
    outline = 1.0 - (np.abs(u) ** 2.4 + np.abs(v) ** 2.4)
    # The diaphragm dome rises toward the lung's centre; the costophrenic angle is lateral.
    dome_y = bottom - dome * np.clip(1.0 - (u + 0.25 * side) ** 2, 0.0, 1.0)
    below_dome = dome_y - y
    return _soft_step(outline, 0.08) * _soft_step(below_dome, 0.01)


def _ribs(y, x, rng, centre_x, lung_top, lung_bottom, half_span):
    """Posterior ribs: arcs rising from the spine and falling laterally."""
    ribs = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)
    count = int(rng.integers(8, 11))
    spacing = (lung_bottom - lung_top) / (count - 1.5)
    thickness = float(rng.uniform(0.010, 0.014))
    lateral = np.abs(x - centre_x)
    inside_thorax = _soft_step(half_span - lateral, 0.02)
    for i in range(count):
        start = lung_top - 0.04 + i * spacing
        curve = start - 0.25 * lateral + (1.2 + 0.04 * i) * lateral**2
        ribs += _band(np.abs(y - curve), thickness) * inside_thorax
    return ribs


def _clavicles(y, x, centre_x, top, tilt):
    lateral = x - centre_x
    curve = top + 0.03 - tilt * np.abs(lateral) + 0.25 * lateral**2
    span = _soft_step(0.33 - np.abs(lateral), 0.01) * _soft_step(np.abs(lateral) - 0.03, 0.01)
    return _band(np.abs(y - curve), 0.014) * span


def _spine(y, x, centre_x, rng):
    period = float(rng.uniform(0.040, 0.050))
    phase = float(rng.uniform(0.0, period))
    # Vertebral bodies alternate with darker disc spaces.
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (y - phase) / period)
    return _band(np.abs(x - centre_x), 0.045) * vertebrae


def _vessel_texture(shape, rng: np.random.Generator) -> np.ndarray:
    # Bronchovascular markings: smooth random structure inside both lungs, so that
    # opacities must be told apart from normal lung texture rather than a flat field.
    field = gaussian(rng.normal(size=shape).astype(np.float32), sigma=0.008 * min(shape))
    return 0.025 * field / (field.std() + 1e-6)


def _ground_glass(y, x, rng, lung_centres, lung_top, lung_bottom, half_width, strength):
    """COVID pattern: blurred opacities in the outer, lower part of both lungs."""
    haze = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)
    for centre_x, side in zip(lung_centres, (-1, 1)):
        for _ in range(int(rng.integers(1, 4))):
            cx = centre_x + side * half_width * rng.uniform(0.35, 0.8)
            cy = lung_top + (lung_bottom - lung_top) * rng.uniform(0.55, 0.9)
            radius = rng.uniform(0.04, 0.09)
            weight = rng.uniform(0.5, 1.0)
            haze += weight * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
    return strength * np.clip(haze, 0.0, 1.3)


def _render_anatomy(height: int, width: int, is_covid: bool, rng: np.random.Generator,
                    body_scale: tuple[float, float] = DEFAULT_ACQUISITION.body_scale):
    y, x = _grid(height, width)
    centre_x = 0.5 + rng.uniform(-0.03, 0.03)
    scale = rng.uniform(*body_scale)
    lung_top = 0.17 + rng.uniform(-0.03, 0.03)
    lung_bottom = lung_top + 0.55 * scale
    half_width = 0.14 * scale
    lung_centres = (centre_x - 0.185 * scale, centre_x + 0.185 * scale)

    air, tissue = rng.uniform(0.03, 0.12), rng.uniform(0.50, 0.62)
    # A squarish superellipse: straight flanks, rounded shoulders, open toward the abdomen.
    body_top = lung_top - rng.uniform(0.07, 0.11)
    body = _soft_step(
        1.0 - np.abs((x - centre_x) / (0.45 * scale)) ** 3.5 - np.abs((y - body_top - 0.8) / 0.8) ** 3.5, 0.03
    )
    neck = _soft_step(0.08 - np.abs(x - centre_x), 0.01)
    image = air + (tissue - air) * np.maximum(body, neck)
    # Soft tissue thickens toward the abdomen, so the lower image is brighter.
    image = image + 0.12 * np.clip(y - lung_bottom + 0.05, 0, None) * body

    lungs = sum(
        _lung_field(y, x, cx, lung_top, lung_bottom, half_width, rng.uniform(0.06, 0.10), side)
        for cx, side in zip(lung_centres, (-1, 1))
    )
    heart_cx = centre_x + 0.07 * scale
    heart = _soft_step(
        1.0 - ((x - heart_cx) / (0.13 * scale)) ** 2 - ((y - lung_bottom + 0.09) / (0.13 * scale)) ** 2, 0.15
    )
    darkness = rng.uniform(0.28, 0.38)
    image = image - darkness * lungs * (1.0 - 0.8 * heart)
    image = image + lungs * _vessel_texture(image.shape, rng)
    if is_covid:
        strength = rng.uniform(0.05, 0.16)
        image = image + lungs * _ground_glass(y, x, rng, lung_centres, lung_top, lung_bottom, half_width, strength)

    bone = rng.uniform(0.10, 0.16)
    image = image + bone * 0.6 * _ribs(y, x, rng, centre_x, lung_top, lung_bottom, 0.35 * scale)
    image = image + bone * _clavicles(y, x, centre_x, lung_top - 0.05, rng.uniform(0.05, 0.25))
    image = image + bone * 0.8 * _spine(y, x, centre_x, rng) * (1.0 - 0.5 * lungs)
    if rng.random() < 0.2:
        # Benign variation in both classes (a small calcified granuloma), so that
        # "any focal brightness" is not a COVID shortcut.
        gy, gx = lung_top + rng.uniform(0.1, 0.4), rng.choice(lung_centres) + rng.uniform(-0.06, 0.06)
        image = image + 0.15 * np.exp(-((x - gx) ** 2 + (y - gy) ** 2) / (2 * 0.006**2))
    return image.astype(np.float32)


def _expose(image: np.ndarray, rng: np.random.Generator, size: int,
            acquisition: Acquisition = DEFAULT_ACQUISITION) -> np.ndarray:
    """Per-acquisition look: blur, noise, contrast and gamma differ between machines."""
    image = gaussian(image, sigma=rng.uniform(*acquisition.blur) * size / 320, preserve_range=True)
    image = image + rng.normal(0.0, rng.uniform(*acquisition.noise), image.shape)
    image = np.clip(image * rng.uniform(*acquisition.gain) + rng.uniform(*acquisition.offset), 0.0, 1.0)
    return image ** rng.uniform(*acquisition.gamma)


def _frame(image: np.ndarray, rng: np.random.Generator, acquisition: Acquisition) -> np.ndarray:
    """The collimation or electronic-shutter border of a site: a frame of flat black or white."""
    if acquisition.border == "none":
        return image
    height, width = image.shape
    widths = rng.uniform(*acquisition.border_width, size=4)  # top, bottom, left, right
    top, bottom = (int(round(w * height)) for w in widths[:2])
    left, right = (int(round(w * width)) for w in widths[2:])
    inside = np.zeros(image.shape, dtype=bool)
    inside[top:height - bottom, left:width - right] = True
    level = 0.03 if acquisition.border == "black" else 0.93
    return np.where(inside, image, level + rng.normal(0.0, 0.005, image.shape)).clip(0.0, 1.0)


def _site_marker(pixels: np.ndarray, rng: np.random.Generator, acquisition: Acquisition) -> np.ndarray:
    """A site's laterality letter: always its corner and size, as each department has its habit."""
    if acquisition.marker == "none":
        return pixels
    height, width = pixels.shape
    font = _font(rng.uniform(*acquisition.marker_size) * height)
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    letter = str(rng.choice(["L", "R"]))
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
    margin = rng.uniform(0.06, 0.08) * np.array([width, height])
    x = margin[0] if acquisition.marker == "top_left" else width - margin[0] - (right - left)
    draw.text((x - left, margin[1] - top), letter, font=font, fill=255)
    canvas = _composite(pixels.astype(np.float32) / 255.0, layer, 1.0)
    return np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)


def _choose_markings(rng: np.random.Generator, marking_fraction: float) -> tuple[str, ...]:
    if rng.random() >= marking_fraction:
        return ()
    # Mostly one kind, sometimes several at once (text plus a letter, arrows plus a ruler).
    count = int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.10]))
    kinds = rng.choice(len(MARKING_KINDS), size=count, replace=False)
    return tuple(MARKING_KINDS[i] for i in sorted(kinds))


def render_synthetic(
    class_name: str, index: int, seed: int = 0, size: int = 320, marking_fraction: float = 0.15,
    site: int | None = None,
) -> SyntheticImage:
    """Image `index` of `class_name`, about `size` px per side (each side within +-10%).

    A share `marking_fraction` of images, chosen independently of the class, carries one
    or more burned-in markings, listed in the result's `markings`. `site` (an index into
    SITES) takes the picture as that site does; None, with the one broad default.
    """
    if class_name not in SYNTHETIC_CLASSES:
        raise ValueError(f"class_name must be one of {SYNTHETIC_CLASSES}, got {class_name!r}")
    if not 0.0 <= marking_fraction <= 1.0:
        raise ValueError(f"marking_fraction must be in [0, 1], got {marking_fraction}")
    if site is not None and not 0 <= site < len(SITES):
        raise ValueError(f"site must be in [0, {len(SITES)}), got {site}")
    acquisition = DEFAULT_ACQUISITION if site is None else SITES[site]
    root = np.random.SeedSequence([seed, SYNTHETIC_CLASSES.index(class_name), index])
    # Separate streams: the marking draw never shifts the anatomy, so the same index with
    # a different marking_fraction shows the same patient.
    anatomy_rng, marking_rng = (np.random.default_rng(s) for s in root.spawn(2))
    height = int(round(size * anatomy_rng.uniform(0.9, 1.1)))
    width = int(round(size * anatomy_rng.uniform(0.9, 1.1)))
    image = _render_anatomy(height, width, class_name == "COVID", anatomy_rng, acquisition.body_scale)
    exposed = _frame(_expose(image, anatomy_rng, size, acquisition), anatomy_rng, acquisition)
    pixels = _site_marker(np.round(exposed * 255).astype(np.uint8), anatomy_rng, acquisition)
    markings = _choose_markings(marking_rng, marking_fraction)
    for kind in markings:
        pixels = draw_marking(pixels, kind, marking_rng)
    return SyntheticImage(pixels=pixels, class_name=class_name, markings=markings)


def render_synthetic_png(class_name: str, index: int, seed: int = 0, size: int = 320,
                         marking_fraction: float = 0.15, site: int | None = None) -> tuple[bytes, tuple[str, ...]]:
    """`render_synthetic` as the file a source holds: PNG bytes, and the markings drawn on it."""
    image = render_synthetic(class_name, index, seed=seed, size=size, marking_fraction=marking_fraction, site=site)
    buffer = io.BytesIO()
    # zlib level 1, as for the shards' PNGs (cxr.preprocess.transforms): the pipeline
    # decodes these bytes at once, so encoding fast matters more than a small file.
    Image.fromarray(image.pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), image.markings


# ---------------------------------------------------------------- burned-in markings

# Every line has at least five characters: a lone "AP" or "PA" is a projection marker,
# as common and as harmless as a laterality letter, not the heavy text the filter targets.
_POSITIONS = ("PORTABLE", "AP ERECT", "AP SUPINE", "PA ERECT", "AP SITTING", "SEMI-ERECT", "PORTABLE AP")
_SITES = ("ST MARY HOSPITAL", "GENERAL HOSP", "UNIV CLINIC", "RADIOLOGY DEPT", "ICU 3 BED 12", "ER ADMISSION")


def _random_text_line(rng: np.random.Generator) -> str:
    day, month, year = rng.integers(1, 29), rng.integers(1, 13), rng.integers(2018, 2023)
    choices = (
        lambda: str(rng.choice(_POSITIONS)),
        lambda: str(rng.choice(_SITES)),
        lambda: f"{day:02d}/{month:02d}/{year} {rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}",
        lambda: f"{year}-{month:02d}-{day:02d}",
        lambda: f"ID {rng.integers(100000, 9999999)}",
        lambda: f"DOB {rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1930, 2010)}",
        lambda: f"kVp {rng.integers(70, 125)} mAs {rng.uniform(1, 6):.1f}",
        lambda: f"DAY {rng.integers(1, 15)}",
    )
    return choices[int(rng.integers(len(choices)))]()


def _font(pixels: float) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(round(pixels))))


def _composite(canvas: np.ndarray, layer: Image.Image, value: float) -> np.ndarray:
    # Pillow draws anti-aliased coverage; blending by it mimics how an overlay is rasterised.
    # Overlays are burned in at the display's extreme values (saturated white or black).
    alpha = np.asarray(layer, dtype=np.float32) / 255.0
    return canvas * (1.0 - alpha) + value * alpha


def _draw_text(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = canvas.shape
    font = _font(rng.uniform(0.025, 0.05) * height)
    lines = [_random_text_line(rng) for _ in range(int(rng.integers(1, 5)))]
    spacing = int(round(font.size * 0.25))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), "\n".join(lines), font=font, spacing=spacing)
    margin = rng.uniform(0.02, 0.05) * np.array([width, height])
    x = margin[0] if rng.random() < 0.5 else width - margin[0] - (right - left)
    y = margin[1] if rng.random() < 0.5 else height - margin[1] - (bottom - top)
    x, y = max(1.0, x) - left, max(1.0, y) - top
    style = rng.choice(["plain", "black_box", "white_box"], p=[0.65, 0.2, 0.15])
    ink = 1.0 if style != "white_box" else 0.0
    if style != "plain":
        pad = max(2, font.size // 4)
        box = Image.new("L", (width, height), 0)
        ImageDraw.Draw(box).rectangle([x + left - pad, y + top - pad, x + right + pad, y + bottom + pad], fill=255)
        canvas = _composite(canvas, box, 1.0 - ink)
    layer = Image.new("L", (width, height), 0)
    ImageDraw.Draw(layer).multiline_text((x, y), "\n".join(lines), font=font, fill=255, spacing=spacing)
    return _composite(canvas, layer, ink)


def _draw_letter(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = canvas.shape
    font = _font(rng.uniform(0.04, 0.08) * height)
    letter = str(rng.choice(["L", "R"]))
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
    margin = rng.uniform(0.03, 0.08) * np.array([width, height])
    x = margin[0] if rng.random() < 0.5 else width - margin[0] - (right - left)
    draw.text((x - left, margin[1] - top), letter, font=font, fill=255)
    return _composite(canvas, layer, 1.0)


def _draw_arrows(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = canvas.shape
    short_side = min(height, width)
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 4))):
        length = rng.uniform(0.08, 0.15) * short_side
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        tip = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
        tail = tip - length * direction
        # Annotation arrows: a thin shaft and a distinctly wider solid head.
        head_base = tip - 0.35 * length * direction
        head_half = rng.uniform(0.13, 0.18) * length
        shaft_half = max(0.7, rng.uniform(0.03, 0.05) * length)
        shaft = [tail + shaft_half * normal, head_base + shaft_half * normal,
                 head_base - shaft_half * normal, tail - shaft_half * normal]
        head = [tip, head_base + head_half * normal, head_base - head_half * normal]
        draw.polygon([tuple(p) for p in shaft], fill=255)
        draw.polygon([tuple(p) for p in head], fill=255)
    return _composite(canvas, layer, 1.0)


def _draw_ruler(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = canvas.shape
    short_side = min(height, width)
    vertical = rng.random() < 0.5
    along, across = (height, width) if vertical else (width, height)
    length = rng.uniform(0.3, 0.7) * along
    start = rng.uniform(0.1, 0.9 * along - length) if 0.9 * along > length + 0.1 * along else 0.05 * along
    inset = rng.uniform(0.03, 0.07) * across
    far_side = rng.random() < 0.5
    base = across - 1 - inset if far_side else inset
    inward = -1.0 if far_side else 1.0
    line_width = max(1, int(round(0.006 * short_side)))
    spacing = max(3.0, rng.uniform(0.02, 0.035) * short_side)
    minor, major = max(2.0, 0.015 * short_side), max(3.0, 0.03 * short_side)

    def point(a: float, b: float) -> tuple[float, float]:
        return (b, a) if vertical else (a, b)

    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    draw.line([point(start, base), point(start + length, base)], fill=255, width=line_width)
    for i, a in enumerate(np.arange(start, start + length + 1e-6, spacing)):
        tick = major if i % 5 == 0 else minor
        draw.line([point(a, base), point(a, base + inward * tick)], fill=255, width=line_width)
    return _composite(canvas, layer, 1.0)


_DRAWERS = {"text": _draw_text, "letter": _draw_letter, "arrow": _draw_arrows, "ruler": _draw_ruler}


def draw_marking(gray: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of `gray` with one burned-in marking of `kind`, same dtype and scale.

    Integer images are taken at their dtype's full range; float images at [0, 1], or at
    [0, 255] when their values exceed 1.
    """
    if kind not in _DRAWERS:
        raise ValueError(f"kind must be one of {MARKING_KINDS}, got {kind!r}")
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    if np.issubdtype(gray.dtype, np.integer):
        peak = float(np.iinfo(gray.dtype).max)
    else:
        peak = 255.0 if float(np.nanmax(gray, initial=0.0)) > 1.0 else 1.0
    canvas = _DRAWERS[kind](gray.astype(np.float32) / peak, rng)
    canvas = np.clip(canvas, 0.0, 1.0) * peak
    if np.issubdtype(gray.dtype, np.integer):
        return np.round(canvas).astype(gray.dtype)
    return canvas.astype(gray.dtype)
