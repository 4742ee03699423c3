"""`python jobs/preprocess.py` as a user runs it: bad input is one line and exit 2, before any output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import assert_one_line_error, run_job
from tests.trees import class_tree, write_tree


def run_preprocess_job(*args: str, env: dict | None = None):
    return run_job("preprocess", *args, env=env)


def empty_folder(parent: Path) -> Path:
    (parent / "empty").mkdir()
    return parent / "empty"


@pytest.mark.parametrize("make_source, message", [
    (lambda p: str(p / "nowhere"), "does not exist"),
    (lambda p: str(empty_folder(p)), "empty"),
    (lambda p: str(write_tree(p / "flat", {"a.png": b"x", "b.png": b"y"})), "no class subfolders"),
])
def test_bad_local_sources(tmp_path, make_source, message):
    output = tmp_path / "out"
    result = run_preprocess_job("--source", make_source(tmp_path), "--output", str(output))
    assert_one_line_error(result, message)
    assert not output.exists()


def test_bad_arguments(tmp_path):
    assert_one_line_error(run_preprocess_job("--split", "0.5,0.5", "--output", str(tmp_path / "o")), "three")
    assert_one_line_error(run_preprocess_job("--image-size", "8", "--output", str(tmp_path / "o")), "--image-size")
    assert_one_line_error(run_preprocess_job("--synthetic-sources", "7", "--output", str(tmp_path / "o")),
                          "--synthetic-sources must be in [1, 6], got 7")
    assert_one_line_error(run_preprocess_job("--synthetic-sources", "2", "--synthetic-confound", "0.5",
                                             "--output", str(tmp_path / "o")), "needs --synthetic-sources 3")
    assert_one_line_error(run_preprocess_job("--test-sources", "site-a,,site-b", "--output", str(tmp_path / "o")),
                          "--test-sources must be comma-separated source names")
    assert_one_line_error(run_preprocess_job("--test-sources", "synthetic", "--output", str(tmp_path / "o")),
                          "--test-sources names every source")
    assert not (tmp_path / "o").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    source = write_tree(tmp_path / "raw", class_tree(per_class=2))
    output = write_tree(tmp_path / "out", {"manifest.json": b"{}"})
    result = run_preprocess_job("--source", str(source), "--output", str(output))
    assert_one_line_error(result, "already holds a finished output; pass --overwrite")
    assert (output / "manifest.json").read_bytes() == b"{}"


def test_missing_bucket_and_wrong_credentials(s3_env, s3_bucket, tmp_path):
    result = run_preprocess_job("--source", "s3://no-such-bucket-here/raw/", "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "bucket 'no-such-bucket-here' does not exist")
    wrong = "not-the-secret-0123456789"
    result = run_preprocess_job("--source", f"s3://{s3_bucket}/raw/", "--output", str(tmp_path / "out"),
                     env={"AWS_SECRET_ACCESS_KEY": wrong})
    assert_one_line_error(result, "access denied")
    assert wrong not in result.stderr + result.stdout
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout
    result = run_preprocess_job("--source", f"s3://{s3_bucket}/raw/", "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "does not exist")
    assert not Path(tmp_path / "out").exists()


@pytest.mark.slow
def test_default_job_runs_and_prints_summary(ray_session, tmp_path):
    """The quickstart path, shrunk: synthetic data, connected to the session's Ray."""
    address = ray_session.get_runtime_context().gcs_address
    output = tmp_path / "shards"
    result = run_preprocess_job("--output", str(output), "--synthetic-images", "60", "--image-size", "64",
                     env={"RAY_ADDRESS": address})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"shards written to {output}" in result.stdout
    assert "inputs found 60 = kept" in result.stdout
    assert (output / "manifest.json").is_file()
