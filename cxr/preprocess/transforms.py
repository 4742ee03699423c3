"""Per-image transforms: small pure functions of one image.

Each takes an array (or bytes) and returns a new one; none mutates its input or holds
state, so each is tested directly and inside Ray Data. The internal image type between
`to_grayscale` and `to_uint8` is a 2-D float32 array in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage import exposure, transform

from cxr.config import ClaheConfig

SUPPORTED_FORMATS = ("PNG", "JPEG")
MIN_SIDE = 32
# zlib level 1: measured on CLAHE'd 299 px X-rays, 2.3 ms and 48 KiB an image against 9.8 ms
# and 43 KiB at Pillow's default 6, where encoding cost a third of all per-image work.
PNG_COMPRESS_LEVEL = 1


class ImageRejected(Exception):
    """This image cannot be used; `reason` is a short stable code recorded in rejected.parquet."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode PNG or JPEG bytes to an array: (H, W) gray, or (H, W, 3) RGB; 8 or 16 bit.

    The size is checked from the header before any pixel is decoded, so a huge image costs
    nothing. Alpha is dropped (X-rays carry none that matters) and palettes are expanded.
    """
    if not data:
        raise ImageRejected("undecodable", "empty file")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise ImageRejected("undecodable", f"unsupported image format {image.format}")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
            if min(width, height) < MIN_SIDE:
                raise ImageRejected("too_small", f"{width}x{height} is below {MIN_SIDE} pixels a side")
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", str(exc).splitlines()[0]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("undecodable", str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return _to_array(image)


def _to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if mode == "I":
        # Pillow widens some 16-bit grayscale PNGs to 32-bit ints; their values fit 16 bits.
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def pixel_hash(pixels: np.ndarray) -> str:
    """Content hash of decoded pixels: equal for byte-different encodings of the same image."""
    digest = hashlib.sha256()
    digest.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def to_grayscale(pixels: np.ndarray) -> np.ndarray:
    """Any decoded array to float32 gray in [0, 1].

    High-bit-depth images are scaled by their effective bit depth (the smallest 2**k - 1
    that holds their maximum): a 12-bit radiograph stored in 16 bits would otherwise come
    out nearly black. A float32 array is taken to be the internal type already (a decoded
    DICOM, whose header says how to map it: cxr.preprocess.dicom) and returned as it is.
    """
    if pixels.dtype == np.float32 and pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3:
        weights = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
        gray = pixels[..., :3].astype(np.float32) @ weights
    else:
        gray = pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        scale = 255.0
    else:
        peak = int(pixels.max()) if pixels.size else 0
        scale = float(2 ** max(8, peak.bit_length()) - 1)
    return np.clip(gray / scale, 0.0, 1.0).astype(np.float32)


def limit_size(gray: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (anti-aliased, aspect kept) so that the longest side is at most max_side."""
    height, width = gray.shape
    longest = max(height, width)
    if longest <= max_side:
        return gray
    factor = max_side / longest
    shape = (max(1, round(height * factor)), max(1, round(width * factor)))
    return transform.resize(gray, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def apply_clahe(gray: np.ndarray, clahe: ClaheConfig) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation, as in the source paper."""
    if float(gray.max()) == float(gray.min()):
        # equalize_adapthist divides by the intensity range; a flat image stays flat.
        return np.zeros_like(gray, dtype=np.float32)
    equalized = exposure.equalize_adapthist(
        gray, kernel_size=clahe.kernel_size, clip_limit=clahe.clip_limit, nbins=clahe.nbins)
    return equalized.astype(np.float32)


def to_uint8(gray: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)


def resize_square(gray8: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size, as the source paper did (no padding: black bars are a shortcut)."""
    if gray8.shape == (size, size):
        return gray8
    image = Image.fromarray(gray8)
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def encode_png(gray8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray8).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_png_gray(data: bytes) -> np.ndarray:
    """Decode one of our own shard PNGs back to a uint8 (H, W) array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
