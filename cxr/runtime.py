"""Process-level setup shared by the jobs: what they print, Ray, and the user-error exit path.

What a job prints is for a person: its own story (inputs, progress, epochs, results,
warnings that matter, errors), not the start-up notices and progress chatter of Ray,
Ray Data, Ray Train and TensorFlow. Those libraries are set up here to keep to warnings
and errors, in the driver and in every Ray worker of the job. `--verbose` leaves them at
their normal levels (and logs DEBUG); a library variable the user set is left as it is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
from collections.abc import Callable

from cxr import keras_lib
from cxr.errors import UserError

log = logging.getLogger("cxr")

# Ray Data's level for its `ray.data` logger (its INFO: "Dataset ... execution finished",
# "Data sink Parquet finished", progress lines in a log), read when ray.data is imported.
RAY_DATA_QUIET = {"RAY_DATA_LOG_LEVEL": "WARNING"}

# Python loggers of libraries that log about their internals, and the level they keep to.
# TensorFlow's distribution strategy announces devices and collective ops at INFO (Ray
# Train sets a worker's root logger to INFO). Ray Data's progress-display module only says
# how progress is shown: its one warning, "Progress bars disabled. To enable, set ...",
# answers our own choice of no bars in a log. Ray Train reports each result at INFO from
# a logger named after its file, not `ray.train...` (ray/train/v2/_internal/execution/
# context.py: `logging.getLogger(__file__)`), which its LoggingConfig therefore misses.
# Ray Train's placement-group cleaner warns when it frees the workers of a run whose
# controller died, which is its job when a sweep is interrupted or Ray Tune ends a trial.
# matplotlib says "generated new fontManager" at INFO the first time it runs on a machine
# (its font cache is then built; a slow build still warns).
QUIET_LOGGERS = {
    "tensorflow": logging.WARNING,
    "matplotlib": logging.WARNING,
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.data._internal.progress": logging.ERROR,
    "{ray}/train/v2/_internal/execution/context.py": logging.WARNING,
}

# What setup_logging added to this process's environment for the libraries, which the Ray
# workers of the job get too (ensure_ray). Variables the user had set are theirs: not
# overridden here, and not passed on (under `ray job submit` the job's own runtime_env
# already carries them to its workers; Ray refuses to merge the same variable twice).
_worker_environment: dict[str, str] = {}


def interactive() -> bool:
    """A person at a terminal (progress bars) rather than a log file (plain lines)."""
    return sys.stderr.isatty() and os.environ.get("CI") is None


def progress_style(ray_data_bars: bool = False) -> str:
    """How cxr.progress shows a stage: a bar at a terminal (unless Ray Data's bars already
    show it: with --verbose, see ensure_ray), lines in a log."""
    if interactive():
        return "quiet" if ray_data_bars and is_verbose() else "bar"
    return "lines"


def is_verbose() -> bool:
    """Whether this job runs with --verbose (setup_logging logs DEBUG then)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def setup_logging(verbose: bool = False, gpu: bool = False) -> None:
    """First thing in a job's main, before Ray or TensorFlow are imported: logging, and the
    libraries' environment. `gpu`: the job uses GPUs (TensorFlow's CUDA errors matter then).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    wanted = {**keras_lib.tf_environment(verbose, gpu), **({} if verbose else RAY_DATA_QUIET)}
    _worker_environment.clear()
    _worker_environment.update({name: value for name, value in wanted.items() if name not in os.environ})
    os.environ.update(_worker_environment)
    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        # This job will start its own Ray (ensure_ray). Token authentication stays on, as
        # Ray makes it for a new local cluster, but said explicitly, so that Ray does not
        # announce it on every run. It is needed: that Ray is not loopback-only (its GCS,
        # raylet and workers listen on every interface, under the host's address), and even
        # on loopback every user of the machine could run code as this one. Read when ray
        # is imported, hence the check. A cluster the user started keeps its own settings.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not verbose:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """This process's part of keeping the libraries to warnings (setup_logging, setup_worker)."""
    ray_package = importlib.util.find_spec("ray").submodule_search_locations[0]  # without importing ray
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name.format(ray=ray_package)).setLevel(level)
    keras_lib.quiet_tensorflow_import()


def setup_worker() -> None:
    """Ray's `worker_process_setup_hook` for the workers of a job without --verbose: runs in
    each worker process before any task or actor of the job (ensure_ray)."""
    _quiet_libraries()
    # A worker stopped at the end of a sweep or by Ctrl-C can print CPython's "Exception
    # ignored in: <function WeakSet...>" and its traceback while it shuts down: an error
    # Python itself ignores, in a process whose work is over. It reached a tune job's output.
    sys.unraisablehook = _log_unraisable


def _log_unraisable(unraisable) -> None:
    log.debug("ignored in %r: %s: %s", unraisable.object, type(unraisable.exc_value).__name__, unraisable.exc_value)


def ensure_ray(state_api: bool = False) -> bool:
    """Connect to the cluster this runs on (RAY_ADDRESS, as `ray job submit` sets) or start a
    local Ray, its workers set up as this process (setup_logging); configure Ray Data. True
    when this process started the Ray it uses (so nothing but it will ever join).

    `state_api`: a local Ray gets its dashboard, which serves Ray's State API (a sweep needs
    it: see cxr.train.job._trainer_class), and every worker is told its address."""
    # Ray takes a second or two to import: the jobs import this module before parsing
    # their arguments, and --help or a bad argument should answer at once.
    import ray
    from ray.data import DataContext

    started = False
    if not ray.is_initialized():
        quiet = not is_verbose()
        # Job-wide: every worker of the job, on any node, gets the libraries' environment
        # before it imports them. Under `ray job submit` Ray merges this with the job's
        # runtime_env (its working_dir), per field and per variable.
        runtime_env: dict = {"env_vars": dict(_worker_environment)}
        if quiet:
            runtime_env["worker_process_setup_hook"] = f"{__name__}.setup_worker"
        level = logging.WARNING if quiet else logging.INFO
        if os.environ.get("RAY_ADDRESS"):
            # The workers get the cluster's address too (Ray gives it to the driver only).
            # Ray Train's placement-group cleaner asks the State API of "the" Ray it finds
            # from a worker: without the address it looks for Ray's processes on its node,
            # and where there are two (a test cluster beside another Ray, a developer's
            # machine) it gave up with a traceback instead of guarding the run.
            runtime_env["env_vars"].setdefault("RAY_ADDRESS", os.environ["RAY_ADDRESS"])
            ray.init(logging_level=level, runtime_env=runtime_env)
        else:
            # A local Ray for this one job: without the dashboard's dozen processes, which
            # compete with the image work for a laptop's cores (`ray start --head` gives one).
            # Measured on 2 cores, twice each: with it, 11 more processes, ray.init 4.5-5 s
            # slower, 4 s more CPU to start, 190 MB more memory (PSS), and 4-5% of a core
            # more while idle. (Ray's State API lives there: see cxr.train.job for the one user
            # of it that this costs.)
            dashboard: dict = {"include_dashboard": False}
            if state_api:
                port = _free_port()
                dashboard = {"include_dashboard": True, "dashboard_port": port}
                # Without it, a worker asking the State API looks for "the" Ray on its
                # node, and fails where there are two (see above).
                runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            ray.init(logging_level=level, runtime_env=runtime_env, **dashboard,
                     _system_config={"worker_maximum_startup_concurrency": _startup_concurrency()})
            started = True
    context = DataContext.get_current()
    # Ray Data's older Parquet reader (Ray's documented switch; the newer one is 2.60's
    # default). The newer one lists files and reads footers in extra tasks and actors, and
    # races itself at their ends: the listing's thread pool can raise InterruptedError in
    # its "completion-signaler" thread after the listing is done (ray/data/_internal/
    # dynamic_work_queue.py, `_signal_completion`; pointed out in ray-project/ray#64388),
    # and footer-reading actors it no longer needs are killed while they start, which the
    # GCS reports as an error ("Failed to kill actor ... Socket closed"; Ray calls that
    # failure a successful kill, ray-project/ray#53412). Both reached a job's output, as a
    # traceback or an error line, in about half the runs measured here. The older reader
    # needs neither helper for the few files of a split.
    context.use_datasource_v2 = False
    # Ray Data's bars (one per dataset, "Parquet dataset sampling" for each read, each left
    # on screen as "Dataset dataset_0354... execution finished") name its internals; the
    # stages' own bar or lines (cxr.progress) say what a person needs. --verbose shows them.
    context.enable_progress_bars = interactive() and is_verbose()
    context.enable_operator_progress_bars = is_verbose()
    # Per-operator progress lines ("Running Dataset ...") only help a person at a terminal.
    context.print_on_execution_start = interactive()
    return started


def _free_port() -> int:
    """A port free now, from the system's ephemeral range (outside Ray's worker ports)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _startup_concurrency() -> int:
    """How many worker processes the job's own Ray starts at once: Ray's default (the CPU
    count), but at least 4.

    Ray's raylet warns "N PYTHON worker processes have been started ..., which is 4x the
    maximum expected startup concurrency" once its worker processes reach 4 times this
    number: it expects about one process per CPU. A training run here holds a dozen, most
    of them zero-CPU bookkeeping actors of Ray Train and Ray Data (controller,
    synchronization, dataset manager, a split coordinator per dataset, autoscaling
    coordinator, stats, the progress tally), so on 2 CPUs every run crossed 8. With 4, the
    warning comes at 16, when something is really piling up.
    """
    return max(4, os.cpu_count() or 1)


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
