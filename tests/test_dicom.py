"""DICOM decoding (cxr.preprocess.dicom): called directly on small files made with pydicom, and inside Ray Data."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
                         RLELossless)

from cxr.config import LungFocusConfig, PreprocessConfig
from cxr.ingest.sources import input_format, list_source
from cxr.preprocess.dicom import decode_dicom, is_dicom
from cxr.preprocess.pipeline import process_image
from cxr.preprocess.transforms import ImageRejected, decode_png_gray, encode_png
from cxr.scoring.datasets import preprocess_for_model
from tests.dicom_files import NEAR_LOSSLESS_ERROR, PATIENT_ID, PATIENT_NAME, gradient, make_dicom
from tests.trees import write_tree

MAX_PIXELS = 50_000_000


def test_a_12_bit_image_fills_the_unit_range_by_bits_stored():
    pixels = gradient(bits=12)
    gray = decode_dicom(make_dicom(pixels, bits_stored=12), MAX_PIXELS)
    assert gray.dtype == np.float32 and gray.shape == pixels.shape
    np.testing.assert_allclose(gray, pixels / 4095, atol=1e-6)
    assert gray.max() == pytest.approx(1.0)


def test_monochrome1_is_inverted_so_bone_is_bright():
    pixels = gradient(bits=12)
    mono2 = decode_dicom(make_dicom(pixels), MAX_PIXELS)
    mono1 = decode_dicom(make_dicom(4095 - pixels, photometric="MONOCHROME1"), MAX_PIXELS)
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless])
def test_lossless_compressed_syntaxes_decode_to_the_same_image(syntax):
    pixels = gradient(bits=12)
    plain = decode_dicom(make_dicom(pixels), MAX_PIXELS)
    data = make_dicom(pixels, syntax=syntax)
    assert len(data) < pixels.nbytes  # really compressed
    np.testing.assert_array_equal(decode_dicom(data, MAX_PIXELS), plain)


@pytest.mark.parametrize("syntax, error", [(JPEGLSLossless, 0), (JPEGLSNearLossless, NEAR_LOSSLESS_ERROR)])
def test_jpeg_ls_decodes_with_the_pinned_plugin_within_its_error(syntax, error):
    from pydicom.pixels import pixel_array

    pixels = gradient(bits=12)
    data = make_dicom(pixels, syntax=syntax)
    assert len(data) < pixels.nbytes
    # pyjpegls, installed for the tests to write these files, decodes JPEG-LS too and pydicom
    # may prefer it: pylibjpeg-libjpeg, what cxr installs, must decode them on its own.
    decoded = pixel_array(io.BytesIO(data), decoding_plugin="pylibjpeg")
    assert np.abs(decoded.astype(np.int64) - pixels).max() <= error
    np.testing.assert_allclose(decode_dicom(data, MAX_PIXELS), decoded / 4095, atol=1e-6)


def test_jpeg_baseline_decodes_within_its_loss():
    pixels = gradient(bits=8, dtype=np.uint8)
    gray = decode_dicom(make_dicom(pixels, syntax=JPEGBaseline8Bit), MAX_PIXELS)
    assert np.abs(gray - pixels / 255).mean() < 0.01


def test_a_window_wins_over_the_full_range_and_a_voi_lut_over_the_window():
    pixels = gradient(bits=12)
    windowed = decode_dicom(make_dicom(pixels, window=(1000, 1001)), MAX_PIXELS)
    # DICOM's LINEAR window: values below 500 black, above 1500 white, linear between.
    np.testing.assert_allclose(windowed, np.clip((pixels - 999.5) / 1000 + 0.5, 0, 1), atol=1e-6)
    lut = np.linspace(65535, 0, 4096).astype(np.uint16)  # a LUT that inverts: unlike any window
    looked_up = decode_dicom(make_dicom(pixels, window=(1000, 1001), voi_lut=lut), MAX_PIXELS)
    np.testing.assert_allclose(looked_up, lut[pixels] / 65535, atol=1e-6)


def test_rescale_maps_the_stored_range_through_slope_and_intercept():
    pixels = gradient(bits=12)
    # A rescale alone changes nothing once the full range is mapped to [0, 1] ...
    np.testing.assert_allclose(decode_dicom(make_dicom(pixels, rescale=(2.0, -1024)), MAX_PIXELS),
                               pixels / 4095, atol=1e-6)
    # ... but a window is in rescaled (modality) units: 2 * 1024 - 1024 = 1024 is its centre.
    windowed = decode_dicom(make_dicom(pixels, rescale=(2.0, -1024), window=(1024, 2)), MAX_PIXELS)
    assert windowed[pixels < 1024].max() == 0 and windowed[pixels > 1024].min() == 1


def test_16_bit_signed_pixels_map_their_whole_range():
    pixels = np.linspace(-32768, 32767, 64 * 48).reshape(64, 48).astype(np.int16)
    gray = decode_dicom(make_dicom(pixels, bits_stored=16), MAX_PIXELS)
    np.testing.assert_allclose(gray, (pixels.astype(np.float64) + 32768) / 65535, atol=1e-6)


def test_a_signed_12_bit_image_in_16_bit_words_keeps_its_negative_values():
    pixels = np.linspace(-2048, 2047, 64 * 48).reshape(64, 48).astype(np.int16)
    gray = decode_dicom(make_dicom(pixels, bits_stored=12), MAX_PIXELS)
    np.testing.assert_allclose(gray, (pixels + 2048) / 4095, atol=1e-6)


@pytest.mark.parametrize("make, reason", [
    (lambda: make_dicom(np.zeros((64, 48, 3), np.uint8)), "colour"),
    (lambda: make_dicom(np.zeros((3, 64, 48), np.uint16), frames=3), "multi_frame"),
    (lambda: make_dicom(gradient(), pixel_data=False), "no_pixel_data"),
    (lambda: make_dicom(gradient())[:-500], "undecodable"),  # truncated inside the pixel data
    (lambda: make_dicom(gradient())[:400], "no_pixel_data"),  # truncated before it
    (lambda: make_dicom(gradient(), syntax=JPEG2000Lossless)[:-900], "undecodable"),
    (lambda: make_dicom(gradient(), syntax=JPEGLSLossless)[:-300], "undecodable"),
    (lambda: make_dicom(gradient(), view="LL"), "lateral_view"),
    (lambda: make_dicom(gradient(16, 16)), "too_small"),
    # 60,000 x 60,000 in the header, a few bytes of pixels: refused before any decoding.
    (lambda: make_dicom(gradient(), extra={"Rows": 60_000, "Columns": 60_000}), "too_large"),
    (lambda: b"\0" * 200, "unsupported_file"),
])
def test_what_cannot_be_a_radiograph_is_rejected_with_its_reason(make, reason):
    with pytest.raises(ImageRejected) as caught:
        decode_dicom(make(), MAX_PIXELS)
    assert caught.value.reason == reason
    assert PATIENT_NAME not in str(caught.value) and PATIENT_ID not in str(caught.value)


# ---------------------------------------------------------------- Presentation LUT Shape


@pytest.mark.parametrize("photometric, shape", [
    ("MONOCHROME2", None), ("MONOCHROME2", "IDENTITY"), ("MONOCHROME1", None), ("MONOCHROME1", "INVERSE")])
def test_bone_is_bright_in_every_consistent_photometric_and_presentation_lut_shape(photometric, shape):
    pixels = gradient(bits=12)  # a bright disc: bone, as MONOCHROME2 shows it
    stored = pixels if photometric == "MONOCHROME2" else 4095 - pixels
    extra = {"PresentationLUTShape": shape} if shape else {}
    gray = decode_dicom(make_dicom(stored, photometric=photometric, extra=extra), MAX_PIXELS)
    # MONOCHROME1 with INVERSE is inverted once: the shape restates the photometric interpretation.
    np.testing.assert_allclose(gray, pixels / 4095, atol=1e-6)


@pytest.mark.parametrize("photometric, shape", [("MONOCHROME2", "INVERSE"), ("MONOCHROME1", "IDENTITY")])
def test_a_presentation_lut_shape_that_contradicts_the_photometric_interpretation_is_ignored(photometric, shape):
    pixels = gradient(bits=12)
    stored = pixels if photometric == "MONOCHROME2" else 4095 - pixels
    gray = decode_dicom(make_dicom(stored, photometric=photometric, extra={"PresentationLUTShape": shape}),
                        MAX_PIXELS)
    np.testing.assert_allclose(gray, pixels / 4095, atol=1e-6)


# ---------------------------------------------------------------- pixel padding


def padded(low: int, high: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit image moved by `offset` (int16 when negative) whose border holds stored values
    from `low` to `high`; the inside (600 to 3466, plus the offset) never does, as the standard
    requires of padding values. And the border's mask."""
    inside = np.rint(gradient(bits=12) * 0.7).astype(np.int64) + 600 + offset
    border = np.zeros(inside.shape, dtype=bool)
    border[:6], border[-6:], border[:, :5], border[:, -5:] = True, True, True, True
    noise = np.random.default_rng(0).integers(low, high + 1, size=inside.shape)
    return np.where(border, noise, inside).astype(np.int16 if offset < 0 else np.uint16), border


@pytest.mark.parametrize("photometric, value, limit, window, offset", [
    ("MONOCHROME2", 0, 100, None, 0),  # a noisy background: up to 100 / 4095 without the range
    ("MONOCHROME1", 4095, 3900, None, 0),  # MONOCHROME1's range runs down from the value
    ("MONOCHROME1", 0, None, None, 0),  # one value that MONOCHROME1 would show white
    ("MONOCHROME2", 4095, None, (2048, 4096), 0),  # ... and that a window would show white
    ("MONOCHROME1", -2048, None, None, -2048),  # signed pixels and padding value
])
def test_padding_comes_out_black_and_leaves_every_other_pixel_as_it_was(photometric, value, limit, window, offset):
    image, border = padded(*sorted((value, value if limit is None else limit)), offset=offset)
    window = None if window is None else (window[0] + offset, window[1])
    tags = {"PixelPaddingValue": value} | ({} if limit is None else {"PixelPaddingRangeLimit": limit})
    plain = decode_dicom(make_dicom(image, photometric=photometric, window=window), MAX_PIXELS)
    gray = decode_dicom(make_dicom(image, photometric=photometric, window=window, extra=tags), MAX_PIXELS)
    assert plain[border].max() > 0  # without the padding tags the border is not all black
    assert (gray[border] == 0).all()
    np.testing.assert_array_equal(gray[~border], plain[~border])


def test_a_padding_range_limit_without_a_padding_value_is_ignored():
    image, _ = padded(0, 100)
    plain = decode_dicom(make_dicom(image), MAX_PIXELS)
    limited = decode_dicom(make_dicom(image, extra={"PixelPaddingRangeLimit": 100}), MAX_PIXELS)
    np.testing.assert_array_equal(limited, plain)


# ---------------------------------------------------------------- view position


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # pydicom, writing spellings outside the standard
@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "lateral", "XTABLE-LATERAL", "Left_Lateral"])
def test_a_lateral_view_is_rejected_and_its_detail_names_only_the_view(view):
    with pytest.raises(ImageRejected) as caught:
        decode_dicom(make_dicom(gradient(), view=view), MAX_PIXELS)
    assert caught.value.reason == "lateral_view"
    assert caught.value.detail.startswith(f"ViewPosition {view.upper().replace('-', ' ').replace('_', ' ')}:")


@pytest.mark.parametrize("view", ["PA", "AP", "", None, "LLD", "RLO"])
def test_frontal_and_unnamed_views_are_read(view):
    assert decode_dicom(make_dicom(gradient(), view=view), MAX_PIXELS).shape == gradient().shape


def test_scoring_gives_a_lateral_view_its_reason_as_status(tmp_path):
    """What jobs/predict.py and evaluate's raw-tree scoring run on every listed file."""
    tree = write_tree(tmp_path / "raw", {"COVID/front.dcm": make_dicom(gradient()),
                                         "Normal/side.dcm": make_dicom(gradient(), view="RL")})
    config = PreprocessConfig(source=str(tree), output="unused", image_size=32)
    rows = preprocess_for_model(pa.Table.from_pylist(list_source(config).items), config)
    assert dict(zip((u.rsplit("/", 1)[-1] for u in rows["source_uri"]), rows["status"])) == {
        "front.dcm": "ok", "side.dcm": "lateral_view"}
    assert [d.split(":")[0] for d in rows["detail"] if d] == ["ViewPosition RL"]


def test_a_file_is_dicom_by_its_magic_and_a_name_is_a_candidate_by_its_extension():
    assert is_dicom(make_dicom(gradient())) and not is_dicom(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert [input_format(n) for n in ("a/x.PNG", "x.jpeg", "x.dcm", "s3://b/X.DICOM", "IM0001",
                                      "1.2.840.113619.2.55.3.604688119", "notes.txt", ".DS_Store", "x.tif")] \
        == ["image", "image", "dicom", "dicom", "dicom", "dicom", None, None, None]


def test_a_dicom_goes_through_the_png_path_from_grayscale_on():
    # Without the lung crop: a gradient has no lungs, and where the finder draws its box on one
    # turns on a gray level (real X-rays: tests/test_dicom_jobs.py).
    config = PreprocessConfig(output="unused", image_size=32, lungs=LungFocusConfig(crop=False))
    pixels8 = gradient(128, 96, bits=8, dtype=np.uint8)
    dicom = make_dicom(to_12_bits(pixels8))
    from_dicom = process_image(dicom, config, "dicom")
    from_png = process_image(encode_png(pixels8), config, "image")
    assert np.abs(decode_png_gray(from_dicom["image_png"]).astype(int)
                  - decode_png_gray(from_png["image_png"])).max() <= 1
    assert (from_dicom["orig_height"], from_dicom["orig_width"]) == (128, 96)
    # A name read as DICOM that holds something else is rejected, not guessed at.
    with pytest.raises(ImageRejected, match="unsupported_file"):
        process_image(encode_png(pixels8), config, "dicom")
    # A DICOM is a DICOM whatever its name.
    assert process_image(dicom, config, "image")["image_png"] == from_dicom["image_png"]


def to_12_bits(pixels8: np.ndarray) -> np.ndarray:
    return np.rint(pixels8.astype(np.float64) * 4095 / 255).astype(np.uint16)


def test_decoding_inside_ray_data_equals_decoding_directly(ray_session):
    import pyarrow as pa

    files = [make_dicom(gradient(bits=12)), make_dicom(gradient(bits=12), syntax=RLELossless),
             make_dicom(gradient(bits=12), syntax=JPEGLosslessSV1), make_dicom(gradient())[:300]]

    def decode_batch(batch: pa.Table) -> pa.Table:
        means, reasons = [], []
        for data in batch.column("data").to_pylist():
            try:
                means.append(float(decode_dicom(data, MAX_PIXELS).mean()))
                reasons.append("ok")
            except ImageRejected as exc:
                means.append(None)
                reasons.append(exc.reason)
        return pa.table({"index": batch.column("index"), "mean": pa.array(means, pa.float64()), "reason": reasons})

    rows = sorted(ray_session.data.from_items([{"index": i, "data": d} for i, d in enumerate(files)]).map_batches(
        decode_batch, batch_format="pyarrow").take_all(), key=lambda row: row["index"])
    expected = float(decode_dicom(files[0], MAX_PIXELS).mean())
    assert [r["reason"] for r in rows] == ["ok", "ok", "ok", "no_pixel_data"]
    assert [r["mean"] for r in rows[:3]] == [pytest.approx(expected, abs=1e-7)] * 3
