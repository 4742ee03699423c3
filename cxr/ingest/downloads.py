"""A Kaggle dataset into the preprocessing pipeline: listing, raw cache, download stage.

Two modes. Per file (the default): the driver lists the dataset's files (cxr.ingest.kaggle_api)
by the class-folder rules of cxr.ingest.sources, and a Ray Data stage ahead of the image work
downloads them, at most `DownloadConfig.concurrency` at a time over the whole cluster,
each worker fetching its own share. Archive (`--kaggle-archive`): the driver downloads the
dataset's zip once into the raw cache, and its members are read in parallel like those of
any zip source.

The raw cache keeps the originals under `<raw-cache>/<owner>/<dataset>/versions/<n>/`
(`files/<path in the dataset>` and `<dataset>.zip`). Each file is stored whole or not at
all as soon as it arrives, so a rerun, or an interrupted job run again, downloads only
what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

import pyarrow as pa

from cxr import storage
from cxr.config import DownloadConfig, PreprocessConfig
from cxr.errors import DownloadFailed, UserError
from cxr.ingest import kaggle_api, sources

log = logging.getLogger(__name__)

# A download waits on the network: it reserves no CPU, and `concurrency` alone bounds the
# downloads in flight. Any reservation would keep image tasks off cores they could use (on 2
# CPUs, 4 downloads at 0.25 CPU left room for one image task: docs/benchmarks.md, download).
# Ray Data spreads the tasks over the nodes (its SPREAD default), so each node fetches a share.
FETCH_CPUS = 0
# Downloads in flight per task, in threads: a Ray worker process per download costs a
# second of CPU to start and its memory, where a thread costs nothing.
THREADS_PER_TASK = 4
# After this many failed downloads in a row a task stops trying (Kaggle is down, or the
# network), so that a dead connection costs seconds per task, not retries for every file.
GIVE_UP_AFTER = 5
FETCH_COLUMNS = [("data", pa.binary()), ("fetch", pa.string()), ("fetch_detail", pa.string()),
                 ("t_fetch", pa.float64())]


class RawCache:
    """Where the originals of one dataset version are kept."""

    def __init__(self, root_uri: str, dataset: kaggle_api.DatasetRef):
        self.root = storage.resolve(root_uri).join(dataset.owner, dataset.slug, "versions", str(dataset.version))
        self.archive = self.root.join(f"{dataset.slug}.zip")
        self._files = self.root.join("files")

    def file(self, name: str) -> storage.Location:
        return self._files.join(name)

    def sizes(self) -> dict[str, int]:
        """The size of every file present, by its path in the dataset."""
        prefix = self._files.path.rstrip("/") + "/"
        return {info.path[len(prefix):]: info.size for info in storage.list_files(self._files)
                if storage.PARTIAL_MARK not in info.path}


def list_kaggle(config: PreprocessConfig) -> sources.Listing:
    """Check, pin and list config's Kaggle dataset (or fetch its archive): all before any worker starts."""
    remote = kaggle_api.open_dataset(config.kaggle_uri, config.download)
    ref = remote.dataset
    cache = RawCache(config.download.raw_cache, ref) if config.download.raw_cache else None
    if cache is not None:
        storage.check_bucket(cache.root)
        storage.check_writable(cache.root)
    origin = {"dataset": ref.id, "version": ref.version, "mode": "archive" if config.download.archive else "files",
              "raw_cache": cache.root.uri if cache else None}
    log.info("Kaggle dataset %s, version %d", ref.id, ref.version)
    if config.download.archive:
        return _list_archive(remote, cache, config.wanted_classes, origin, config.max_pixels)

    listed = remote.list_files()
    # A name is a path in the raw cache: list_tree makes one that would climb out of it an
    # `unsafe_path` reject, which is never fetched.
    files = {f.name: f for f in listed}
    cached = cache.sizes() if cache else {}

    def read_spec(name: str) -> tuple[str, str, str]:
        # A cached original is read by the image stage like any file; the rest is downloaded.
        size = files[name].size
        if name in cached and (cached[name] == size or not size):
            return "file", cache.file(name).uri, ""
        return "kaggle", name, ""

    def read_sheet(name: str) -> bytes:
        # A metadata sheet is read here, on the driver: the listing needs its sources.
        kind, location, _ = read_spec(name)
        if kind == "file":
            return storage.read_bytes(storage.resolve(location))
        client = remote.client()
        try:
            data = remote.fetch(client, files[name])
        finally:
            client.__exit__(None, None, None)
        if cache is not None:
            _store(cache, name, data)
        return data

    found = sources.Found(files={name: f.size or None for name, f in files.items()})
    listing = sources.list_tree("kaggle", ref.uri, found, config.wanted_classes, ref.file_uri, read_spec,
                                read_sheet=read_sheet, max_bytes=sources.max_input_bytes(config.max_pixels))
    for item in listing.items:
        item["fetch"] = "cached" if item["kind"] == "file" else None
        item["size"] = files[item["location"]].size if item["kind"] == "kaggle" else 0
    to_download = sum(item["kind"] == "kaggle" for item in listing.items)
    log.info("%d files listed; %d images selected, %d of them already in the raw cache, %d to download",
             len(listed), len(listing.items), len(listing.items) - to_download, to_download)
    # No download stage at all when the cache holds everything: a rerun reads as from a folder.
    return dataclasses.replace(listing, remote=remote if to_download else None,
                               origin={"kaggle": {**origin, "files_listed": len(listed)}})


def _list_archive(remote: kaggle_api.Remote, cache: RawCache, classes: tuple[str, ...] | None,
                  origin: dict, max_pixels: int) -> sources.Listing:
    downloaded = not storage.is_file(cache.archive)
    if downloaded:
        log.info("downloading %s as one archive into %s", remote.dataset.uri, cache.archive.uri)
        size = remote.download_archive(cache.archive)
    else:
        log.info("using %s from the raw cache", cache.archive.uri)
        size = storage.file_info(cache.archive).size
    listing = sources.list_zip(cache.archive, classes, uri_of=remote.dataset.file_uri, max_pixels=max_pixels)
    archive = {"archive": cache.archive.uri, "archive_bytes": size, "archive_downloaded": downloaded}
    return dataclasses.replace(listing, kind="kaggle_archive", origin={"kaggle": {**origin, **archive}})


def fetch_parallelism(concurrency: int) -> tuple[int, int]:
    """(tasks, threads per task) for at most `concurrency` downloads in flight."""
    tasks = math.ceil(concurrency / THREADS_PER_TASK)
    return tasks, concurrency // tasks


def fetch_batch(batch: pa.Table, remote: kaggle_api.Remote, threads: int = 1) -> pa.Table:
    """Ray Data stage: download each listed file (into the raw cache, if there is one).

    `threads` files are fetched at a time, each thread with its own client (a requests
    session is not shared across threads). Cached files pass through, for the image stage
    to read. A file that cannot be had is a row with `fetch` "failed" and the reason, which
    the image stage turns into a reject: one bad file never stops the job, and never vanishes.
    """
    cache = RawCache(remote.policy.raw_cache, remote.dataset) if remote.policy.raw_cache else None
    failures = _FailuresInARow()
    local, clients = threading.local(), []

    def client():
        if not hasattr(local, "client"):  # only when a download is needed: cache hits need none
            local.client = remote.client()
            clients.append(local.client)
        return local.client

    def fetch(item: dict) -> dict:
        if item["kind"] != "kaggle":
            return {**item, "data": None, "fetch_detail": None, "t_fetch": 0.0}
        start = perf_counter()
        file = kaggle_api.RemoteFile(item["location"], item["size"])
        data, how, detail = None, "downloaded", None
        try:
            failures.check()
            data = remote.fetch(client(), file)
            failures.succeeded()
        except DownloadFailed as exc:
            how, detail = "failed", str(exc)
            failures.failed(detail)
        if data is not None and cache is not None:
            _store(cache, file.name, data)
        return {**item, "kind": "fetched", "data": data, "fetch": how, "fetch_detail": detail,
                "t_fetch": perf_counter() - start}

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            rows = list(pool.map(fetch, batch.to_pylist()))
    finally:
        for each in clients:
            each.__exit__(None, None, None)
    # The listing's `fetch` column may hold only nulls, and then has no type to keep.
    schema = pa.schema([f for f in batch.schema if f.name != "fetch"] + FETCH_COLUMNS)
    return pa.Table.from_pylist(rows, schema=schema)


class _FailuresInARow:
    """Failed downloads since the last success, over a task's threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count, self._last = 0, ""

    def check(self) -> None:
        with self._lock:
            if self._count >= GIVE_UP_AFTER:
                raise DownloadFailed(f"not attempted: {self._count} downloads in a row failed before it "
                                     f"(last: {self._last})")

    def succeeded(self) -> None:
        with self._lock:
            self._count = 0

    def failed(self, detail: str) -> None:
        if detail.startswith("not attempted"):
            return
        with self._lock:
            self._count, self._last = self._count + 1, detail


def _store(cache: RawCache, name: str, data: bytes) -> None:
    """Keep a downloaded original; the image goes on even when the cache cannot take it."""
    try:
        storage.write_bytes_atomically(cache.file(name), data)
    except OSError as exc:
        log.warning("raw cache: %s", storage.describe_error(exc, cache.file(name).uri))


def fetched_per_class(rows: list[dict], class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """How each class's images were had: downloaded, cached, failed, or from_archive."""
    counts = {name: Counter() for name in class_names}
    for row in rows:
        counts[row["class_name"]][row["fetch"] or "from_archive"] += 1
    return {name: dict(sorted(c.items())) for name, c in counts.items()}


def check_failures(rows: list[dict], policy: DownloadConfig, rejected_uri: str) -> None:
    """Fail the job, with a summary, when more than the allowed share of images could not be had."""
    failed = [row for row in rows if row["status"] == "download_failed"]
    wanted = sum(1 for row in rows if row["fetch"] is not None)
    if not failed or len(failed) <= policy.max_failed_share * wanted:
        return
    top = ", ".join(f"{n} x {detail}" for detail, n in Counter(r["detail"] for r in failed).most_common(3))
    kept = "; what was fetched stays in the raw cache" if policy.raw_cache else ""
    raise UserError(f"{len(failed)} of {wanted} images could not be downloaded ({len(failed) / wanted:.1%}, "
                    f"more than --max-failed-share {policy.max_failed_share:.1%}): {top}. Each is listed in "
                    f"{rejected_uri}; run again with --overwrite to retry them{kept}")
