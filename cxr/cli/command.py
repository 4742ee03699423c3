"""The `cxr` command: one subcommand per job, each with that job's own options (cxr/cli/<job>.py)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from cxr.cli import evaluate, predict, preprocess, train, tune
from cxr.errors import UserError
from cxr.runtime import run_job

# In the data's order, as `cxr --help` lists them.
JOBS = {job.name: job for job in (preprocess.JOB, train.JOB, tune.JOB, evaluate.JOB, predict.JOB)}


class _JobListFormatter(argparse.HelpFormatter):
    """argparse's help, with the jobs' names measured at the indent it lists them at: it
    measures them two columns short, which put the longest, preprocess, on a line of its own."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            listed_at = self._current_indent + 2 * self._indent_increment
            self._action_max_length = max(self._action_max_length, listed_at + max(map(len, action.choices)))


class _CommandParser(argparse.ArgumentParser):
    """`cxr` itself: a missing or unknown job is one line and exit 2, as a job's bad input is
    (run_job). The jobs' own parsers answer as in jobs/: their usage, then argparse's error."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _CommandParser(
        prog="cxr", formatter_class=_JobListFormatter,
        description="Chest X-rays to a trained, evaluated COVID-19 classifier, as Ray jobs on a laptop or a Ray "
                    "cluster. `cxr JOB --help` lists a job's options.",
        epilog="In order: preprocess, train (or tune), evaluate; predict scores new images with a trained model.")
    jobs = parser.add_subparsers(title="jobs", dest="job", metavar="JOB", required=True,
                                 parser_class=argparse.ArgumentParser)
    for name, job in JOBS.items():
        job.add_arguments(jobs.add_parser(name, help=job.description, description=job.description))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return JOBS[args.job].run(args)


def console_script() -> None:
    """`cxr` (pyproject.toml's [project.scripts]): a UserError is one line and exit 2, as in jobs/."""
    run_job(main)
