"""Storage through pyarrow's FileSystem.from_uri (issue 29): every scheme pyarrow knows resolves
to its filesystem and path, an unknown one is one line, and cxr.storage lists, reads and
writes through a filesystem that is neither local nor S3.

No network: gs:// and abfs:// are only resolved (pyarrow builds their clients lazily);
what is read and written goes through pyarrow's mock:// filesystem (native, like gs://: its
URIs are percent-decoded) and fsspec's memory:// and file:// (through `fsspec+`).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cxr import claims, storage
from cxr.artifacts import CLAIM_FILE
from cxr.config import PreprocessConfig, TrainConfig
from cxr.errors import UserError
from tests.cli import assert_one_line_error, run_job
from tests.trees import class_tree, write_tree


def test_a_gcs_uri_keeps_its_form_and_pyarrows_path():
    root = storage.resolve("gs://bucket/My X-rays/")
    assert root.fs.type_name == "gcs" and not root.is_local and root.is_object_store
    assert (root.uri, root.path) == ("gs://bucket/My X-rays", "bucket/My X-rays")
    image = root.join("COVID", "a b#1.png")
    assert (image.uri, image.path) == ("gs://bucket/My X-rays/COVID/a b#1.png", "bucket/My X-rays/COVID/a b#1.png")
    assert root.at_path(image.path) == image
    # The URI of a joined location resolves to the same place (a Ray worker resolves URIs).
    again = storage.resolve(image.uri)
    assert (again.uri, again.path) == (image.uri, image.path)
    assert again.fs is root.fs  # one client per bucket, not one per image


def test_an_azure_uri_names_its_container_in_the_path():
    location = storage.resolve("abfss://xrays@account.dfs.core.windows.net/raw/")
    assert location.fs.type_name == "abfs" and location.is_object_store
    assert (location.uri, location.path) == ("abfss://xrays@account.dfs.core.windows.net/raw", "xrays/raw")


def test_file_uris_are_local_paths(tmp_path):
    location = storage.resolve(f"file://{tmp_path}/a b/")
    assert location.is_local and (location.uri, location.path) == (f"{tmp_path}/a b",) * 2
    assert storage.contains(str(tmp_path), f"file://{tmp_path}/a b")
    assert not storage.contains("gs://bucket/raw", "gs://bucket/raw2")
    assert storage.contains("gs://bucket/raw/", "gs://bucket/raw/x")


@pytest.mark.parametrize("uri, expected", [
    ("foo://x", "foo://x: unknown storage scheme foo://"),
    ("s4://bucket/raw", "did you mean s3://?"),
    ("fsspec+nosuch://x", "fsspec+nosuch://x: unknown storage scheme fsspec+nosuch://"),
    ("1x://y", "1x://y: not a valid URI"),
    ("file://elsewhere/data", "a file:// URI names a local path"),
])
def test_an_unknown_or_malformed_uri_is_one_line_naming_what_works(uri, expected):
    with pytest.raises(UserError) as refused:
        storage.resolve(uri)
    message = str(refused.value)
    assert expected in message and "\n" not in message
    if "unknown" in expected:
        assert "s3://, gs://" in message and "fsspec+<protocol>://" in message


def test_a_scheme_whose_library_is_missing_is_one_line():
    # Loopback only: without libhdfs (here) pyarrow fails at once; with it, port 1 refuses.
    with pytest.raises(UserError) as refused:
        storage.resolve("hdfs://127.0.0.1:1/xrays")
    assert str(refused.value).startswith("hdfs://127.0.0.1:1/xrays: ") and "\n" not in str(refused.value)


def test_a_uri_holding_a_password_is_refused_without_showing_it():
    with pytest.raises(UserError) as refused:
        storage.resolve("abfs://:s3cr3tAccountKey@account.dfs.core.windows.net/xrays/raw")
    assert "s3cr3t" not in str(refused.value) and "must not hold a password" in str(refused.value)


def test_error_messages_hold_no_secret_and_name_the_store(monkeypatch):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "do-not-print-this-secret")
    monkeypatch.setenv("GCS_OAUTH_TOKEN", "ya29.do-not-print-this-token")
    leaky = OSError("GET https://storage.example/b?access_token=ya29.do-not-print-this-token failed: "
                    "client secret do-not-print-this-secret refused")
    message = storage.describe_error(leaky, "gs://bucket/raw")
    assert "do-not-print" not in message and message.startswith("gs://bucket/raw: ")
    denied = OSError("google::cloud::Status(PERMISSION_DENIED: caller lacks storage.objects.list)")
    assert storage.describe_error(denied, "gs://bucket/raw") == (
        "gs://bucket/raw: access denied by the gs:// store (check the credentials this machine has for it)")
    # A local file's name is not a store's answer.
    assert storage.describe_error(FileNotFoundError("no such file: /data/403.png"), "/data/403.png") == \
        "/data/403.png: does not exist"


@pytest.fixture(params=["mock", "fsspec+memory"])
def remote_root(request) -> str:
    """A fresh folder on a filesystem that is neither local nor S3, kept in this process."""
    return f"{request.param}:///cxr-{uuid.uuid4().hex[:8]}/My Data"


def test_storage_reads_writes_and_lists_through_another_filesystem(remote_root):
    root = storage.resolve(remote_root)
    assert not root.is_local and not root.is_s3 and not root.is_object_store
    files = {"COVID/a b.png": b"covid", "Normal/deep/n 1.png": b"normal"}
    for relative, data in files.items():
        storage.write_bytes(root.join(relative), data)  # the folders are made: this store has them
    storage.write_json(root.join("manifest.json"), {"ok": True})
    storage.write_bytes_atomically(root.join("report.txt"), b"whole")
    storage.write_stream_atomically(root.join("big.bin"), [b"a", b"b"])
    storage.check_writable(root)

    entries = storage.list_entries(root)
    prefix = root.path + "/"
    assert sorted(f.path.removeprefix(prefix) for f in entries.files) == sorted(
        [*files, "manifest.json", "report.txt", "big.bin"])
    assert {f.removeprefix(prefix) for f in entries.folders} >= {"COVID", "Normal", "Normal/deep"}
    image = storage.resolve(f"{remote_root}/COVID/a b.png")  # as a worker gets it: by URI
    assert storage.read_bytes(image) == b"covid" and storage.is_file(image)
    assert root.at_path(entries.files[0].path).uri.startswith(root.uri + "/")
    assert storage.read_json(root.join("manifest.json")) == {"ok": True}
    assert storage.exists(root.join("Normal")) and not storage.is_file(root.join("Normal"))

    storage.delete_contents(root, keep=("manifest.json",))
    assert [f.path.removeprefix(prefix) for f in storage.list_files(root)] == ["manifest.json"]
    storage.delete_tree(root)
    assert not storage.exists(root)


def test_a_claim_on_another_store_warns_that_it_is_not_enforced(remote_root, caplog):
    location = storage.resolve(remote_root).join(CLAIM_FILE)
    with caplog.at_level(logging.WARNING, logger="cxr.claims"):
        with claims.claimed(location, "preprocess", "--output"):
            with claims.claimed(location, "preprocess", "--output"):  # not stopped: nothing can stop it
                pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "run one at a time" in warnings[0]
    assert warnings[0].startswith(storage.resolve(remote_root).uri + ": ")
    assert not storage.exists(location)  # nothing written, nothing left


@pytest.mark.parametrize("flag, uri", [("--source", "foo://x"), ("--output", "s4://bucket/shards")])
def test_preprocess_refuses_an_unknown_scheme_in_one_line(tmp_path, flag, uri):
    other = {"--source": ["--output", str(tmp_path / "out")], "--output": ["--source", "synthetic"]}[flag]
    result = run_job("preprocess", flag, uri, *other, timeout=120)
    assert_one_line_error(result, f"{uri}: unknown storage scheme")


@pytest.mark.slow
def test_preprocess_and_train_through_an_fsspec_filesystem(ray_session, tmp_path, caplog):
    """The whole way through a filesystem that is neither local nor S3, in Ray's workers too:
    fsspec's local files, behind `fsspec+file://` (a pyarrow PyFileSystem, as gcsfs would be)."""
    from cxr.preprocess.pipeline import run_preprocess
    from cxr.train.job import run_training

    write_tree(tmp_path / "raw data", class_tree(per_class=12, size=96, kaggle_layout=False))
    remote = f"fsspec+file://{tmp_path}"
    with caplog.at_level(logging.WARNING, logger="cxr.claims"):
        manifest = run_preprocess(PreprocessConfig(source=f"{remote}/raw data", output=f"{remote}/shards",
                                                   image_size=64))
    assert manifest["counts"]["found"] == 24
    assert any("cannot claim a folder on fsspec+file://" in r.getMessage() for r in caplog.records)
    shards = tmp_path / "shards"
    rows = sum(pq.read_table(path).num_rows for path in shards.glob("*/part-*.parquet"))
    assert rows + pq.read_table(shards / "rejected.parquet").num_rows == 24
    names = pq.read_table(shards / "train" / "part-00000.parquet").column("source_uri").to_pylist()
    assert all(name.startswith(f"{remote}/raw data/") for name in names)
    assert not (shards / "_staging").exists()

    summary = run_training(TrainConfig(data=f"{remote}/shards", storage=f"{remote}/runs", name="run", epochs=1,
                                       batch_size=8))
    assert summary["export"] == f"{remote}/runs/run/model"
    assert (tmp_path / "runs" / "run" / "model" / "model.keras").is_file()
    assert list(Path(tmp_path / "runs" / "run").glob("checkpoint_*"))


def test_staging_files_are_named_by_uris_that_resolve_back(remote_root):
    """Preprocess's driver names each staging file for the Ray task that copies it into a
    shard, which resolves the name: a URI of the output's own store, not a bare path."""
    import pyarrow as pa

    from cxr.preprocess import pipeline, shards

    staging = storage.resolve(remote_root).join("_staging")
    table = pa.table({name: ["x"] for name in [*shards.METADATA_COLUMNS, "image_png"]})
    storage.ensure_parent(staging.join("part-1.parquet"))
    pq.write_table(table, staging.join("part-1.parquet").path, filesystem=staging.fs)
    names = list(pipeline._read_staging_metadata(staging))
    assert names == [f"{staging.uri}/part-1.parquet"]
    assert storage.resolve(names[0]).path == staging.join("part-1.parquet").path
