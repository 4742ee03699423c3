"""cxr.ingest.kaggle_api with the real Kaggle client against a local server (tests/kaggle_server.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from cxr.config import DownloadConfig, PreprocessConfig, class_list
from cxr.errors import DownloadFailed, UserError
from cxr.ingest.kaggle_api import DatasetRef, RemoteFile, find_credentials, open_dataset
from tests.kaggle_server import image_name

DATASET = "kaggle:tawsifurrahman/covid19-radiography-database"
# Short backoff and timeout: the retry logic is the same, the test is seconds shorter.
FAST = DownloadConfig(retries=2, backoff_seconds=0.05, timeout_seconds=1.0)


@pytest.fixture
def credentials(fake_kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", fake_kaggle.username)
    monkeypatch.setenv("KAGGLE_KEY", fake_kaggle.key)


def test_dataset_refs():
    assert DatasetRef.parse("kaggle") == DatasetRef("tawsifurrahman", "covid19-radiography-database")
    assert DatasetRef.parse("kaggle:someone/other-set") == DatasetRef("someone", "other-set")
    pinned = DatasetRef.parse("kaggle:someone/other-set/versions/3")
    assert pinned.version == 3 and pinned.uri == "kaggle:someone/other-set/versions/3"
    assert pinned.file_uri("a/b.png") == "kaggle:someone/other-set/versions/3/a/b.png"
    for bad in ("kaggle:", "kaggle:someone", "kaggle:a/b/c", "kaggle:a/b/versions/x", "kaggle:a/b/versions/0",
                "kaggle:../b"):
        with pytest.raises(UserError, match="expected kaggle:<owner>/<dataset>"):
            DatasetRef.parse(bad)


def test_class_defaults_and_download_settings():
    def wanted(classes, source):
        return PreprocessConfig(source=source, classes=classes).wanted_classes

    assert wanted(None, "kaggle") == ("COVID", "Normal") == wanted(None, "kaggle:a/b")
    assert wanted(None, "some/folder") is None and wanted(class_list("all"), "kaggle") is None
    assert wanted(class_list("Normal, COVID"), "kaggle") == ("Normal", "COVID")
    assert [DownloadConfig(backoff_seconds=0.5, max_backoff_seconds=3).backoff(n) for n in (1, 2, 3, 4)] == \
        [0.5, 1.0, 2.0, 3.0]
    for bad, message in (({"concurrency": 0}, "--download-concurrency"), ({"max_failed_share": 2}, "--max-failed"),
                         ({"archive": True}, "--kaggle-archive needs --raw-cache")):
        with pytest.raises(UserError, match=message):
            DownloadConfig(**bad)
    with pytest.raises(UserError, match="apply to --source kaggle only"):
        PreprocessConfig(source="raw/", download=DownloadConfig(raw_cache="cache/"))


def test_credentials_come_from_the_usual_places(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY"):
        find_credentials()
    config = tmp_path / "kaggle.json"
    config.write_text(json.dumps({"username": "from-file", "key": "file-secret"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    found = find_credentials()
    assert (found.username, found.key, found.origin) == ("from-file", "file-secret", str(config))
    monkeypatch.setenv("KAGGLE_KEY", "env-secret")
    found = find_credentials()
    assert (found.username, found.key) == ("from-file", "env-secret")  # the environment wins, as in `kaggle`
    assert "env-secret" not in repr(found) and "file-secret" not in repr(found)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token-secret")
    found = find_credentials()
    assert found.token == "token-secret" and found.username is None and "token-secret" not in repr(found)
    config.write_text("{not json")
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    with pytest.raises(UserError, match="not a readable kaggle.json") as error:
        find_credentials()
    assert "not json" not in str(error.value)


def test_lookup_pins_the_version_and_listing_follows_pages(fake_kaggle, credentials):
    remote = open_dataset(DATASET, FAST)
    assert remote.dataset.version == fake_kaggle.version
    assert fake_kaggle.key not in repr(remote)
    files = remote.list_files()
    assert sorted(f.name for f in files) == sorted(fake_kaggle.files)
    assert all(f.size == len(fake_kaggle.files[f.name]) for f in files)
    pages = -(-len(fake_kaggle.files) // fake_kaggle.page_cap)
    assert fake_kaggle.count("ListDatasetFiles") == pages > 1


def test_downloads_retry_what_is_transient_and_give_up_on_the_rest(fake_kaggle, credentials):
    remote = open_dataset(DATASET, FAST)
    names = [image_name("COVID", i) for i in range(1, 7)]
    fake_kaggle.script = {names[0]: [429], names[1]: ["stall"], names[2]: [503, 502], names[3]: ["json"]}
    fake_kaggle.stall_seconds = 2.5  # beyond FAST's 1 s timeout
    fake_kaggle.broken = {names[4]}
    fake_kaggle.wrapped = {names[5]}
    with remote.client() as client:
        def fetch(name):
            return remote.fetch(client, RemoteFile(name, len(fake_kaggle.files[name])))

        for name in (names[0], names[1], names[2], names[5]):
            assert fetch(name) == fake_kaggle.files[name]
        with pytest.raises(DownloadFailed, match="JSON instead of"):
            fetch(names[3])
        with pytest.raises(DownloadFailed, match=r"HTTP 500 .*after 3 attempts"):
            fetch(names[4])
        with pytest.raises(DownloadFailed, match=r"got \d+ of 999999 bytes after 3 attempts"):
            remote.fetch(client, RemoteFile(image_name("Normal", 1), 999999))
        with pytest.raises(DownloadFailed, match="HTTP 404"):
            remote.fetch(client, RemoteFile("no/such/file.png", 10))
    attempts = {name: sum(1 for e, n, _ in fake_kaggle.calls if e == "DownloadDataset" and n == name)
                for name in names}
    # 429 and a stall once each, two 5xx, then the file; JSON is not retried; 500 three times.
    assert [attempts[n] for n in names] == [2, 2, 3, 1, 3, 1]


@pytest.mark.parametrize("change, message", [
    ({"KAGGLE_KEY": "wrong-key-77"}, "Kaggle refused the credentials from KAGGLE_USERNAME/KAGGLE_KEY (HTTP 401)"),
    ({"dataset": "kaggle:tawsifurrahman/no-such-dataset"}, "Kaggle has no dataset kaggle:tawsifurrahman/"
                                                           "no-such-dataset (HTTP 404)"),
    ({"dataset": DATASET + "/versions/9"}, "(HTTP 404)"),
    ({"server": "down"}, "cannot reach Kaggle at http://localhost:7777 (connection failed: [Errno 111]"),
])
def test_the_lookup_explains_each_failure_in_one_line(fake_kaggle, credentials, monkeypatch, change, message):
    for name in ("KAGGLE_KEY",):
        if name in change:
            monkeypatch.setenv(name, change[name])
    if change.get("server") == "down":
        fake_kaggle.stop()
    with pytest.raises(UserError) as error:
        open_dataset(change.get("dataset", DATASET), FAST).list_files()
    text = str(error.value)
    assert message in text and "\n" not in text
    assert fake_kaggle.key not in text and "wrong-key-77" not in text


def fetch_rows(remote, names, cached=()) -> pa.Table:
    """Listed items as the fetch stage receives them (cxr.ingest.downloads.list_kaggle's rows)."""
    return pa.Table.from_pylist([
        {"source_uri": remote.dataset.file_uri(n), "class_name": "COVID", "label": 0,
         "kind": "file" if n in cached else "kaggle", "location": f"/cache/{n}" if n in cached else n,
         "member": "", "synthetic_index": -1, "size": 0, "fetch": "cached" if n in cached else None}
        for n in names])


def test_fetch_stage_fills_the_raw_cache_and_passes_cached_files_on(fake_kaggle, credentials, tmp_path):
    from dataclasses import replace

    from cxr.ingest.downloads import RawCache, fetch_batch

    remote = open_dataset(DATASET, replace(FAST, raw_cache=str(tmp_path / "raw")))
    names = [image_name("COVID", i) for i in (1, 2, 3, 4)]
    rows = fetch_batch(fetch_rows(remote, names, cached=names[:1]), remote, threads=3).to_pylist()
    assert [r["fetch"] for r in rows] == ["cached", "downloaded", "downloaded", "downloaded"]
    assert (rows[0]["kind"], rows[0]["location"], rows[0]["data"]) == ("file", f"/cache/{names[0]}", None)
    assert all(r["kind"] == "fetched" and r["t_fetch"] > 0 for r in rows[1:])
    assert [r["data"] for r in rows[1:]] == [fake_kaggle.files[n] for n in names[1:]]
    cache = RawCache(remote.policy.raw_cache, remote.dataset)
    assert cache.sizes() == {n: len(fake_kaggle.files[n]) for n in names[1:]}
    assert set(fake_kaggle.downloads()) == set(names[1:])


def test_fetch_stage_stops_trying_after_failures_in_a_row(fake_kaggle, credentials):
    from cxr.ingest.downloads import GIVE_UP_AFTER, fetch_batch

    remote = open_dataset(DATASET, DownloadConfig(retries=0))
    names = [image_name("Normal", i) for i in range(1, 10)]
    fake_kaggle.broken = set(names)
    rows = fetch_batch(fetch_rows(remote, names), remote).to_pylist()
    assert all(r["fetch"] == "failed" and r["data"] is None for r in rows)
    assert [r["fetch_detail"] for r in rows[:GIVE_UP_AFTER]] == ["HTTP 500 Internal Server Error"] * GIVE_UP_AFTER
    assert all(r["fetch_detail"].startswith(f"not attempted: {GIVE_UP_AFTER} downloads in a row failed")
               for r in rows[GIVE_UP_AFTER:])
    assert fake_kaggle.count("DownloadDataset") == GIVE_UP_AFTER


def test_downloads_in_flight_never_exceed_the_concurrency():
    from cxr.ingest.downloads import THREADS_PER_TASK, fetch_parallelism

    for concurrency in range(1, 40):
        tasks, threads = fetch_parallelism(concurrency)
        assert 1 <= threads <= THREADS_PER_TASK and concurrency - tasks < tasks * threads <= concurrency
