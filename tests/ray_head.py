"""A throwaway single-node Ray "cluster" for end-to-end tests: `ray start --head`, then stop
exactly what it started.

- Its own temp dir and ports, chosen at random among free ones in 40000-59999: outside Ray's
  worker ports (10002-19999, which the head's own workers get from --min/--max-worker-port
  here too) and away from the local S3 server's 20000-39999.
- Loopback where Ray lets us choose (--node-ip-address, the dashboard's host); Ray still
  binds some internal ports on every interface and reports the host's address as the node's.
  Token auth is off (RAY_AUTH_MODE=disabled for the head and its clients) for the test's
  lifetime; the README's clusters keep it on.
- `ray stop` would kill every Ray process of the host, including a developer's own cluster or
  another test session's. Ray's workers put themselves into sessions of their own, so neither
  the process group of `ray start` nor the process tree finds them all. Instead, every process
  started from this head inherits a marker variable in its environment; stopping signals the
  processes that carry this head's marker, and only those.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from infra.local_s3 import HOST, port_free

_PORTS = (40_000, 59_999)
_WORKER_PORTS = 64           # a block for the head's worker processes
_MARKER = "CXR_TEST_RAY_HEAD"


@dataclass(frozen=True)
class RayHead:
    dashboard_url: str      # "http://127.0.0.1:PORT": --address for `ray job submit`
    temp_dir: str
    marker: str
    env: dict               # the environment the head runs with; clients use it too


def _free_ports(count: int, block: int) -> tuple[list[int], int]:
    """`count` free single ports and the start of a free block of `block` consecutive ones."""
    rng = random.SystemRandom()
    for _ in range(200):
        start = rng.randrange(_PORTS[0], _PORTS[1] - block)
        if all(port_free(p) for p in range(start, start + block)):
            break
    else:
        raise OSError(f"no {block} consecutive free ports in {_PORTS}")
    singles: list[int] = []
    while len(singles) < count:
        port = rng.randint(*_PORTS)
        if not start <= port < start + block and port not in singles and port_free(port):
            singles.append(port)
    return singles, start


def start_ray_head(temp_dir: str, *, num_cpus: int, labels: dict[str, str] | None = None,
                   env: dict[str, str] | None = None, timeout: float = 90.0) -> RayHead:
    """Start a head node on loopback; `env` is added to the environment of all its processes
    (the S3 settings of a node, for instance). Raises RuntimeError with ray's output on failure."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    (gcs, dashboard, client, node_manager, object_manager, agent_http, agent_grpc, runtime_env,
     metrics), workers = _free_ports(9, _WORKER_PORTS)
    marker = uuid.uuid4().hex
    head_env = {
        **os.environ, **(env or {}),
        # `python` in a job's entrypoint is this interpreter, as on a node where the project is installed.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "RAY_AUTH_MODE": "disabled",
        # As the clusters of ray_cluster.yaml and infra/kuberay: see there.
        "RAY_worker_maximum_startup_concurrency": "4",
        _MARKER: marker,
    }
    head_env.pop("RAY_ADDRESS", None)
    os.makedirs(temp_dir, exist_ok=True)
    command = [
        ray, "start", "--head", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--node-ip-address={HOST}", f"--port={gcs}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--min-worker-port={workers}", f"--max-worker-port={workers + _WORKER_PORTS - 1}",
    ]
    if labels:
        command.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    head = RayHead(dashboard_url=f"http://{HOST}:{dashboard}", temp_dir=temp_dir,
                   marker=marker, env={k: v for k, v in head_env.items() if k != _MARKER})
    try:
        result = subprocess.run(command, env=head_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout, start_new_session=True)
    except BaseException:
        stop_ray_head(head)
        raise
    if result.returncode != 0:
        stop_ray_head(head)
        raise RuntimeError(f"ray start failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return head


def head_processes(marker: str) -> list[int]:
    """PIDs of the live processes that carry this head's marker in their environment."""
    needle = f"{_MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue           # already dead, waiting for its parent
        except OSError:                # gone, or not ours to read
            continue
        pids.append(int(entry))
    return pids


def stop_ray_head(head: RayHead, timeout: float = 5.0) -> None:
    """SIGTERM this head's processes, SIGKILL what is left after timeout; remove its temp dir.

    The GCS server, raylet and monitor outwait a SIGTERM by far more than 20 s (measured):
    a test cluster holds nothing worth a longer grace period.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        pids = head_processes(head.marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while pids and time.monotonic() < end:
            time.sleep(0.2)
            pids = head_processes(head.marker)
        if not pids:
            break
    shutil.rmtree(head.temp_dir, ignore_errors=True)
