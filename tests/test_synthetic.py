"""The synthetic generator: deterministic, varied, class signal in the lungs only."""

import numpy as np
import pytest

from cxr.ingest.synthetic import (
    HEAVY_MARKING_KINDS,
    MARKING_KINDS,
    SYNTHETIC_CLASSES,
    SyntheticImage,
    draw_marking,
    render_synthetic,
)

SMALL = 128  # big enough for anatomy, small enough for hundreds of images per second


def _batch(class_name, count, size=SMALL, **kwargs):
    return [render_synthetic(class_name, i, size=size, **kwargs) for i in range(count)]


@pytest.fixture(scope="module")
def clean_batches():
    return {name: _batch(name, 80, marking_fraction=0.0) for name in SYNTHETIC_CLASSES}


def test_constants_are_consistent():
    assert SYNTHETIC_CLASSES == ("COVID", "Normal")
    assert set(HEAVY_MARKING_KINDS) == set(MARKING_KINDS) - {"letter"}


def test_same_arguments_give_identical_images():
    first = render_synthetic("COVID", 7, seed=3, size=160, marking_fraction=0.5)
    second = render_synthetic("COVID", 7, seed=3, size=160, marking_fraction=0.5)
    assert isinstance(first, SyntheticImage)
    np.testing.assert_array_equal(first.pixels, second.pixels)
    assert first.markings == second.markings


@pytest.mark.parametrize(
    "other",
    [
        dict(class_name="COVID", index=8, seed=3),
        dict(class_name="COVID", index=7, seed=4),
        dict(class_name="Normal", index=7, seed=3),
    ],
)
def test_changing_any_key_changes_the_image(other):
    base = render_synthetic("COVID", 7, seed=3, size=160).pixels
    changed = render_synthetic(size=160, **other).pixels
    assert base.shape != changed.shape or not np.array_equal(base, changed)


def test_global_random_state_is_neither_used_nor_touched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = render_synthetic("Normal", 1, size=96).pixels
    np.random.seed(999)
    second = render_synthetic("Normal", 1, size=96).pixels
    np.testing.assert_array_equal(first, second)
    np.random.seed(123)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_shape_dtype_and_varied_aspect():
    images = _batch("Normal", 30, size=200)
    shapes = {im.pixels.shape for im in images}
    for im in images:
        assert im.pixels.dtype == np.uint8 and im.pixels.ndim == 2
        assert all(180 <= side <= 220 for side in im.pixels.shape)
        assert im.class_name == "Normal"
    assert len(shapes) > 10, "shapes should vary around the requested size"
    assert any(h != w for h, w in shapes), "not always square"
    assert np.mean([im.pixels.std() for im in images]) > 20, "images have contrast"


def test_unknown_class_and_bad_fraction_are_rejected():
    with pytest.raises(ValueError):
        render_synthetic("Pneumonia", 0)
    with pytest.raises(ValueError):
        render_synthetic("COVID", 0, marking_fraction=1.5)


def test_marking_fraction_is_honoured_and_independent_of_class():
    rates = {}
    for name in SYNTHETIC_CLASSES:
        images = _batch(name, 200, size=96, marking_fraction=0.15)
        rates[name] = np.mean([bool(im.markings) for im in images])
        for im in images:
            assert set(im.markings) <= set(MARKING_KINDS)
    overall = np.mean(list(rates.values()))
    # 400 draws at p = 0.15: standard error 0.018, so 0.06 is over three of them.
    assert abs(overall - 0.15) < 0.06
    assert abs(rates["COVID"] - rates["Normal"]) < 0.08
    assert not any(im.markings for im in _batch("COVID", 30, size=96, marking_fraction=0.0))
    assert all(im.markings for im in _batch("COVID", 30, size=96, marking_fraction=1.0))


def test_all_marking_kinds_occur_including_combinations():
    images = _batch("Normal", 150, size=96, marking_fraction=1.0)
    seen = {kind for im in images for kind in im.markings}
    assert seen == set(MARKING_KINDS)
    assert any(len(im.markings) > 1 for im in images)
    assert any(im.markings == ("letter",) for im in images)


def test_marking_fraction_does_not_change_the_anatomy():
    # Markings come from their own random stream, so unmarked images are identical.
    plain = render_synthetic("COVID", 3, size=96, marking_fraction=0.0)
    maybe = render_synthetic("COVID", 3, size=96, marking_fraction=0.5)
    if not maybe.markings:
        np.testing.assert_array_equal(plain.pixels, maybe.pixels)
    else:
        assert plain.pixels.shape == maybe.pixels.shape


def _zone_mean(pixels, rows, cols):
    h, w = pixels.shape
    return pixels[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)].mean()


def _outer_lower_minus_whole(pixels):
    """Outer lower lung zones relative to the whole image (cancels exposure)."""
    image = pixels.astype(np.float64)
    rows = (0.45, 0.68)
    zones = _zone_mean(image, rows, (0.19, 0.29)) + _zone_mean(image, rows, (0.71, 0.81))
    return zones / 2 - image.mean()


def test_covid_brightens_outer_lower_lungs(clean_batches):
    covid = np.array([_outer_lower_minus_whole(im.pixels) for im in clean_batches["COVID"]])
    normal = np.array([_outer_lower_minus_whole(im.pixels) for im in clean_batches["Normal"]])
    gap = covid.mean() - normal.mean()
    standard_error = np.sqrt(covid.var() / covid.size + normal.var() / normal.size)
    assert gap > 3 * standard_error, (gap, standard_error)
    # Learnable but not trivial: the classes overlap image by image.
    assert np.mean(covid > np.median(normal)) < 0.98


def test_classes_share_everything_but_the_lungs(clean_batches):
    def stats(name):
        images = [im.pixels.astype(np.float64) for im in clean_batches[name]]
        return {
            "mean": np.array([im.mean() for im in images]),
            "std": np.array([im.std() for im in images]),
            "upper": np.array([_zone_mean(im, (0.05, 0.3), (0.0, 1.0)) for im in images]),
            "height": np.array([im.shape[0] for im in images], dtype=float),
            "width": np.array([im.shape[1] for im in images], dtype=float),
        }

    covid, normal = stats("COVID"), stats("Normal")
    for key in covid:
        spread = np.sqrt((covid[key].var() + normal[key].var()) / 2) + 1e-9
        # Half a standard deviation: the opacities nudge the global mean a little,
        # a brightness or size shortcut would move it much more.
        assert abs(covid[key].mean() - normal[key].mean()) < 0.5 * spread, key


@pytest.mark.parametrize("kind", MARKING_KINDS)
def test_draw_marking_keeps_dtype_and_scale_and_copies(kind):
    rng = np.random.default_rng(0)
    base_u8 = np.full((300, 360), 60, dtype=np.uint8)
    original = base_u8.copy()
    out_u8 = draw_marking(base_u8, kind, rng)
    np.testing.assert_array_equal(base_u8, original)
    assert out_u8.dtype == np.uint8 and out_u8.shape == base_u8.shape
    assert (out_u8 > 200).sum() > 5, "a white marking was drawn"

    # The same drawing in [0, 1] floats: same marking, same place, no rounding to 8 bits.
    base_f = (base_u8 / 255.0).astype(np.float32)
    out_f = draw_marking(base_f, kind, np.random.default_rng(0))
    assert out_f.dtype == np.float32 and 0.0 <= out_f.min() and out_f.max() <= 1.0
    np.testing.assert_allclose(out_f * 255.0, out_u8, atol=0.51)

    base_255 = np.full((300, 360), 60.0)
    out_255 = draw_marking(base_255, kind, np.random.default_rng(0))
    assert out_255.dtype == np.float64 and out_255.max() > 200


def test_letter_sits_in_an_upper_corner():
    for seed in range(20):
        out = draw_marking(np.zeros((200, 240), np.uint8), "letter", np.random.default_rng(seed))
        rows, cols = np.nonzero(out > 128)
        assert rows.max() < 0.2 * 200
        assert cols.max() < 0.3 * 240 or cols.min() > 0.7 * 240


def test_text_line_height_scales_with_the_image():
    def ink_height(size):
        out = draw_marking(np.zeros((size, size), np.uint8), "text", np.random.default_rng(1))
        rows = np.flatnonzero((out > 128).any(axis=1))
        return rows.max() - rows.min() + 1

    assert 2.5 < ink_height(800) / ink_height(200) < 5.5


def test_unknown_kind_and_colour_images_are_rejected():
    with pytest.raises(ValueError):
        draw_marking(np.zeros((64, 64), np.uint8), "scribble", np.random.default_rng(0))
    with pytest.raises(ValueError):
        draw_marking(np.zeros((64, 64, 3), np.uint8), "text", np.random.default_rng(0))
