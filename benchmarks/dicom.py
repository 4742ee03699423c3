"""DICOM decode cost per image, beside the PNG path, on the same real chest X-rays.

    python benchmarks/dicom.py [--data PATH] [--limit N] [--no-write] [--smoke]

Each real PNG is also written, in memory and untimed, as the 12-bit DICOM a hospital
sends: uncompressed (MONOCHROME2 and MONOCHROME1), RLE, JPEG 2000 lossless, JPEG lossless
(process 14) and, from its 8 bits, JPEG baseline. Then, in one process on one core, each
format's decode to the internal gray image is timed on every image (PNG: Pillow decode +
`to_grayscale`; DICOM: `decode_dicom`), and so is the whole per-image work
(`process_image`: decode .. PNG) for the PNG and the uncompressed DICOM. It prints ms per
image and bytes per file, and writes them into docs/benchmarks.md and docs/benchmarks/dicom.json.

No Ray: this is the per-image cost that the preprocessing job's workers pay, so it scales
with cores as that job does (see the preprocess section).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402

SECTION = "dicom"
PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pillow", "numpy")
DEFAULT_LIMIT = 400
WARMUP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=common.REAL_SAMPLE,
                        help="class-per-folder tree of real images (default: the shared sample)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help="use N images, evenly spread over the listing (default: %(default)s; "
                             "JPEG lossless files are written by a slow pure-Python encoder)")
    parser.add_argument("--no-write", action="store_true", help="print the results only; leave docs/ untouched")
    parser.add_argument("--smoke", action="store_true", help=common.SMOKE_HELP)
    return parser.parse_args(argv)


def dicom_variants(png: bytes) -> dict[str, bytes]:
    """The image's DICOM files, one per transfer syntax; built untimed."""
    import numpy as np
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, RLELossless

    from cxr.preprocess.transforms import decode_image, to_grayscale
    from tests.dicom_files import make_dicom

    gray8 = np.rint(to_grayscale(decode_image(png, 10**9)) * 255).astype(np.uint8)
    stored = np.rint(gray8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    return {
        "DICOM uncompressed, MONOCHROME2": make_dicom(stored),
        "DICOM uncompressed, MONOCHROME1": make_dicom(4095 - stored, photometric="MONOCHROME1"),
        "DICOM RLE lossless": make_dicom(stored, syntax=RLELossless),
        "DICOM JPEG 2000 lossless": make_dicom(stored, syntax=JPEG2000Lossless),
        "DICOM JPEG lossless (SV1)": make_dicom(stored, syntax=JPEGLosslessSV1),
        "DICOM JPEG baseline (8 bit)": make_dicom(gray8, syntax=JPEGBaseline8Bit),
    }


def time_each(function, inputs: list[bytes]) -> list[float]:
    """Milliseconds of `function(data)` on each input, after a few untimed calls."""
    for data in inputs[:WARMUP]:
        function(data)
    times = []
    for data in inputs:
        start = perf_counter()
        function(data)
        times.append((perf_counter() - start) * 1000)
    return times


def summary(times: list[float], inputs: list[bytes]) -> dict:
    return {"images": len(times), "median_ms": round(statistics.median(times), 3),
            "mean_ms": round(statistics.fmean(times), 3),
            "p95_ms": round(sorted(times)[int(0.95 * (len(times) - 1))], 3),
            "mean_kib": round(sum(map(len, inputs)) / len(inputs) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args = common.smoke(args, data=common.smoke_images(), limit=2 * WARMUP)
    common.require_real_images(args.data)
    if args.limit < 1:
        common.fail(f"--limit must be positive, got {args.limit}")
    from cxr.config import PreprocessConfig
    from cxr.ingest import sources
    from cxr.preprocess.dicom import decode_dicom
    from cxr.preprocess.pipeline import process_image
    from cxr.preprocess.transforms import decode_image, to_grayscale

    items = sources.list_source(PreprocessConfig(source=str(args.data))).items
    if not items:
        common.fail(f"{args.data}: no images found")
    step = max(1, len(items) // args.limit)
    chosen = items[::step][:args.limit]
    pngs = [Path(item["location"]).read_bytes() for item in chosen]
    files: dict[str, list[bytes]] = {"PNG (Pillow)": pngs}
    for png in pngs:
        for name, data in dicom_variants(png).items():
            files.setdefault(name, []).append(data)

    config = PreprocessConfig()
    decoders = {name: (lambda data: to_grayscale(decode_image(data, config.max_pixels))) if name.startswith("PNG")
                else (lambda data: decode_dicom(data, config.max_pixels)) for name in files}
    decode = {name: summary(time_each(decoders[name], inputs), inputs) for name, inputs in files.items()}
    whole = {name: summary(time_each(lambda data: process_image(data, config), files[name]), files[name])
             for name in ("PNG (Pillow)", "DICOM uncompressed, MONOCHROME2")}
    results = {"data": str(args.data), "date": datetime.date.today().isoformat(), "images": len(pngs),
               "arguments": " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": common.machine_description(PACKAGES), "decode": decode, "process_image": whole}
    common.publish(SECTION, render(results), results, write=not args.no_write)
    return 0


def render(results: dict) -> str:
    png = results["decode"]["PNG (Pillow)"]["median_ms"]
    rows = [[name, r["mean_kib"], r["median_ms"], r["mean_ms"], r["p95_ms"], f"{r['median_ms'] / png:.1f}x"]
            for name, r in results["decode"].items()]
    whole = [[name, r["median_ms"], r["mean_ms"]] for name, r in results["process_image"].items()]
    return "\n".join([
        "## DICOM decoding beside PNG",
        "",
        f"`python benchmarks/dicom.py{(' ' + results['arguments']) if results['arguments'] else ''}` on "
        f"{results['date']}: {results['images']} real chest X-rays of the shared sample, each also as the 12-bit "
        "DICOM a hospital sends (JPEG baseline from its 8 bits), decoded to the internal gray image in one "
        "process on one core.",
        "",
        common.machine_markdown(results["machine"]),
        "",
        "Decode to gray float32 in [0, 1] (PNG: Pillow + `to_grayscale`; DICOM: `decode_dicom`), per image:",
        "",
        common.markdown_table(["format", "KiB per file", "median ms", "mean ms", "p95 ms", "vs PNG"], rows),
        "",
        "The whole per-image work (`process_image`: decode, markings, CLAHE, resize, PNG), per image:",
        "",
        common.markdown_table(["input", "median ms", "mean ms"], whole),
    ])


if __name__ == "__main__":
    sys.exit(main())
