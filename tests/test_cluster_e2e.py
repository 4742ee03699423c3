"""Both jobs on a real Ray cluster, the way the README runs them, shards and the run on S3
(SeaweedFS), in both of `ray job submit`'s entry forms: `python jobs/<job>.py` with the working
directory uploaded, and `cxr <job>` with nothing uploaded, as on a cluster whose nodes have cxr
installed (the RayJobs of infra/kuberay): here the test's virtualenv, whose bin (and so `cxr`) is
first on the head's PATH (tests/ray_head.py).

The cluster is one head node on loopback with its own temp dir and ports (tests/ray_head.py),
labelled like the GPU pool of ray_cluster.yaml so that training's --node-label is honoured
for real. S3 credentials live in the node's environment, as an instance role's do on AWS:
the submitting client has none, and they must not show up in the jobs' logs.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import uuid

import pytest

from tests.cli import library_noise
from tests.conftest import REPO
from tests.ray_head import head_processes, start_ray_head, stop_ray_head
from tests.s3_fixture import isolated_env, without_aws

pytestmark = pytest.mark.slow

POOL_LABEL = ("cxr-pool", "gpu")


def submit(head, *entrypoint: str, upload: bool = True, timeout: float = 600) -> tuple[str, subprocess.CompletedProcess]:
    """`ray job submit` from the repository, waiting for the job; returns its id and the CLI's result.
    upload: the repository goes up as the job's working directory (`--working-dir`)."""
    job_id = f"cxr-test-{uuid.uuid4().hex[:8]}"
    working_dir = ["--working-dir", str(REPO)] if upload else []
    result = subprocess.run(
        ["ray", "job", "submit", "--address", head.dashboard_url, *working_dir,
         "--submission-id", job_id, "--", *entrypoint],
        env=without_aws(head.env), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return job_id, result


def job_logs(head, job_id: str) -> str:
    result = subprocess.run(["ray", "job", "logs", "--address", head.dashboard_url, job_id],
                            env=without_aws(head.env), capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def succeeded(job_id: str, result: subprocess.CompletedProcess) -> str:
    """The CLI's output; a failed job fails the test with the end of its log."""
    output = result.stdout + result.stderr
    assert result.returncode == 0 and f"Job '{job_id}' succeeded" in output, (
        f"job {job_id} failed (exit {result.returncode}):\n{output[-6000:]}")
    return output


def read_json(s3_client, bucket: str, key: str) -> dict:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_both_jobs_submitted_to_a_cluster_against_s3(local_s3, s3_bucket, s3_client):
    head = start_ray_head(tempfile.mkdtemp(prefix="cxr-ray-", dir="/tmp"), num_cpus=2,
                          labels=dict([POOL_LABEL]), env=isolated_env(local_s3))
    try:
        shards, runs = f"s3://{s3_bucket}/shards/v1", f"s3://{s3_bucket}/runs"
        job_id, result = submit(head, "python", "jobs/preprocess.py", "--synthetic-images", "80",
                                "--image-size", "64", "--output", shards)
        output = succeeded(job_id, result)
        manifest = read_json(s3_client, s3_bucket, "shards/v1/manifest.json")
        assert manifest["class_names"] == ["COVID", "Normal"]
        assert manifest["counts"]["found"] == 80
        assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 80
        # Progress as a log shows it: the stage, images done of all, and the rate.
        assert "preprocess: 80/80 images (100%)" in output and "images/s" in output

        # The installed command, with no working directory uploaded: what the node has installed runs.
        job_id, result = submit(head, "cxr", "train", "--data", shards, "--storage", runs,
                                "--name", "e2e", "--epochs", "2", "--batch-size", "16",
                                "--node-label", "=".join(POOL_LABEL), upload=False)
        output = succeeded(job_id, result)
        training = read_json(s3_client, s3_bucket, "runs/e2e/model/training.json")
        assert training["epochs_trained"] == 2 and training["class_names"] == ["COVID", "Normal"]
        assert training["config"]["node_labels"] == [list(POOL_LABEL)]
        exported = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/e2e/model/")["Contents"]}
        assert {"runs/e2e/model/model.keras", "runs/e2e/model/manifest.json",
                "runs/e2e/model/history.csv"} <= exported
        assert read_json(s3_client, s3_bucket, "runs/e2e/model/manifest.json") == manifest
        for epoch in (1, 2):
            assert f"train: epoch {epoch}/2: loss " in output
        logs = job_logs(head, job_id)
        assert "train: epoch 2/2: loss " in logs  # what `ray job logs --follow` shows
        # ... and not the libraries' internals. (The job's log comes framed by the lines of
        # Ray's job client and job manager, which are not the job's.)
        framing = re.compile(r" (cli|job_manager)\.py:\d+ -- ")
        noise = library_noise([line for line in logs.splitlines() if not framing.search(line)])
        assert not noise, "\n".join(f"{name}: {line}" for name, line in noise.items())
        assert local_s3.secret_key not in output + logs

        # A job that fails says why, in one line, in what the submitter sees.
        job_id, result = submit(head, "python", "jobs/train.py", "--data", f"s3://{s3_bucket}/nothing-here",
                                "--storage", runs)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and f"Job '{job_id}' failed" in output
        assert f"error: s3://{s3_bucket}/nothing-here" in output, output[-3000:]
        assert "Traceback" not in output
    finally:
        stop_ray_head(head)
    # Exactly what this test started is gone (other Rays of the machine are not ours to stop).
    assert head_processes(head.marker) == []
