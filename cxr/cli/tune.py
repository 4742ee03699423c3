"""`cxr tune` and jobs/tune.py: the tuning job's options (the training job's and the search's),
its config, its run."""

from __future__ import annotations

import argparse

from cxr.cli.train import add_training_arguments
from cxr.cli.train import build_config as build_train_config
from cxr.config import DEFAULT_SPACE, SEARCHERS, TUNE_METRICS, TuneConfig
from cxr.runtime import setup_logging

DESCRIPTION = ("Search a chest X-ray classifier's hyperparameters with Ray Tune: each trial is a training run "
               "with these options, the search space replacing the settings it names.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TuneConfig()
    add_training_arguments(parser, name_help="sweep name: it lives in <storage>/<name>/ (default: <model>-sweep)")
    search = parser.add_argument_group("the search")
    search.add_argument("--trials", type=int, default=defaults.trials,
                        help="training runs to try (default: %(default)s)")
    search.add_argument("--space", metavar="FILE",
                        help="YAML or JSON: the settings to tune and their ranges, replacing the default space "
                             "(learning rate, dropout, batch size, augmentation strength, class weights; "
                             "format in cxr/tune/space.py)")
    search.add_argument("--max-concurrent", type=int, default=defaults.max_concurrent,
                        help="trials at once (default: as many as the cluster's GPUs, with --gpu, or CPUs hold)")
    search.add_argument("--metric", choices=TUNE_METRICS, default=defaults.metric,
                        help="validation metric the scheduler and the choice of the best trial use "
                             "(default: %(default)s)")
    search.add_argument("--grace-period", type=int, default=defaults.grace_period,
                        help="epochs every trial trains before the scheduler may stop it (default: %(default)s)")
    search.add_argument("--reduction-factor", type=int, default=defaults.reduction_factor,
                        help="the scheduler keeps the best 1/N of the trials at each rung (default: %(default)s)")
    search.add_argument("--searcher", choices=SEARCHERS, default=defaults.searcher,
                        help="auto: Optuna's TPE when optuna is installed, else random (default: %(default)s)")
    parser.add_argument("--verbose", action="store_true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> TuneConfig:
    # Reads the --space file (pyarrow, for s3://): after --help and argparse's own errors.
    from cxr.tune.space import load_space

    space = {"space": load_space(args.space), "space_source": f"--space {args.space}"} if args.space else {
        "space": DEFAULT_SPACE}
    return TuneConfig(train=build_train_config(args), trials=args.trials, max_concurrent=args.max_concurrent,
                      metric=args.metric, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                      searcher=args.searcher, **space)


def main(argv: list[str] | None = None) -> int:
    """`python jobs/tune.py ARGS`."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The job, from its parsed arguments (`cxr tune`, main)."""
    setup_logging(args.verbose, gpu=args.gpu)  # before Ray and TensorFlow are imported
    config = build_config(args)  # a bad space or setting answers before Ray starts
    # The stage loads Ray Tune, Ray Train and pyarrow.
    from cxr.tune.job import format_summary, run_tuning
    print(format_summary(run_tuning(config)))
    return 0
