"""Search the training job's hyperparameters with Ray Tune: `python jobs/tune.py --help`.

Locally: `python jobs/tune.py --data SHARDS --model scratch_cnn --trials 16 --epochs 30 --storage runs/
--name sweep1`. On a cluster: `ray job submit --working-dir . -- python jobs/tune.py --data s3://...
--trials 64 --gpu --storage s3://.../runs --name sweep1`. Rerunning the same command resumes the
sweep. The best trial is an ordinary run: `python jobs/evaluate.py --run runs/sweep1/best`.

Every option of jobs/train.py applies to every trial; the search space (the default one, or
--space FILE) replaces the settings it names.
"""

from __future__ import annotations

import argparse
import os
import sys

# `python jobs/tune.py` puts jobs/ on sys.path, not the repository (see jobs/preprocess.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxr.config import DEFAULT_SPACE, SEARCHERS, TUNE_METRICS, TuneConfig  # noqa: E402
from cxr.runtime import run_job, setup_logging  # noqa: E402
from jobs.train import add_training_arguments  # noqa: E402
from jobs.train import build_config as build_train_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TuneConfig()
    parser = argparse.ArgumentParser(
        description="Search a chest X-ray classifier's hyperparameters: each trial is a run of jobs/train.py "
                    "with these options, the search space replacing the settings it names.")
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
    args = parse_args(argv)
    setup_logging(args.verbose, gpu=args.gpu)  # before Ray and TensorFlow are imported
    config = build_config(args)  # a bad space or setting answers before Ray starts
    # The stage loads Ray Tune, Ray Train and pyarrow.
    from cxr.tune.job import format_summary, run_tuning
    print(format_summary(run_tuning(config)))
    return 0


if __name__ == "__main__":
    run_job(main)
