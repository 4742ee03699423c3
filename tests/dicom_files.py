"""DICOM files for the tests, made with pydicom (no downloaded data).

Every file carries a planted patient name and ID (PATIENT_NAME, PATIENT_ID) so a test can
search what cxr wrote for them. Compressed files: RLE through pydicom's own encoder,
JPEG 2000 through pylibjpeg-openjpeg (pydicom's `compress`), JPEG-LS lossless and
near-lossless through pyjpegls (CharLS, a test-only package: cxr decodes JPEG-LS with
pylibjpeg-libjpeg), JPEG baseline through Pillow's encoder, and JPEG lossless (process 14,
selection value 1) through `lossless_jpeg` below: no installed package encodes it, and the
decoder under test (pylibjpeg-libjpeg) is not the writer, so a round trip still proves the
decoding.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PATIENT_NAME = "Plantedname^Zelda"
PATIENT_ID = "PID-93847561"
# The largest difference JPEG-LS near-lossless files are made with (CharLS's NEAR parameter).
NEAR_LOSSLESS_ERROR = 3


def make_dicom(pixels: np.ndarray, *, bits_stored: int = 12, photometric: str = "MONOCHROME2",
               syntax: str = "", frames: int = 1, window: tuple[float, float] | None = None,
               rescale: tuple[float, float] | None = None, voi_lut: np.ndarray | None = None,
               pixel_data: bool = True, view: str | None = "PA", extra: dict | None = None) -> bytes:
    """A DICOM Part 10 file of `pixels`: (H, W) gray, (H, W, 3) RGB or (frames, H, W).

    uint8 / uint16 / int16 pixels give BitsAllocated 8 / 16 / 16 (signed for int16).
    `syntax` is a transfer syntax UID (default Explicit VR Little Endian); `view` the
    ViewPosition, None for none.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1,
                             JPEGLSLossless, JPEGLSNearLossless, RLELossless, SecondaryCaptureImageStorage,
                             generate_uid)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.StudyDescription = "19700101", "Planted study of Zelda"
    ds.Modality = "DX"
    if view is not None:
        ds.ViewPosition = view
    colour = pixels.ndim == 3 and frames == 1
    ds.Rows, ds.Columns = pixels.shape[-3 if colour else -2], pixels.shape[-2 if colour else -1]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = 8 if pixels.dtype == np.uint8 else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = voi_lut.astype("<u2").tobytes()
        ds.VOILUTSequence = [item]
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if syntax in (RLELossless, JPEG2000Lossless):
            ds.compress(syntax)
        elif syntax == JPEGLSLossless:
            ds.compress(syntax, encoding_plugin="pyjpegls")
        elif syntax == JPEGLSNearLossless:
            ds.compress(syntax, encoding_plugin="pyjpegls", jls_error=NEAR_LOSSLESS_ERROR)
        elif syntax == JPEGBaseline8Bit:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            _encapsulated(ds, encapsulate([buffer.getvalue()]), syntax)
        elif syntax == JPEGLosslessSV1:
            _encapsulated(ds, encapsulate([lossless_jpeg(pixels, ds.BitsStored)]), syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encapsulated(ds, data: bytes, syntax: str) -> None:
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax


def lossless_jpeg(pixels: np.ndarray, precision: int) -> bytes:
    """A lossless JPEG (ITU T.81 process 14, predictor 1) of a 2-D array, one fixed Huffman table.

    All 17 difference categories get 5-bit codes: valid and simple, if not compact.
    """
    height, width = pixels.shape
    values = pixels.astype(np.int64)
    bits: list[str] = []
    for y in range(height):
        for x in range(width):
            if x:
                predicted = values[y, x - 1]
            elif y:
                predicted = values[y - 1, x]
            else:
                predicted = 1 << (precision - 1)
            diff = (int(values[y, x]) - int(predicted)) % 65536
            diff = diff - 65536 if diff >= 32768 else diff
            category = abs(diff).bit_length()
            bits.append(format(category, "05b"))
            if 0 < category < 16:
                extra = diff if diff > 0 else diff + (1 << category) - 1
                bits.append(format(extra, f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    entropy = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        entropy.append(byte)
        if byte == 0xFF:
            entropy.append(0x00)  # byte stuffing
    sof = bytes([0xFF, 0xC3, 0, 11, precision]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") \
        + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0xFF, 0xC4, 0, 2 + 1 + 16 + 17, 0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])  # Ss = predictor 1, Se = 0, Al = 0
    return b"\xff\xd8" + sof + dht + sos + bytes(entropy) + b"\xff\xd9"


def gradient(height: int = 64, width: int = 48, bits: int = 12, dtype=np.uint16) -> np.ndarray:
    """A gray ramp with a bright disc, covering the whole stored range of `bits`."""
    y, x = np.mgrid[0:height, 0:width]
    ramp = (x + y) / (height + width - 2)
    disc = ((y - height / 2) ** 2 + (x - width / 2) ** 2) < (min(height, width) / 4) ** 2
    unit = np.clip(ramp + disc * 0.3, 0, 1)
    return np.rint(unit * (2 ** bits - 1)).astype(dtype)
