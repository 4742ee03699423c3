"""DICOM bytes to the internal image type: a pure function, and what it may say about a file.

Hospital radiographs come as DICOM. `decode_dicom` turns one file's bytes into the 2-D
float32 gray image in [0, 1] that cxr.preprocess.transforms works on, so a DICOM then goes
through exactly the PNG path (markings, CLAHE, resize). The mapping follows the DICOM
grayscale pipeline (PS3.3 C.11):

1. stored values -> modality values: Modality LUT, else Rescale Slope / Intercept;
2. modality values -> [0, 1] by the first VOI transform present, in this order:
   a VOI LUT Sequence (the modality's own curve), else the first Window Center / Width
   (with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID), else the full range the
   header allows (BitsStored and Pixel Representation through the rescale), so a 12-bit
   image in 16-bit words is not nearly black;
3. MONOCHROME1 (bright = low values) is inverted, so bone is bright as in MONOCHROME2;
4. padding pixels (Pixel Padding Value, up to Pixel Padding Range Limit) become black.

The LUT wins over a window when both are there, as in pydicom's `apply_voi_lut`: where
a device ships a LUT, the window is its simpler approximation.

Presentation LUT Shape: in an image (not a presentation state) the standard defines it
as restating the Photometric Interpretation, IDENTITY "shall be used" with MONOCHROME2
and INVERSE with MONOCHROME1 (PS3.3 C.7.6.1, General Image Module): "output after
inversion is in P-Values" names the MONOCHROME1 inversion itself, not a second one, so
MONOCHROME1 + INVERSE is inverted once. A shape that contradicts the Photometric
Interpretation is ignored: such files exist (Fuji DX objects, for which dcm4che added
`--noshape`, dcm4che/dcm4che#944) and the Photometric Interpretation, which describes
the stored pixels themselves, was the right one there.

Pixel padding (PS3.3 C.7.5.1.1.2) marks the stored values outside the detector's or the
collimator's area, so that they do not count as image. Here no range is measured from the
pixels (the window, the LUT and the full range all come from the header), so padding can
only matter for its output: it is set to the darkest value, after the inversion above,
whatever the window would have made of it (pydicom ignores padding).

Lateral views (ViewPosition LL, RL, LATERAL...) are rejected (`lateral_view`): the model
reads frontal (PA or AP) chest radiographs; a file without a ViewPosition is accepted.
Given a cohort (--min-age, --max-age, --views: for an image whose listing could not know its
age or view, cxr.ingest.cohort.AT_READ), the header's PatientAge and ViewPosition are checked
against it as the listing checks metadata (`age_out_of_range`, `view_not_selected`,
`age_unknown`, `view_unknown`); the detail never quotes the age.

Patient data never leaves the file: a reject's detail may name only the tags in
DETAIL_TAGS (how the pixels are stored and which view they show, nothing about the
patient or the study), and pydicom's warnings, which can quote any element's value, are
silenced.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np

from cxr.config import CohortConfig
from cxr.ingest import cohort as cohorts
from cxr.preprocess.transforms import MIN_SIDE, ImageRejected

# The bytes that mark a DICOM Part 10 file: a 128-byte preamble, then "DICM".
PREAMBLE_END = 128
MAGIC = b"DICM"
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# The only tags whose values may appear anywhere cxr writes (a reject's detail).
DETAIL_TAGS = ("PhotometricInterpretation", "SamplesPerPixel", "NumberOfFrames", "Rows", "Columns",
               "BitsStored", "PixelRepresentation", "TransferSyntaxUID", "ViewPosition")
# ViewPosition values of lateral projections, as `_normalised` spells them: the standard's
# defined terms LL and RL (PS3.3 C.8.1.1, CR Series Module), and the free spellings some
# devices write instead. The other defined terms are accepted: decubitus views (RLD, LLD)
# are frontal projections of a patient lying on one side, obliques (RLO, LLO) neither
# frontal nor lateral; neither is told apart here.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL", "XTABLE LATERAL",
                           "X TABLE LATERAL", "CROSS TABLE LATERAL"})


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM Part 10 file (the "DICM" magic after the preamble)."""
    return data[PREAMBLE_END:PREAMBLE_END + len(MAGIC)] == MAGIC


def decode_dicom(data: bytes, max_pixels: int, cohort: CohortConfig | None = None) -> np.ndarray:
    """One single-frame grayscale DICOM's bytes to float32 gray (H, W) in [0, 1].

    The size, kind and view (and, given a `cohort`, the age and view it selects) are checked
    from the header before any pixel is decoded. Raises ImageRejected: `unsupported_file` (no
    DICM magic), `undecodable`, `no_pixel_data`, `colour`, `multi_frame`, `lateral_view`,
    `too_large`, `too_small`, and the cohort's reasons.
    """
    import pydicom  # here, not at the top: only DICOM inputs pay for the import

    if not is_dicom(data):
        raise ImageRejected("unsupported_file", "no DICM magic at byte 128: not a DICOM file")
    # pydicom's warnings (also sent to its logger) may quote element values: recorded, never shown.
    with warnings.catch_warnings(record=True) as warned, _muted(logging.getLogger("pydicom")):
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(io.BytesIO(data))
            if "PixelData" not in dataset and any("End of file" in str(w.message) for w in warned):
                raise ImageRejected("undecodable", "the file ends inside its pixel data (truncated)")
            _check_header(dataset, max_pixels)
            if cohort is not None:
                _check_cohort(dataset, cohort)
            padding_range = _padding_range(dataset)
        except ImageRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - its message may quote a value: name only its type
            raise ImageRejected("undecodable", f"not a readable DICOM file ({type(exc).__name__})") from None
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        try:
            stored = dataset.pixel_array
        except Exception as exc:  # noqa: BLE001 - a missing plugin, a truncated or corrupt stream
            raise ImageRejected("undecodable", f"pixel data not decodable ({_syntax_name(syntax)}, "
                                               f"{type(exc).__name__})") from None
        if stored.shape != (dataset.Rows, dataset.Columns):
            raise ImageRejected("undecodable", f"pixel data has shape {stored.shape}, not Rows x Columns")
        gray = _to_unit_gray(stored, dataset)
    if _lowest_is_white(dataset):
        gray = 1.0 - gray
    if padding_range is not None:
        # After the inversion: padding is background, black in either polarity, whatever the
        # window made of it. Compared on the stored values, before any transform, as the standard says.
        gray[(stored >= padding_range[0]) & (stored <= padding_range[1])] = 0.0
    return np.ascontiguousarray(gray, dtype=np.float32)


@contextlib.contextmanager
def _muted(logger: logging.Logger):
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _check_header(dataset, max_pixels: int) -> None:
    if "PixelData" not in dataset:
        raise ImageRejected("no_pixel_data", "no (integer) pixel data element, or the file ends before it")
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    samples = int(dataset.get("SamplesPerPixel", 1))
    if samples != 1 or photometric not in GRAYSCALE:
        raise ImageRejected("colour", f"PhotometricInterpretation {photometric or 'missing'}, "
                                      f"SamplesPerPixel {samples}: not a grayscale radiograph")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageRejected("multi_frame", f"NumberOfFrames {frames}: one radiograph per file is expected")
    view = _normalised(dataset.get("ViewPosition", ""))
    if view in LATERAL_VIEWS:  # so the detail only ever quotes one of LATERAL_VIEWS
        raise ImageRejected("lateral_view", f"ViewPosition {view}: a lateral view, not the frontal (PA or AP) "
                                            f"chest radiograph the model reads")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if rows * columns > max_pixels:
        raise ImageRejected("too_large", f"{columns}x{rows} exceeds {max_pixels} pixels")
    if min(rows, columns) < MIN_SIDE:
        raise ImageRejected("too_small", f"{columns}x{rows} is below {MIN_SIDE} pixels a side")


def _check_cohort(dataset, cohort: CohortConfig) -> None:
    """The cohort's age and view filters, on the header's PatientAge and ViewPosition."""
    age = cohorts.age_range(str(dataset.get("PatientAge", "") or ""))
    verdict = (cohorts.age_verdict(age, cohort, "PatientAge in the header")
               or cohorts.view_verdict(cohorts.view_code(_normalised(dataset.get("ViewPosition", ""))), cohort,
                                       "ViewPosition in the header"))
    if verdict:
        raise ImageRejected(*verdict)


def _normalised(value) -> str:
    """A code string's words, upper case, single-spaced ("x-table_lateral" -> "X TABLE LATERAL")."""
    text = str(_first(value) if value is not None else "")
    return " ".join(text.upper().replace("-", " ").replace("_", " ").split())


def _lowest_is_white(dataset) -> bool:
    """Whether the lowest values after the VOI transform are white: MONOCHROME1, whatever
    Presentation LUT Shape says.

    In an image that shape restates the Photometric Interpretation (INVERSE with
    MONOCHROME1, IDENTITY with MONOCHROME2: one inversion between them, not two), and where
    it contradicts it the Photometric Interpretation is trusted (see the module's docstring).
    Applying INVERSE as pydicom's `apply_presentation_lut` does, on top of MONOCHROME1,
    would turn bone black.
    """
    return dataset.PhotometricInterpretation == "MONOCHROME1"


def _padding_range(dataset) -> tuple[int, int] | None:
    """The stored values that are padding (PS3.3 C.7.5.1.1.2), lowest and highest, or None.

    Pixel Padding Value alone is one value; with Pixel Padding Range Limit, every value
    between the two inclusive. A range limit without a padding value (which the standard
    requires with it) is ignored: nothing says where the range starts.
    """
    if "PixelPaddingValue" not in dataset:
        return None
    try:
        value = int(_first(dataset.PixelPaddingValue))
        limit = int(_first(dataset.PixelPaddingRangeLimit)) if "PixelPaddingRangeLimit" in dataset else value
    except (TypeError, ValueError):
        raise ImageRejected("undecodable", "PixelPaddingValue or PixelPaddingRangeLimit is not an integer") from None
    low, high = sorted((value, limit))
    return low, high


def _syntax_name(uid) -> str:
    return getattr(uid, "name", None) or str(uid)


def _to_unit_gray(stored: np.ndarray, dataset) -> np.ndarray:
    """Stored values through the modality and VOI transforms to [0, 1] (steps 1 and 2 above)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(stored, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset:
        lut = dataset.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        return np.clip(apply_voi(values, dataset, index=0) / (2.0 ** bits - 1), 0.0, 1.0)
    window = _first_window(dataset)
    if window is not None:
        return _apply_window(values, *window, str(dataset.get("VOILUTFunction", "LINEAR")).upper())
    low, high = _modality_range(dataset)
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _first_window(dataset) -> tuple[float, float] | None:
    """The first Window Center / Width pair, or None when absent or unusable (width < 1)."""
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    # Either may hold several values (alternative windows): the first is the default view.
    center, width = (float(_first(dataset[name].value)) for name in ("WindowCenter", "WindowWidth"))
    return (center, width) if width >= 1 else None


def _first(value):
    from pydicom.multival import MultiValue

    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2's window functions, with the output range taken as [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR with width 1 is a threshold at the centre
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _modality_range(dataset) -> tuple[float, float]:
    """The modality values the header allows: stored range through the Modality LUT or rescale."""
    if "ModalityLUTSequence" in dataset:
        return 0.0, 2.0 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        smallest, largest = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        smallest, largest = 0.0, 2.0 ** bits - 1
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    ends = sorted((smallest * slope + intercept, largest * slope + intercept))
    return ends[0], ends[1]
