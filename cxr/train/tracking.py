"""Experiment tracking: TensorBoard event files for every run, MLflow when --mlflow names a server.

Rank 0 writes one row per epoch, the row history.csv gets (Keras's logs: loss and metrics
and their `val_` twins; the learning rate; images/s; seconds), as TensorBoard scalars and,
with --mlflow, as MLflow metrics, with the epoch (from 0, as in history.csv) as the step.

TensorBoard. A run's events go to `<run>/tensorboard/`; a sweep's trial's to
`<sweep>/tensorboard/<trial id>/`, so that TensorBoard on that folder shows one run per
trial. tf.summary writes them (its writers are in the tensorboard package), to local files
only, not s3:// or the other filesystems of cxr.storage: there rank 0 writes into a local
folder and copies each file whole at every epoch's end. Every start of a run writes a new
event file beside the earlier ones, which TensorBoard reads as one run.

MLflow, through Ray's integration (`ray.air.integrations.mlflow.setup_mlflow`, rank 0 only):
the run's defining settings as params (cxr.train.settings), the metrics per epoch. A run
goes to the experiment `cxr`, a sweep's trials to one named by the sweep (either replaced
by MLFLOW_EXPERIMENT_NAME), named by --name or the trial id. Each start of a run carries on
with its MLflow run, found by a tag; a run that trained without --mlflow before gets a new
MLflow run with the epochs it had kept. An epoch is tracked once its checkpoint is kept, so
no epoch is tracked twice when a run resumes. The URI is checked on the driver before anything
starts (`check_mlflow`); it never holds credentials, since it is printed and recorded in
run.json: MLflow's own variables carry them (MLFLOW_TRACKING_TOKEN, or _USERNAME and
_PASSWORD), passed from the driver to the worker that logs.

Nothing here imports TensorFlow, MLflow or Ray's MLflow integration until a worker writes:
without --mlflow, MLflow is never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from cxr import storage
from cxr.artifacts import RunLayout, SweepLayout
from cxr.errors import UserError, one_line

# The experiment of a run (a sweep's trials go to one named by the sweep), unless set here.
EXPERIMENT_ENVIRONMENT = "MLFLOW_EXPERIMENT_NAME"
RUN_EXPERIMENT = "cxr"
# MLflow's own ways to authenticate, taken from the driver's environment to the worker that logs.
CREDENTIAL_ENVIRONMENT = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# MLflow 3 keeps its folder store in maintenance mode and refuses it unless this is set. A
# folder is what a single machine needs (no server to run), and what the tests use.
FILE_STORE_ENVIRONMENT = {"MLFLOW_ALLOW_FILE_STORE": "true"}
# The driver's check of a server: one quick request, not MLflow's default seven retries with
# backoff (minutes) before saying that a server is not there.
CHECK_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Query parameters that hold a secret: refused in a URI, like a password.
SECRET_PARAMETERS = ("token", "password", "secret", "key", "signature", "sig")
# Columns of an epoch's row that are not measurements.
NOT_SCALARS = ("epoch", "attempt")
INSTALL_HINT = "pip install -c constraints.txt '.[mlflow]'"


@dataclass(frozen=True)
class MlflowServer:
    """A checked --mlflow: the tracking URI the workers use and what they authenticate with."""

    uri: str  # a local folder as an absolute file:// URI: workers run in other folders
    experiment: str | None  # MLFLOW_EXPERIMENT_NAME on the driver
    environment: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # credentials: never shown


@dataclass(frozen=True)
class RunTracking:
    """Where one run's epochs go: its TensorBoard folder and, with --mlflow, its MLflow run."""

    tensorboard: str  # the folder's URI
    run_uri: str  # the run's folder
    run_name: str
    experiment: str
    mlflow: MlflowServer | None = None
    params: dict = field(default_factory=dict)  # the run's defining settings, flattened
    tags: tuple[tuple[str, str], ...] = ()
    key: str = ""  # run_key: the MLflow run's tag by which every start of the run finds it


def for_run(run: RunLayout, name: str, mlflow: MlflowServer | None) -> RunTracking:
    """A training job's run: events in `<run>/tensorboard/`, the MLflow experiment `cxr`."""
    return RunTracking(tensorboard=run.tensorboard.uri, run_uri=run.root.uri, run_name=name,
                       experiment=_experiment(mlflow, RUN_EXPERIMENT), mlflow=mlflow)


def for_trial(sweep: SweepLayout, sweep_name: str, trial_id: str, mlflow: MlflowServer | None) -> RunTracking:
    """A sweep's trial: events beside the other trials', the MLflow experiment of the sweep."""
    return RunTracking(tensorboard=sweep.trial_tensorboard(trial_id).uri, run_uri=sweep.trial(trial_id).root.uri,
                       run_name=trial_id, experiment=sweep_experiment(mlflow, sweep_name), mlflow=mlflow,
                       tags=(("cxr.sweep", sweep.root.uri), ("cxr.trial", trial_id)))


def sweep_experiment(mlflow: MlflowServer | None, sweep_name: str) -> str:
    return _experiment(mlflow, sweep_name)


def _experiment(mlflow: MlflowServer | None, default: str) -> str:
    return (mlflow.experiment if mlflow else None) or default


def summary(tensorboard: str, mlflow: MlflowServer | None, experiment: str, run_name: str | None = None) -> dict:
    """Where a job's epochs went, for its summary: a run's (`run_name`), or a sweep's trials'."""
    return {"tensorboard": tensorboard,
            "mlflow": {"uri": mlflow.uri, "experiment": experiment, "run": run_name} if mlflow else None}


def summary_lines(where: dict | None) -> list[str]:
    """The summary's lines for `where` (summary)."""
    if not where:
        return []
    lines = [f"  TensorBoard events: {where['tensorboard']}"]
    mlflow = where["mlflow"]
    if mlflow:
        runs = f"run {mlflow['run']}" if mlflow["run"] else "a run per trial"
        lines.append(f"  MLflow: {runs} in experiment {mlflow['experiment']} at {mlflow['uri']}")
    return lines


# ---------------------------------------------------------------- the driver's check


def check_mlflow(uri: str | None) -> MlflowServer | None:
    """--mlflow checked before anything starts: no credentials in it, MLflow installed, the
    store reachable (a folder is created). One line for each problem."""
    if uri is None:
        return None
    refuse_credentials(uri)
    resolved = tracking_uri(uri)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(f"--mlflow needs MLflow, which is not installed here: {INSTALL_HINT}") from None
    with _environment({**store_environment(resolved), **CHECK_ENVIRONMENT}):
        try:
            MlflowClient(resolved).search_experiments(max_results=1)
        except Exception as exc:  # MLflow raises many types (its own, requests', OSError): all one answer
            raise UserError(f"--mlflow {uri}: cannot use this MLflow tracking store ({_short(exc)})") from None
    credentials = tuple((name, os.environ[name]) for name in CREDENTIAL_ENVIRONMENT if os.environ.get(name))
    return MlflowServer(uri=resolved, experiment=os.environ.get(EXPERIMENT_ENVIRONMENT) or None,
                        environment=credentials)


def refuse_credentials(uri: str) -> None:
    """A tracking URI with a password, a user of an http(s) server, or a secret query parameter."""
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    web = parts.scheme in ("http", "https")
    secret = [name for name, _ in parse_qsl(parts.query) if name.lower() in SECRET_PARAMETERS]
    if (at and (":" in userinfo or web)) or secret:
        shown = f"{parts.scheme}://{'***@' if at else ''}{host}{parts.path}"
        raise UserError(f"--mlflow {shown}: a tracking URI must not hold credentials (it is printed and recorded "
                        f"in run.json); set MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and "
                        f"MLFLOW_TRACKING_PASSWORD) instead")


def tracking_uri(uri: str) -> str:
    """The URI MLflow is given: a folder (a path or file://) as an absolute file:// URI."""
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        return "file://" + storage.resolve(uri).path
    return uri


def store_environment(uri: str) -> dict[str, str]:
    """What MLflow needs in the environment to use this store (its folder store, if it is one)."""
    return dict(FILE_STORE_ENVIRONMENT) if urlsplit(uri).scheme == "file" else {}


def _short(exc: BaseException) -> str:
    """An MLflow error in a line: its first cause ("ConnectionRefusedError: [Errno 111] Connection
    refused"), as MLflow and requests wrap it in messages that repeat the URL and pool details."""
    seen = {id(exc)}
    while (exc.__cause__ or exc.__context__) is not None and id(exc.__cause__ or exc.__context__) not in seen:
        exc = exc.__cause__ or exc.__context__
        seen.add(id(exc))
    text = one_line(exc)
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """`values` set in os.environ for the block, then put back (MLflow reads them per call)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------- rank 0, in the worker


def epoch_scalars(row: dict) -> dict[str, float]:
    """The measurements of an epoch's row (cxr.train.loop): every finite number but the epoch
    and the attempt, by the names history.csv gives them."""
    scalars = {}
    for name, value in row.items():
        if name in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            scalars[name] = float(value)
    return scalars


class EpochWriter:
    """Rank 0's writer of a run's epochs (`opened` makes one): TensorBoard, and MLflow with --mlflow."""

    def __init__(self, tracking: RunTracking, history: list[dict]):
        import tensorflow as tf  # the worker's: loaded already

        self._tf = tf
        self._destination = storage.resolve(tracking.tensorboard)
        # TensorFlow writes a local folder itself; another filesystem gets copies of a local one.
        self._local = None if self._destination.is_local else tempfile.mkdtemp(prefix="cxr-tensorboard-")
        self._writer = tf.summary.create_file_writer(self._destination.path if self._local is None else self._local)
        self._mlflow = _start_mlflow(tracking, history) if tracking.mlflow else None
        self.failed = False  # set when training stopped at a non-finite loss: the MLflow run's status

    def write(self, row: dict) -> None:
        scalars = epoch_scalars(row)
        with self._writer.as_default():
            for name, value in scalars.items():
                self._tf.summary.scalar(name, value, step=row["epoch"])
        self._writer.flush()
        self._copy()
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=row["epoch"])

    def close(self, failed: bool = False) -> None:
        self._writer.close()
        self._copy()
        if self._local is not None:
            shutil.rmtree(self._local, ignore_errors=True)
        if self._mlflow is not None:
            self._mlflow.end_run("FAILED" if failed or self.failed else "FINISHED")

    def _copy(self) -> None:
        """Each local event file, whole, to the destination (event files only grow: no deletes)."""
        if self._local is None:
            return
        for folder, _, names in os.walk(self._local):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    storage.write_bytes(self._destination.join(os.path.relpath(path, self._local)), handle.read())


@contextlib.contextmanager
def opened(tracking: RunTracking | None, history: list[dict]):
    """An EpochWriter for the block (None when `tracking` is, as on ranks other than 0), for a
    run whose `history` (the rows of its kept epochs) is so far; closed at the block's end,
    its MLflow run marked failed if the block raised or set `failed`."""
    if tracking is None:
        yield None
        return
    writer = EpochWriter(tracking, history)
    failed = True
    try:
        yield writer
        failed = False
    finally:
        writer.close(failed)


def _start_mlflow(tracking: RunTracking, history: list[dict]):
    """The MLflow module with the run's MLflow run active: the one an earlier start of the
    run began, else a new one (Ray's setup_mlflow) given the epochs kept before (`history`)."""
    server = tracking.mlflow
    os.environ.update({**store_environment(server.uri), **dict(server.environment)})
    import mlflow
    from ray.air.integrations.mlflow import setup_mlflow

    mlflow.set_tracking_uri(server.uri)
    earlier = _earlier_run(mlflow, tracking.experiment, tracking.key)
    if earlier is not None:
        mlflow.start_run(run_id=earlier)  # setup_mlflow carries on with the active run
    module = setup_mlflow(None if earlier else tracking.params, tracking_uri=server.uri,
                          experiment_name=tracking.experiment, run_name=tracking.run_name,
                          create_experiment_if_not_exists=True, rank_zero_only=True,
                          tags={"cxr.run": tracking.run_uri, RUN_KEY_TAG: tracking.key, **dict(tracking.tags)})
    if earlier is None:
        for row in history:  # a run that ran without --mlflow before: its epochs so far
            module.log_metrics(epoch_scalars(row), step=row["epoch"])
    return module


RUN_KEY_TAG = "cxr.run_key"


def run_key(run_uri: str, started_at: str) -> str:
    """A run's MLflow tag: its folder and its first start (run.json), so that a new run in a
    deleted run's folder is another MLflow run; hashed, safe inside a search filter's quotes."""
    return hashlib.sha256(f"{run_uri}\n{started_at}".encode()).hexdigest()[:32]


def _earlier_run(mlflow, experiment: str, key: str) -> str | None:
    """The id of the latest MLflow run of this cxr run, if it has one."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.search_runs(experiment_ids=[found.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None
