"""DICOM decoding (cxr.preprocess.dicom): called directly on small files made with pydicom, and inside Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, RLELossless

from cxr.config import PreprocessConfig
from cxr.ingest.sources import input_format
from cxr.preprocess.dicom import decode_dicom, is_dicom
from cxr.preprocess.pipeline import process_image
from cxr.preprocess.transforms import ImageRejected, decode_png_gray, encode_png
from tests.dicom_files import PATIENT_ID, PATIENT_NAME, gradient, make_dicom

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


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_lossless_compressed_syntaxes_decode_to_the_same_image(syntax):
    pixels = gradient(bits=12)
    plain = decode_dicom(make_dicom(pixels), MAX_PIXELS)
    data = make_dicom(pixels, syntax=syntax)
    assert len(data) < pixels.nbytes  # really compressed
    np.testing.assert_array_equal(decode_dicom(data, MAX_PIXELS), plain)


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


def test_a_file_is_dicom_by_its_magic_and_a_name_is_a_candidate_by_its_extension():
    assert is_dicom(make_dicom(gradient())) and not is_dicom(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert [input_format(n) for n in ("a/x.PNG", "x.jpeg", "x.dcm", "s3://b/X.DICOM", "IM0001",
                                      "1.2.840.113619.2.55.3.604688119", "notes.txt", ".DS_Store", "x.tif")] \
        == ["image", "image", "dicom", "dicom", "dicom", "dicom", None, None, None]


def test_a_dicom_goes_through_the_png_path_from_grayscale_on():
    config = PreprocessConfig(output="unused", image_size=32)
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
