"""Per-image transforms, called directly on small synthetic arrays and files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr.config import ClaheConfig
from cxr.preprocess.transforms import (ImageRejected, apply_clahe, decode_image, decode_png_gray, encode_png,
                                      limit_size, pixel_hash, resize_square, to_grayscale, to_uint8)

MAX_PIXELS = 50_000_000


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **kwargs) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(height: int = 48, width: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) * 2 % 256).astype(np.uint8)


def huge_png() -> bytes:
    """A real PNG of 7,500 x 7,500 black pixels: 56 M pixels in a few hundred kilobytes."""
    return encode(np.zeros((7500, 7500), dtype=np.uint8), compress_level=1)


def test_decode_8bit_gray_png_roundtrips():
    pixels = gradient()
    decoded = decode_image(encode(pixels), MAX_PIXELS)
    assert decoded.dtype == np.uint8 and decoded.shape == pixels.shape
    np.testing.assert_array_equal(decoded, pixels)


def test_decode_16bit_png_keeps_16_bits():
    pixels = (gradient().astype(np.uint16) * 16)  # 12-bit data, as many radiographs
    decoded = decode_image(encode(pixels), MAX_PIXELS)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "1"])
def test_decode_colour_modes_to_gray_or_rgb(mode):
    data = encode(gradient(), mode=mode)
    decoded = decode_image(data, MAX_PIXELS)
    assert decoded.dtype == np.uint8
    assert decoded.shape[:2] == (48, 64)
    assert decoded.ndim == 2 or decoded.shape[2] == 3


def test_decode_jpeg():
    decoded = decode_image(encode(gradient(), fmt="JPEG", quality=95), MAX_PIXELS)
    assert decoded.shape == (48, 64)
    assert np.abs(decoded.astype(int) - gradient()).mean() < 4


@pytest.mark.parametrize("data, reason", [
    (b"", "undecodable"),
    (b"this is a text file, not a PNG\n", "undecodable"),
    (None, "undecodable"),  # truncated PNG, built below
])
def test_decode_rejects_broken_files(data, reason):
    if data is None:
        data = encode(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:200]
    with pytest.raises(ImageRejected) as info:
        decode_image(data, MAX_PIXELS)
    assert info.value.reason == reason


def test_decode_rejects_huge_image_from_header_alone():
    with pytest.raises(ImageRejected) as info:
        decode_image(huge_png(), MAX_PIXELS)
    assert info.value.reason == "too_large"


def test_decode_rejects_tiny_and_unsupported_formats():
    with pytest.raises(ImageRejected) as info:
        decode_image(encode(gradient(8, 8)), MAX_PIXELS)
    assert info.value.reason == "too_small"
    with pytest.raises(ImageRejected) as info:
        decode_image(encode(gradient(), fmt="TIFF"), MAX_PIXELS)
    assert info.value.reason == "undecodable" and "TIFF" in info.value.detail


def test_grayscale_scales_by_effective_bit_depth():
    twelve_bit = np.array([[0, 2048], [4095, 1024]], dtype=np.uint16)
    gray = to_grayscale(twelve_bit)
    assert gray.dtype == np.float32
    assert gray.max() == pytest.approx(1.0)
    assert gray[0, 1] == pytest.approx(2048 / 4095)
    eight_bit = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_allclose(to_grayscale(eight_bit), [[0.0, 1.0]])


def test_grayscale_of_rgb_uses_luminance():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert to_grayscale(rgb)[0, 0] == pytest.approx(0.7154, abs=1e-4)


def test_limit_size_keeps_aspect_and_small_images():
    gray = np.random.default_rng(0).random((300, 600), dtype=np.float32)
    assert limit_size(gray, 1024) is gray
    small = limit_size(gray, 150)
    assert small.shape == (75, 150) and small.dtype == np.float32


def test_clahe_raises_local_contrast_and_records_no_state():
    rng = np.random.default_rng(1)
    low_contrast = (0.4 + 0.05 * rng.random((128, 128))).astype(np.float32)
    before = low_contrast.copy()
    out = apply_clahe(low_contrast, ClaheConfig())
    np.testing.assert_array_equal(low_contrast, before)
    assert out.dtype == np.float32 and out.shape == low_contrast.shape
    assert out.std() > 3 * low_contrast.std()
    assert np.all(apply_clahe(np.full((64, 64), 0.5, np.float32), ClaheConfig()) == 0)


def test_clahe_parameters_matter():
    gray = np.random.default_rng(2).random((128, 128)).astype(np.float32) * 0.3
    assert not np.allclose(apply_clahe(gray, ClaheConfig(clip_limit=0.01)),
                           apply_clahe(gray, ClaheConfig(clip_limit=0.5)))


def test_resize_encode_decode_roundtrip():
    gray8 = to_uint8(np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64))
    square = resize_square(gray8, 32)
    assert square.shape == (32, 32) and square.dtype == np.uint8
    np.testing.assert_array_equal(decode_png_gray(encode_png(square)), square)


def test_pixel_hash_sees_pixels_not_bytes():
    pixels = gradient()
    fast, small = encode(pixels, compress_level=1), encode(pixels, compress_level=9)
    assert fast != small
    assert pixel_hash(decode_image(fast, MAX_PIXELS)) == pixel_hash(decode_image(small, MAX_PIXELS))
    changed = pixels.copy()
    changed[0, 0] ^= 1
    assert pixel_hash(changed) != pixel_hash(pixels)
