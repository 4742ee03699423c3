"""`cxr train` and jobs/train.py: the training job's options, its config, its run."""

from __future__ import annotations

import argparse

from cxr.config import (DEFAULT_APPEARANCE_STRENGTH, LR_SCHEDULES, MODEL_NAMES, AugmentConfig, TrainConfig,
                        add_wait_timeout_argument, parse_node_labels)
from cxr.errors import UserError
from cxr.runtime import setup_logging

DESCRIPTION = "Train a chest X-ray classifier with Ray Train and Keras."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, name_help="run name (default: the model's name)")
    parser.add_argument("--verbose", action="store_true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def add_training_arguments(parser: argparse.ArgumentParser, name_help: str) -> None:
    """The training job's options, which the tuning job takes too (build_config reads them)."""
    defaults = TrainConfig()
    parser.add_argument("--data", default=defaults.data,
                        help="output of jobs/preprocess.py, local or s3:// (default: %(default)s)")
    parser.add_argument("--model", choices=MODEL_NAMES, default=defaults.model)
    parser.add_argument("--weights", default=defaults.weights,
                        help="none, imagenet (vgg19_head) or a weights file (default: imagenet for "
                             "vgg19_head, none for scratch_cnn)")
    parser.add_argument("--storage", default=defaults.storage,
                        help="where runs live, local or s3:// (default: %(default)s)")
    parser.add_argument("--name", default=defaults.name, help=name_help)
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="upper bound (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help="epochs without a better validation loss before stopping (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch size")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="Adam's (peak) learning rate (default: %(default)s)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule,
                        help="cosine decay to 0 over --epochs, or constant (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=defaults.dropout,
                        help="dropout around the dense head; 0 for none (default: %(default)s)")
    parser.add_argument("--no-class-weights", action="store_true", help="do not weight classes by frequency")
    parser.add_argument("--no-augment", action="store_true",
                        help="no on-the-fly geometric augmentation (appearance: --appearance-augment 0)")
    parser.add_argument("--appearance-augment", type=float, default=DEFAULT_APPEARANCE_STRENGTH, metavar="STRENGTH",
                        help="appearance augmentation (gamma, contrast, brightness, blur, noise, resolution loss) "
                             "as hospitals differ: 1 is the preset, 0 none (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--cpus-per-worker", type=float, default=defaults.cpus_per_worker)
    parser.add_argument("--node-label", action="append", metavar="KEY=VALUE",
                        help="run the workers only on nodes with this Ray node label (repeatable); "
                             "on the cluster configs in this repository: cxr-pool=gpu")
    parser.add_argument("--max-failures", type=int, default=defaults.max_failures,
                        help="worker failures survived by resuming from the latest checkpoint")
    parser.add_argument("--cache-mib", type=int, default=defaults.cache_mib,
                        help="memory per worker to keep decoded images after the first epoch; 0 streams "
                             "every epoch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fail-at-epoch", type=int, default=defaults.fail_at_epoch,
                        help="resilience drill: one worker raises once in this epoch")
    add_wait_timeout_argument(parser, "workers")


def build_config(args: argparse.Namespace) -> TrainConfig:
    if args.appearance_augment < 0:
        raise UserError(f"--appearance-augment must not be negative, got {args.appearance_augment}")
    geometric = AugmentConfig(0, 0, 0) if args.no_augment else AugmentConfig()
    try:
        augment = geometric.with_appearance(args.appearance_augment)
    except UserError as too_strong:  # says which strength is out of range, not which flag set it
        raise UserError(f"--appearance-augment {args.appearance_augment:g} is too strong: {too_strong}") from None
    return TrainConfig(
        data=args.data, model=args.model, weights=args.weights, storage=args.storage, name=args.name,
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule, dropout=args.dropout,
        class_weights=not args.no_class_weights,
        augment=augment,
        workers=args.workers, gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures, cache_mib=args.cache_mib, seed=args.seed, fail_at_epoch=args.fail_at_epoch,
        node_labels=parse_node_labels(args.node_label), wait_timeout=args.wait_timeout)


def main(argv: list[str] | None = None) -> int:
    """`python jobs/train.py ARGS`."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The job, from its parsed arguments (`cxr train`, main)."""
    setup_logging(args.verbose, gpu=args.gpu)  # before Ray and TensorFlow are imported
    # The stage loads Ray Train and pyarrow: --help and bad arguments answer before that.
    from cxr.train.job import format_summary, run_training
    summary = run_training(build_config(args))
    print(format_summary(summary))
    return 0
