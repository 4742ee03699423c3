"""One writer per output: a job claims the folder it writes before it writes there.

Two jobs writing one shard set, run or prediction folder mix their files and fail late
(issue 28: two preprocess jobs on one --output both ended in tracebacks and left shards of
both runs). So preprocess (its --output), train (`<storage>/<name>/`), tune (the sweep's
folder) and predict (its --output) each hold a claim for as long as they run: a small JSON
file in the folder (the layouts of cxr.artifacts name it) saying which job holds it, where
and since when. A second job on the same folder stops at once, in one line that names the
holder. The claim is removed when the job ends, however it ends, short of being killed.

- **Local folders**: the claim file is held under an exclusive `flock`. The kernel drops it
  when the holding process dies, however it dies, so a lock that can be taken belongs to
  nobody: a record left in the file was left by a job that crashed (SIGKILL, a lost node),
  and is taken over with a warning that names it. Linux also honours flock on NFS.
- **S3**: the claim object is created only where none is (`If-None-Match: *`), refreshed by
  its holder every HEARTBEAT_SECONDS and replaced only with `If-Match` on the ETag that was
  read, so of two jobs taking over one stale claim exactly one wins. AWS S3 has honoured
  both conditions since 2024 (strongly consistent); SeaweedFS 4.48, the tests' server,
  honours both (tests/test_claims.py races it). A store that ignores them is detected when
  the claim is made (a second conditional create succeeds) and named in a warning: the
  claim then guards nothing, and the job says so. A claim is stale when its refresh is
  older than STALE_SECONDS by the store's own clock, or at once when its holder ran on
  this host and its process is gone.
- **Other stores** (GCS, HDFS, Azure, fsspec's): pyarrow has no conditional create for
  them, so no claim is made; a warning says so and the job goes on.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from cxr import storage
from cxr.errors import UserError

log = logging.getLogger(__name__)

# The holder of an S3 claim rewrites it this often; one not rewritten for STALE_SECONDS
# belongs to a job that is gone (a few missed refreshes are a slow network, not a death).
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 180.0


@dataclass
class Claim:
    """A held claim. `check()` before a job's last writes: an S3 claim can be lost (the job
    stalled longer than STALE_SECONDS and another took over), and then nothing more is written."""

    location: storage.Location
    job: str
    record: dict
    _lost: threading.Event = field(default_factory=threading.Event)
    _release: object = None  # what gives the claim back (a closure per backend)

    def check(self) -> None:
        if self._lost.is_set():
            raise UserError(f"{_folder(self.location)}: this {self.job} job lost its claim on the folder to "
                            "another job while it ran (it stalled for minutes); its output is not finished: "
                            "rerun it when the other job has ended")


@contextlib.contextmanager
def claimed(location: storage.Location, job: str, alternative: str) -> Iterator[Claim]:
    """Hold the claim file `location` while the block runs; `job` names this job in the
    record, `alternative` the flag that picks another folder (for the refusal's message)."""
    record = {"job": job, "host": socket.gethostname(), "pid": os.getpid(), "process_started": _process_started(),
              "started": _now_text(), "token": uuid.uuid4().hex}
    claim_on = _claim_s3 if location.is_s3 else _claim_local if location.is_local else _claim_unenforced
    claim = claim_on(location, job, record, alternative)
    try:
        yield claim
    finally:
        claim._release()


# ---------------------------------------------------------------- local folders

def _claim_local(location: storage.Location, job: str, record: dict, alternative: str) -> Claim:
    path = location.path
    # Folders the claim creates go again with it when the job wrote nothing into them: a job
    # refused after its claim (bad weights, an existing output) leaves no trace.
    created = _missing_folders(os.path.dirname(path))
    try:
        storage.ensure_parent(location)
    except OSError as exc:
        raise storage.storage_error(exc, _folder(location)) from None
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage.storage_error(exc, _folder(location)) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(_read_handle(handle))
            os.close(handle)
            raise UserError(_held_message(location, holder, alternative)) from None
        # Between our open and our lock, the holder may have ended and unlinked the file:
        # a lock on an unlinked file guards nothing, so start again on the path's file.
        if _same_file(handle, path):
            break
        os.close(handle)
    previous = _parse(_read_handle(handle))
    if previous is not None:
        log.warning(_taken_over_message(location, previous, "ended without releasing it"))
    data = json.dumps(record).encode()
    os.ftruncate(handle, 0)
    os.pwrite(handle, data, 0)
    os.fsync(handle)
    claim = Claim(location=location, job=job, record=record)

    def release() -> None:
        with contextlib.suppress(OSError):
            if _same_file(handle, path):
                os.unlink(path)  # still holding the lock: nobody can have taken it meanwhile
        os.close(handle)
        for folder in created:  # innermost first; one that holds anything stays
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    claim._release = release
    return claim


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _read_handle(handle: int) -> bytes:
    return os.pread(handle, 1 << 16, 0)


def _same_file(handle: int, path: str) -> bool:
    try:
        here, there = os.fstat(handle), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


# ---------------------------------------------------------------- S3

def _s3_client():
    """A boto3 client from the same environment as cxr.storage's pyarrow filesystem:
    pyarrow cannot make a conditional write."""
    import boto3  # here: only S3 outputs need it

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return boto3.client("s3", endpoint_url=storage.s3_endpoint(), region_name=region)


def _claim_s3(location: storage.Location, job: str, record: dict, alternative: str) -> Claim:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = location.path.split("/", 1)
    client = _s3_client()
    data = json.dumps(record).encode()
    try:
        for _ in range(5):  # each round loses only to a job that took the claim meanwhile
            try:
                etag = client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"]
                break
            except ClientError as exc:
                if not _precondition_failed(exc):
                    raise
            holder, holder_etag, age = _read_s3_claim(client, bucket, key)
            if holder is None:
                continue  # released between our create and our read
            gone = _holder_gone(holder)
            if not gone and age < STALE_SECONDS:
                raise UserError(_held_message(location, holder, alternative, age))
            try:
                etag = client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=holder_etag)["ETag"]
            except ClientError as exc:
                if not _precondition_failed(exc):
                    raise
                continue  # another job took it over first: look again
            log.warning(_taken_over_message(
                location, holder, "is no longer running" if gone else f"has not refreshed it for {age:.0f} s"))
            break
        else:
            raise UserError(f"{_folder(location)}: other jobs keep claiming this folder; "
                            f"choose another {alternative}")
        _check_conditions_honoured(client, bucket, key, data, location)
    except (ClientError, BotoCoreError) as exc:
        raise storage.storage_error(exc, location.uri) from None

    claim = Claim(location=location, job=job, record=record)
    stop = threading.Event()
    current = {"etag": etag}

    def heartbeat() -> None:
        beats = 0
        while not stop.wait(HEARTBEAT_SECONDS):
            beats += 1
            body = json.dumps({**record, "refreshed": _now_text(), "beats": beats}).encode()
            try:
                current["etag"] = client.put_object(Bucket=bucket, Key=key, Body=body,
                                                    IfMatch=current["etag"])["ETag"]
            except ClientError as exc:
                if _precondition_failed(exc) or _missing(exc):
                    claim._lost.set()
                    log.error("%s: another job took over this folder while this one ran", _folder(location))
                    return
                log.warning("%s: could not refresh the claim (%s); retrying", _folder(location),
                            storage.describe_error(exc, location.uri))
            except BotoCoreError as exc:
                log.warning("%s: could not refresh the claim (%s); retrying", _folder(location),
                            storage.describe_error(exc, location.uri))

    beating = threading.Thread(target=heartbeat, name="cxr-claim-heartbeat", daemon=True)
    beating.start()

    def release() -> None:
        stop.set()
        beating.join()
        if claim._lost.is_set():
            return
        with contextlib.suppress(ClientError, BotoCoreError):
            client.delete_object(Bucket=bucket, Key=key, IfMatch=current["etag"])

    claim._release = release
    return claim


def _read_s3_claim(client, bucket: str, key: str) -> tuple[dict | None, str | None, float]:
    """The claim's record, its ETag, and its age in seconds by the server's clock."""
    from botocore.exceptions import ClientError

    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _missing(exc):
            return None, None, 0.0
        raise
    body = answer["Body"].read()
    server_now = _http_date(answer["ResponseMetadata"]["HTTPHeaders"].get("date"))
    age = (server_now - answer["LastModified"]).total_seconds() if server_now else 0.0
    return _parse(body) or {}, answer["ETag"], max(0.0, age)


def _check_conditions_honoured(client, bucket: str, key: str, data: bytes, location: storage.Location) -> None:
    """A store that ignores If-None-Match lets a second create through: say that the claim guards nothing."""
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if _precondition_failed(exc):
            return
        raise
    log.warning("%s: this S3 store ignores conditional writes (If-None-Match), so a second job writing "
                "the same folder at the same time cannot be detected: run one at a time", _folder(location))


def _precondition_failed(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict")


def _missing(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def _http_date(text: str | None) -> datetime.datetime | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text) if text else None
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- other stores

def _claim_unenforced(location: storage.Location, job: str, record: dict, alternative: str) -> Claim:
    """GCS, HDFS, Azure, fsspec's...: pyarrow offers no create-if-absent on them (its
    open_output_stream replaces what is there), so a claim there would guard nothing."""
    log.warning("%s: a %s job cannot claim a folder on %s:// (pyarrow cannot create a file only where none is), "
                "so a second job writing there at the same time would not be stopped: run one at a time",
                _folder(location), job, storage.scheme_of(location.uri))
    claim = Claim(location=location, job=job, record=record)
    claim._release = lambda: None
    return claim


# ---------------------------------------------------------------- records and messages

def _process_started() -> float | None:
    """When this process started, so that a reused pid is not mistaken for the holder."""
    return _start_time(os.getpid())


def _start_time(pid: int) -> float | None:
    """A process's start, in clock ticks since boot (Linux's /proc); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # The command name, in parentheses, may hold spaces: count fields after it.
            return float(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _holder_gone(holder: dict) -> bool:
    """Whether the holder ran on this host and its process is gone (another host: unknown)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = holder.get("process_started")
    return started is not None and _start_time(holder["pid"]) not in (None, started)


def _parse(data: bytes) -> dict | None:
    try:
        record = json.loads(data.decode()) if data.strip() else None
    except (UnicodeDecodeError, ValueError):
        return {}  # damaged: a record nobody can name, but a record
    return record if isinstance(record, dict) else ({} if record is not None else None)


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "another job"
    job = holder.get("job") if isinstance(holder.get("job"), str) else "cxr"
    where = f"pid {holder.get('pid')} on {holder.get('host')}" if holder.get("host") else "an unknown process"
    since = f", since {holder['started']}" if isinstance(holder.get("started"), str) else ""
    return f"a {job} job ({where}{since})"


def _held_message(location: storage.Location, holder: dict | None, alternative: str, age: float | None = None) -> str:
    refreshed = f"; its claim was refreshed {age:.0f} s ago" if age is not None else ""
    return (f"{_folder(location)} is being written by {_holder_text(holder)}{refreshed}: wait for it to end "
            f"or choose another {alternative}")


def _taken_over_message(location: storage.Location, holder: dict, why: str) -> str:
    return f"{_folder(location)}: taking over from {_holder_text(holder)}, which {why}"


def _folder(location: storage.Location) -> str:
    return location.uri.rsplit("/", 1)[0]


def _now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
