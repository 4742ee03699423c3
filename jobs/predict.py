"""Score raw chest X-rays with an exported model: `python jobs/predict.py --help`.

Locally: `python jobs/predict.py --model outputs/runs/scratch_cnn/model --input my_images/ --output preds/`.
On a cluster: `ray job submit --working-dir . -- python jobs/predict.py --model s3://.../model
--input s3://.../new-images/ --output s3://.../predictions/ --gpu`.
"""

from __future__ import annotations

import argparse
import os
import sys

# `python jobs/predict.py` puts jobs/ on sys.path, not the repository (see jobs/preprocess.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.artifacts import EXPORT_DIR, PREDICTIONS_CSV_FILE, PREDICTIONS_FILE, PREDICTIONS_SUMMARY_FILE  # noqa: E402
from cxr.config import PredictConfig, add_wait_timeout_argument  # noqa: E402
from cxr.runtime import run_job, setup_logging  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = PredictConfig(model="", input="", output="")
    parser = argparse.ArgumentParser(description="Batch inference on raw chest X-rays with Ray Data.")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, gpu=args.gpu)  # before Ray and TensorFlow are imported
    # The stage loads Ray, pyarrow and the scoring modules: --help and bad arguments answer before that.
    from cxr.predict.job import format_summary, run_predict
    config = PredictConfig(model=args.model, input=args.input, output=args.output, threshold=args.threshold,
                           gpu=args.gpu, actors=args.actors, overwrite=args.overwrite,
                           wait_timeout=args.wait_timeout)
    print(format_summary(run_predict(config)))
    return 0


if __name__ == "__main__":
    run_job(main)
