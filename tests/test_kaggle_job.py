"""`jobs/preprocess.py --source kaggle` on a real local Ray, against a local Kaggle API.

The real Kaggle client (kagglesdk) talks to tests/kaggle_server.py on localhost:7777; the
raw cache is a real S3 server (SeaweedFS) or a local folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cxr.config import DownloadConfig, PreprocessConfig
from cxr.preprocess.pipeline import run_preprocess
from tests.cli import assert_one_line_error, run_job
from tests.conftest import REPO
from tests.kaggle_server import CLASS_SIZES, SHEET_SOURCES, WRAPPER, image_name
from tests.test_preprocess_job import check_consistent, read_output

CACHE_PREFIX = "tawsifurrahman/covid19-radiography-database/versions/5"


def kaggle_env(server, ray_session=None, **extra) -> dict[str, str]:
    env = {"KAGGLE_USERNAME": server.username, "KAGGLE_KEY": server.key, **extra}
    if ray_session is not None:  # the jobs join the session's Ray instead of starting their own
        env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address
    return env


def images_of(*classes: str) -> set[str]:
    return {image_name(c, i) for c in classes for i in range(1, CLASS_SIZES[c] + 1)}


def sheets_of(*classes: str) -> set[str]:
    return {f"{WRAPPER}/{c}.metadata.xlsx" for c in classes}


@pytest.fixture
def ray_tmpdir():
    """A temp dir for a job's own local Ray: its logs, to search; short, for Ray's socket paths."""
    path = tempfile.mkdtemp(prefix="cxr-ray-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_files_into_an_s3_raw_cache_with_faults_then_a_rerun(fake_kaggle, s3_env, s3_bucket, s3_client,
                                                           ray_tmpdir, tmp_path):
    late, lost = image_name("COVID", 2), image_name("Normal", 3)
    fake_kaggle.script = {late: [429]}
    fake_kaggle.broken = {lost}
    climber = f"{WRAPPER}/COVID/images/../../../../escaped.png"  # a name that would leave the cache
    fake_kaggle.files[climber] = fake_kaggle.files[image_name("COVID", 1)]
    output = tmp_path / "shards"
    args = ["--source", "kaggle", "--raw-cache", f"s3://{s3_bucket}/raw", "--output", str(output),
            "--image-size", "64", "--download-retries", "2", "--max-failed-share", "0.1"]
    # The job starts its own local Ray, whose workers inherit the S3 settings, as a cluster's
    # nodes have theirs (the session's Ray gives them only to the test process's own tasks).
    env = kaggle_env(fake_kaggle, RAY_TMPDIR=str(ray_tmpdir))
    result = run_job("preprocess", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    kaggle = manifest["source"]["kaggle"]
    assert (kaggle["dataset"], kaggle["version"], kaggle["mode"]) == (
        "tawsifurrahman/covid19-radiography-database", 5, "files")
    assert kaggle["fetched"] == {"COVID": {"downloaded": 8}, "Normal": {"downloaded": 9, "failed": 1}}
    assert manifest["class_names"] == ["COVID", "Normal"]
    failed = [r for r in rejected if r["reason"] == "download_failed"]
    assert [r["source_uri"] for r in failed] == [f"kaggle:{CACHE_PREFIX}/{lost}"]
    assert "HTTP 500" in failed[0]["detail"] and "after 3 attempts" in failed[0]["detail"]
    assert {"source_uri": f"kaggle:{CACHE_PREFIX}/{climber}", "reason": "unsafe_path"}.items() <= next(
                r for r in rejected if r["source_uri"].endswith("escaped.png")).items()
    # Only the selected classes' images and metadata sheets were fetched: no masks, no other
    # classes, each once.
    wanted = images_of("COVID", "Normal") | sheets_of("COVID", "Normal")
    downloads = fake_kaggle.downloads()
    assert set(downloads) == wanted - {lost} and set(downloads.values()) == {1}
    assert sum(1 for e, n, s in fake_kaggle.calls if n == late and s == 429) == 1
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"raw/{CACHE_PREFIX}/files/")["Contents"]
    assert {o["Key"].split("/files/", 1)[1] for o in listed} == wanted - {lost}
    # The sheets' URLs became each image's source, in the shards and the manifest's counts.
    for row in (r for rows in splits.values() for r in rows):
        index = int(row["source_uri"].rsplit("-", 1)[1].removesuffix(".png")) - 1
        assert row["source"] == SHEET_SOURCES[row["class_name"]][index % 2]
    sources = {name for per_split in manifest["counts"]["sources"].values() for name in per_split}
    assert sources == {"bimcv", "sirm", "rsna", "pediatric-pneumonia"}
    assert manifest["source"]["metadata"]["sheets"]["Normal"]["rows_without_image"] == 0
    assert "Kaggle tawsifurrahman/covid19-radiography-database version 5: downloaded 17, failed 1" in result.stdout

    # Credentials appear nowhere: not in the output, manifest, rejects or Ray's own logs.
    everything = (result.stdout + result.stderr + (output / "manifest.json").read_text()).encode()
    everything += (output / "rejected.parquet").read_bytes()
    everything += b"".join(p.read_bytes() for p in ray_tmpdir.rglob("*") if p.is_file() and "logs" in p.parts)
    assert b"raylet.out" in b" ".join(p.name.encode() for p in ray_tmpdir.rglob("*"))  # the logs were searched
    assert fake_kaggle.key.encode() not in everything

    # The rerun fetches only what is missing: the file that failed, now served.
    fake_kaggle.broken = set()
    result = run_job("preprocess", *args, "--overwrite", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, splits, rejected = read_output(str(output))
    assert manifest["source"]["kaggle"]["fetched"] == {"COVID": {"cached": 8}, "Normal": {"cached": 9, "downloaded": 1}}
    assert fake_kaggle.downloads()[lost] == 1 and sum(fake_kaggle.downloads().values()) == len(wanted)  # sheets cached
    assert not [r for r in rejected if r["reason"] == "download_failed"]


@pytest.mark.slow
def test_an_interrupted_job_run_again_downloads_only_what_it_lacks(ray_session, fake_kaggle, tmp_path):
    cache = tmp_path / "raw"
    args = [sys.executable, str(REPO / "jobs" / "preprocess.py"), "--source", "kaggle", "--raw-cache", str(cache),
            "--output", str(tmp_path / "shards"), "--image-size", "64", "--download-concurrency", "1"]
    fake_kaggle.delay_seconds = 0.5
    job = subprocess.Popen(args, cwd=REPO, env={**os.environ, **kaggle_env(fake_kaggle, ray_session)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    images_downloaded = lambda: sum(n for name, n in fake_kaggle.downloads().items() if name.endswith(".png"))  # noqa: E731
    while images_downloaded() < 4 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0, "the job finished before it was interrupted"
    assert "Traceback" not in stderr.split("error: interrupted")[-1]
    files = cache / CACHE_PREFIX / "files"
    kept = {str(p.relative_to(files)) for p in files.rglob("*.png")}
    assert len(kept) >= 3
    first = fake_kaggle.downloads()

    fake_kaggle.delay_seconds = 0.0
    result = run_job("preprocess", *args[2:], "--overwrite", env=kaggle_env(fake_kaggle, ray_session))
    assert result.returncode == 0, result.stderr[-3000:]
    second = fake_kaggle.downloads() - first
    assert set(second) == images_of("COVID", "Normal") - kept and set(second.values()) == {1}
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert sum(c.get("cached", 0) for c in manifest["source"]["kaggle"]["fetched"].values()) == len(kept)


@pytest.mark.slow
def test_archive_mode_downloads_the_zip_once_and_reads_its_members(ray_session, fake_kaggle, tmp_path, monkeypatch):
    for name, value in kaggle_env(fake_kaggle).items():
        monkeypatch.setenv(name, value)
    config = PreprocessConfig(source="kaggle", classes=(), output=str(tmp_path / "shards"), image_size=64,
                              download=DownloadConfig(raw_cache=str(tmp_path / "raw"), archive=True))
    for run in range(2):
        manifest = run_preprocess(config)
        kaggle = manifest["source"]["kaggle"]
        assert kaggle["mode"] == "archive" and kaggle["archive_downloaded"] == (run == 0)
        assert kaggle["fetched"] == {c: {"from_archive": n} for c, n in sorted(CLASS_SIZES.items())}
        assert manifest["class_names"] == sorted(CLASS_SIZES)
        config = dataclasses.replace(config, overwrite=True)
    manifest, splits, rejected = read_output(str(tmp_path / "shards"))
    check_consistent(manifest, splits, rejected)
    uris = [r["source_uri"] for rows in splits.values() for r in rows] + [r["source_uri"] for r in rejected]
    assert all(uri.startswith(f"kaggle:{CACHE_PREFIX}/") for uri in uris)
    assert fake_kaggle.downloads() == {None: 1}  # one archive, no single files
    # The archive's sheets give sources; the two broken ones are recorded, not silently skipped.
    assert {r["class_name"] for r in rejected if r["reason"] == "bad_metadata"} == {"Lung_Opacity", "Viral Pneumonia"}
    assert {r["source"] for rows in splits.values() for r in rows if r["class_name"] == "COVID"} == {"bimcv", "sirm"}
    assert (tmp_path / "raw" / CACHE_PREFIX / "covid19-radiography-database.zip").is_file()


@pytest.mark.slow
def test_too_many_failed_downloads_fail_the_job_with_a_summary(ray_session, fake_kaggle, tmp_path):
    fake_kaggle.broken = {image_name("COVID", i) for i in (1, 2)} | {image_name("Normal", 1)}
    output = tmp_path / "shards"
    result = run_job("preprocess", "--source", "kaggle", "--output", str(output), "--image-size", "64",
                     "--download-retries", "0", "--max-failed-share", "0.05",
                     env=kaggle_env(fake_kaggle, ray_session))
    assert_one_line_error(result, "3 of 18 images could not be downloaded (16.7%, more than "
                                  "--max-failed-share 5.0%): 3 x HTTP 500 Internal Server Error")
    assert not (output / "manifest.json").exists()
    rejected = pq.read_table(output / "rejected.parquet").to_pylist()
    assert sorted(r["source_uri"].split("/versions/5/")[1] for r in rejected if r["reason"] == "download_failed") \
        == sorted(fake_kaggle.broken)


def test_bad_credentials_dataset_or_network_fail_in_one_line_before_ray(fake_kaggle, tmp_path):
    output = tmp_path / "shards"
    good = kaggle_env(fake_kaggle)
    cases = [
        ({"HOME": str(tmp_path)}, [], "no Kaggle credentials"),
        ({**good, "KAGGLE_KEY": "not-the-key-41"}, [], "Kaggle refused the credentials from KAGGLE_USERNAME/"
                                                      "KAGGLE_KEY (HTTP 401)"),
        (good, ["--source", "kaggle:tawsifurrahman/nothing-here"], "no dataset kaggle:tawsifurrahman/nothing-here"),
        (good, ["--kaggle-archive"], "--kaggle-archive needs --raw-cache"),
        (good, ["--source", str(tmp_path), "--raw-cache", str(tmp_path / "raw")], "apply to --source kaggle only"),
        (good, ["--classes", "COVID,Pneumonia"], "no folder for class(es) Pneumonia"),
    ]
    for env, args, message in cases:
        # --source may be repeated (several named sources): a case's own replaces kaggle.
        source = [] if "--source" in args else ["--source", "kaggle"]
        result = run_job("preprocess", *source, *args, "--output", str(output), env=env)
        assert_one_line_error(result, message)
        assert "Ray" not in result.stderr, "failed only after Ray started"
        assert fake_kaggle.key not in result.stderr + result.stdout and "not-the-key-41" not in result.stderr
    fake_kaggle.stop()
    result = run_job("preprocess", "--source", "kaggle", "--output", str(output), env=good)
    assert_one_line_error(result, "cannot reach Kaggle at http://localhost:7777")
    assert not output.exists()
