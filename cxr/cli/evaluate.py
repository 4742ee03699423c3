"""`cxr evaluate` and jobs/evaluate.py: the evaluation job's options, its config, its run."""

from __future__ import annotations

import argparse

from cxr.artifacts import EXPORT_DIR, REPORT_DIR
from cxr.config import EvaluateConfig, add_wait_timeout_argument
from cxr.runtime import setup_logging

DESCRIPTION = "Evaluate a trained chest X-ray classifier and write its report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvaluateConfig(run="")
    parser.add_argument("--run", required=True,
                        help=f"a training run folder <storage>/<name> (or its {EXPORT_DIR}/)")
    parser.add_argument("--data", default=defaults.data,
                        help="evaluate on these shards (a jobs/preprocess.py output) or on a raw class-per-folder "
                             "image tree, instead of the training data's test split")
    parser.add_argument("--split", default=defaults.split, choices=("train", "val", "test"),
                        help="the split of shards to evaluate (default: %(default)s)")
    parser.add_argument("--output", default=defaults.output, help=f"report folder (default: <run>/{REPORT_DIR})")
    parser.add_argument("--resamples", type=int, default=defaults.resamples,
                        help="bootstrap resamples for the intervals (default: %(default)s)")
    parser.add_argument("--gradcam-examples", type=int, default=defaults.gradcam_examples,
                        help="Grad-CAM examples per group (true/false positives, false negatives)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    parser.add_argument("--actors", type=int, default=defaults.actors,
                        help="model actors (default: one per GPU, or half the CPUs, at most 4)")
    add_wait_timeout_argument(parser, "model actors")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="of the bootstrap")
    parser.add_argument("--verbose", action="store_true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python jobs/evaluate.py ARGS`."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The job, from its parsed arguments (`cxr evaluate`, main)."""
    setup_logging(args.verbose, gpu=args.gpu)  # before Ray and TensorFlow are imported
    # The stage loads Ray, pyarrow and the scoring modules: --help and bad arguments answer before that.
    from cxr.evaluate.job import format_summary, run_evaluation
    config = EvaluateConfig(run=args.run, data=args.data, split=args.split, output=args.output,
                            resamples=args.resamples, gradcam_examples=args.gradcam_examples, gpu=args.gpu,
                            actors=args.actors, seed=args.seed, wait_timeout=args.wait_timeout)
    print(format_summary(run_evaluation(config)))
    return 0
