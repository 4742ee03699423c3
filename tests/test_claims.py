"""One writer per output (cxr.claims): a second job on a held folder stops in one line naming
the holder; a crashed holder's claim is taken over with a warning; of racing jobs exactly one
wins; locally and on the real S3 server."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from cxr import claims, storage
from cxr.errors import UserError
from tests.conftest import REPO
from tests.s3_fixture import boto3_client


def _location(uri: str) -> storage.Location:
    return storage.resolve(uri).join("_cxr_claim.json")


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> str:
    """A folder URI to claim: a local one, or a prefix in a fresh bucket of the test S3 server."""
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_env")
    return f"s3://{request.getfixturevalue('s3_bucket')}/out"


def _race(location: storage.Location, contenders: int) -> tuple[int, list[str]]:
    """`contenders` threads claim at once; the winners, and the losers' messages."""
    start, results, errors = threading.Barrier(contenders), [], []
    held = threading.Event()

    def contend() -> None:
        start.wait()
        try:
            with claims.claimed(location, "preprocess", "--output"):
                results.append(1)
                held.wait(5)
        except UserError as exc:
            errors.append(str(exc))
            if len(errors) == contenders - 1:
                held.set()

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return len(results), errors


def test_a_second_job_on_a_held_folder_stops_in_one_line_naming_the_holder(folder):
    location = _location(folder)
    with claims.claimed(location, "preprocess", "--output"):
        assert storage.is_file(location)
        with pytest.raises(UserError) as refused:
            with claims.claimed(location, "preprocess", "--output"):
                pass
    message = str(refused.value)
    assert message.startswith(folder) and "\n" not in message
    assert f"a preprocess job (pid {os.getpid()} on {socket.gethostname()}" in message
    assert "choose another --output" in message
    assert not storage.exists(location)  # released: nothing left in the output
    with claims.claimed(location, "predict", "--output"):  # and free again
        pass


def test_racing_jobs_leave_exactly_one_holder(folder):
    winners, losers = _race(_location(folder), contenders=6)
    assert winners == 1
    assert len(losers) == 5 and all("is being written by" in m for m in losers)


def _killed_holder(location: storage.Location, env: dict | None = None) -> int:
    """A job that claims `location` and dies by SIGKILL, as a crashed node would: its pid."""
    code = ("import os, signal, sys; from cxr import claims, storage\n"
            f"location = storage.resolve({location.uri!r})\n"
            "with claims.claimed(location, 'preprocess', '--output'):\n"
            "    print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert done.returncode == -signal.SIGKILL and "held" in done.stdout, done.stderr[-2000:]
    return json.loads(storage.read_bytes(location))["pid"]


def test_a_killed_jobs_claim_is_taken_over_with_a_warning_naming_it(folder, caplog):
    location = _location(folder)
    pid = _killed_holder(location)
    assert storage.is_file(location)  # the killed job could not remove it
    with caplog.at_level(logging.WARNING, logger="cxr.claims"):
        with claims.claimed(location, "preprocess", "--output") as claim:
            assert json.loads(storage.read_bytes(location))["token"] == claim.record["token"]
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(taken) == 1 and f"a preprocess job (pid {pid} on {socket.gethostname()}" in taken[0], caplog.text


def _plant_s3_claim(bucket: str, server, record: dict) -> None:
    boto3_client(server).put_object(Bucket=bucket, Key="out/_cxr_claim.json", Body=json.dumps(record).encode())


def test_an_s3_claim_from_another_host_holds_until_its_heartbeat_is_stale(s3_env, s3_bucket, local_s3,
                                                                           monkeypatch, caplog):
    location = _location(f"s3://{s3_bucket}/out")
    other = {"job": "train", "host": "another-host", "pid": 1, "started": "2026-01-01 00:00:00 UTC", "token": "x"}
    _plant_s3_claim(s3_bucket, local_s3, other)
    with pytest.raises(UserError, match=r"being written by a train job \(pid 1 on another-host.*refreshed \d+ s ago"):
        with claims.claimed(location, "train", "--name"):
            pass
    monkeypatch.setattr(claims, "STALE_SECONDS", 0.0)  # as if three minutes had passed without a refresh
    with caplog.at_level(logging.WARNING, logger="cxr.claims"):
        with claims.claimed(location, "train", "--name"):
            pass
    assert "taking over from a train job (pid 1 on another-host" in caplog.text
    assert "has not refreshed it" in caplog.text


def test_racing_takeovers_of_a_stale_s3_claim_leave_exactly_one_holder(s3_env, s3_bucket, local_s3):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    # A claim of a process of this host that is gone: stale at once, while the contenders' own are not.
    _plant_s3_claim(s3_bucket, local_s3, {"job": "predict", "host": socket.gethostname(),
                                          "pid": int(ended.stdout), "token": "y"})
    winners, losers = _race(_location(f"s3://{s3_bucket}/out"), contenders=5)
    assert winners == 1 and len(losers) == 4


def test_a_holder_that_loses_its_s3_claim_finds_out_before_its_last_writes(s3_env, s3_bucket, local_s3, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_SECONDS", 0.1)
    location = _location(f"s3://{s3_bucket}/out")
    with claims.claimed(location, "preprocess", "--output") as claim:
        claim.check()  # held
        # Another job decided this one was stale (it stalled for minutes) and took over.
        _plant_s3_claim(s3_bucket, local_s3, {"job": "preprocess", "host": "elsewhere", "pid": 3, "token": "z"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                claim.check()
            except UserError as lost:
                assert "lost its claim" in str(lost)
                break
            time.sleep(0.1)
        else:
            pytest.fail("the heartbeat never noticed the takeover")
    # The other job's claim is left as it is.
    assert json.loads(storage.read_bytes(location))["host"] == "elsewhere"


def test_a_damaged_claim_file_of_a_dead_holder_is_taken_over(tmp_path, caplog):
    location = _location(str(tmp_path / "out"))
    storage.write_bytes(location, b"\x00garbage{")
    with caplog.at_level(logging.WARNING, logger="cxr.claims"):
        with claims.claimed(location, "predict", "--output"):
            pass
    assert "taking over from another job" in caplog.text


# ---------------------------------------------------------------- the jobs

def test_an_output_inside_the_source_or_around_it_is_refused_before_anything_is_written(tmp_path):
    from tests.cli import assert_one_line_error, run_job
    from tests.trees import class_tree, write_tree

    source = write_tree(tmp_path / "raw", class_tree(per_class=2))
    result = run_job("preprocess", "--source", str(source), "--output", str(source / "shards"))
    assert_one_line_error(result, "overlap (one lies inside the other): choose an --output outside --source")
    assert not (source / "shards").exists()
    result = run_job("preprocess", "--source", str(source / "COVID"), "--output", str(tmp_path))
    assert_one_line_error(result, "overlap")


@pytest.mark.slow
def test_a_second_preprocess_job_on_a_busy_s3_output_stops_at_once_and_the_first_finishes(
        s3_env, s3_bucket, local_s3):
    output = f"s3://{s3_bucket}/shards"
    args = [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--output", output, "--synthetic-images", "60",
            "--image-size", "64"]
    # The first job starts its own Ray, whose workers inherit the test server's settings.
    env = {**os.environ, "RAY_ADDRESS": None}
    env = {name: value for name, value in env.items() if value is not None}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client, deadline = boto3_client(local_s3), time.monotonic() + 60
        while time.monotonic() < deadline and "Contents" not in client.list_objects_v2(
                Bucket=s3_bucket, Prefix="shards/_cxr_claim.json"):
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        second = subprocess.run(args + ["--overwrite"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        out, err = first.communicate(timeout=240)
    finally:
        first.kill()
    from tests.cli import assert_one_line_error

    assert_one_line_error(second, f"{output} is being written by a preprocess job (pid {first.pid} on ")
    assert first.returncode == 0, err[-3000:]
    assert "inputs found 60 = kept" in out
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key="shards/manifest.json")["Body"].read())
    assert manifest["counts"]["found"] == 60
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="shards/")["Contents"]]
    assert "shards/_cxr_claim.json" not in keys  # released


def test_train_tune_and_predict_stop_in_one_line_on_a_folder_another_job_holds(tiny_shards, tiny_run, tmp_path):
    """Each job claims its folder before it writes there: a holder makes it stop at once."""
    from cxr.artifacts import PredictionsLayout, RunLayout, SweepLayout
    from cxr.config import PredictConfig, TrainConfig, TuneConfig
    from cxr.predict.job import run_predict
    from cxr.train.job import run_training
    from cxr.tune.job import run_tuning
    from tests.trees import synthetic_png, write_tree

    runs = tmp_path / "runs"
    train = TrainConfig(data=tiny_shards, storage=str(runs), name="busy", epochs=1)
    with claims.claimed(RunLayout.at(str(runs / "busy")).claim, "train", "--name"):
        with pytest.raises(UserError, match=r"runs/busy is being written by a train job .*choose another --name"):
            run_training(train)
    with claims.claimed(SweepLayout.at(str(runs / "busy")).claim, "tune", "--name"):
        with pytest.raises(UserError, match=r"runs/busy is being written by a tune job"):
            run_tuning(TuneConfig(train=train, trials=1))
    images = write_tree(tmp_path / "images", {"a.png": synthetic_png("COVID", 0, 64)})
    output = tmp_path / "predictions"
    predict = PredictConfig(model=str(tiny_run / "model"), input=str(images), output=str(output))
    with claims.claimed(PredictionsLayout.at(str(output)).claim, "predict", "--output"):
        with pytest.raises(UserError, match=r"predictions is being written by a predict job"):
            run_predict(predict)
    assert not (output / "predictions.parquet").exists()
    with pytest.raises(UserError, match=r"lies inside --input .*choose an --output outside --input"):
        run_predict(PredictConfig(model=str(tiny_run / "model"), input=str(images), output=str(images / "out")))


def test_a_released_claim_leaves_no_folder_it_created_and_keeps_any_it_found(tmp_path):
    location = _location(str(tmp_path / "runs" / "new"))
    with claims.claimed(location, "train", "--name"):
        assert (tmp_path / "runs" / "new").is_dir()
    assert not (tmp_path / "runs").exists()  # the job was refused before it wrote anything
    with claims.claimed(location, "train", "--name"):
        (tmp_path / "runs" / "new" / "run.json").write_text("{}")
    assert (tmp_path / "runs" / "new" / "run.json").is_file()
