"""`cxr predict` and jobs/predict.py: the prediction job's options, its config, its run."""

from __future__ import annotations

import argparse

from cxr.artifacts import EXPORT_DIR, PREDICTIONS_CSV_FILE, PREDICTIONS_FILE, PREDICTIONS_SUMMARY_FILE
from cxr.config import PredictConfig, add_wait_timeout_argument
from cxr.runtime import setup_logging

DESCRIPTION = "Batch inference on raw chest X-rays with Ray Data."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PredictConfig(model="", input="", output="")
    parser.add_argument("--model", required=True, help=f"an exported model folder: <storage>/<name>/{EXPORT_DIR}")
    parser.add_argument("--input", required=True,
                        help="a folder, s3:// prefix or .zip of images (PNG, JPEG, DICOM) at any depth")
    parser.add_argument("--output", required=True,
                        help=f"folder or s3:// prefix for {PREDICTIONS_FILE}, {PREDICTIONS_CSV_FILE} and "
                             f"{PREDICTIONS_SUMMARY_FILE}")
    parser.add_argument("--threshold", type=float, default=defaults.threshold,
                        help="predict the positive class (COVID) at or above this probability; "
                             "default: the most probable class. evaluate.py's report states the threshold "
                             "it chose on the validation split")
    parser.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    parser.add_argument("--actors", type=int, default=defaults.actors,
                        help="model actors (default: one per GPU, or half the CPUs, at most 4)")
    add_wait_timeout_argument(parser, "model actors")
    parser.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    parser.add_argument("--verbose", action="store_true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python jobs/predict.py ARGS`."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The job, from its parsed arguments (`cxr predict`, main)."""
    setup_logging(args.verbose, gpu=args.gpu)  # before Ray and TensorFlow are imported
    # The stage loads Ray, pyarrow and the scoring modules: --help and bad arguments answer before that.
    from cxr.predict.job import format_summary, run_predict
    config = PredictConfig(model=args.model, input=args.input, output=args.output, threshold=args.threshold,
                           gpu=args.gpu, actors=args.actors, overwrite=args.overwrite,
                           wait_timeout=args.wait_timeout)
    print(format_summary(run_predict(config)))
    return 0
