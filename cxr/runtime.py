"""Process-level setup shared by the jobs: logging, Ray, and the user-error exit path."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from cxr.errors import UserError

log = logging.getLogger("cxr")


def interactive() -> bool:
    """A person at a terminal (progress bars) rather than a log file (plain lines)."""
    return sys.stderr.isatty() and os.environ.get("CI") is None


def progress_style(ray_data_bars: bool = False) -> str:
    """How cxr.progress shows a stage: a bar at a terminal (unless Ray Data's bars already
    show it), lines in a log."""
    if interactive():
        return "quiet" if ray_data_bars else "bar"
    return "lines"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def ensure_ray() -> bool:
    """Connect to the cluster this runs on (RAY_ADDRESS, as `ray job submit` sets) or start a
    local Ray; configure Ray Data for this kind of output. True when this process started
    the Ray it uses (so nothing but it will ever join)."""
    # Ray takes a second or two to import: the jobs import this module before parsing
    # their arguments, and --help or a bad argument should answer at once.
    import ray
    from ray.data import DataContext

    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:
            # A local Ray for this one job: without the dashboard's dozen processes, which
            # compete with the image work for a laptop's cores (`ray start --head` gives one).
            ray.init(logging_level=logging.WARNING, include_dashboard=False)
            started = True
    context = DataContext.get_current()
    context.enable_progress_bars = interactive()
    # Per-operator progress lines ("Running Dataset ...") only help a person at a terminal.
    context.print_on_execution_start = interactive()
    return started


def run_job(main: Callable[[], int | None]) -> None:
    """Run a job's main; a UserError becomes one line on stderr and exit code 2."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
