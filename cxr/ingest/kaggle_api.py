"""Kaggle datasets through the official client (`kagglesdk`, which the `kaggle` package is built on).

The driver checks the credentials, the network and the dataset once, before any worker
starts (`open_dataset`), pins the dataset's version so that every file comes from the same
one, and lists the files page by page. Workers then download files with `Remote.fetch`,
retrying timeouts, 429 and 5xx with exponential backoff.

Which server: `KAGGLE_API_ENVIRONMENT`, as the client reads it (unset: api.kaggle.com;
`TEST`: http://localhost:7777, which the tests serve). The driver reads it and hands it to
the workers, so a cluster's nodes need no setting of their own.

Credentials, in the `kaggle` command's own order: an API token (`KAGGLE_API_TOKEN`, its value
or a file holding it, or `~/.kaggle/access_token`), then `KAGGLE_USERNAME` and `KAGGLE_KEY`,
then `kaggle.json` in `KAGGLE_CONFIG_DIR`, `~/.kaggle` or `~/.config/kaggle`. They reach the
workers inside the task arguments and never a log, manifest or error message: `Credentials`
hides them from `repr`, and errors are written from status codes, not from responses.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import random
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import requests

from cxr import storage
from cxr.config import KAGGLE_DEFAULT_DATASET, KAGGLE_SOURCE, DownloadConfig
from cxr.errors import DownloadFailed, UserError, one_line

log = logging.getLogger(__name__)

T = TypeVar("T")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Archive progress is logged this often, so `ray job logs --follow` shows a long download moving.
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class DatasetRef:
    """`owner/slug`, and the version once it is known (None: the current one)."""

    owner: str
    slug: str
    version: int | None = None

    @classmethod
    def parse(cls, source: str) -> DatasetRef:
        """`kaggle`, `kaggle:<owner>/<dataset>` or `kaggle:<owner>/<dataset>/versions/<n>`."""
        text = source[len(KAGGLE_SOURCE) + 1:] if source != KAGGLE_SOURCE else KAGGLE_DEFAULT_DATASET
        parts = text.strip("/").split("/")
        version = None
        if len(parts) == 4 and parts[2] == "versions" and parts[3].isdigit() and int(parts[3]) > 0:
            version = int(parts[3])
            parts = parts[:2]
        if len(parts) != 2 or not all(_SLUG.match(p) for p in parts):
            raise UserError(f"{source}: expected kaggle:<owner>/<dataset> or kaggle:<owner>/<dataset>/versions/<n>")
        return cls(owner=parts[0], slug=parts[1], version=version)

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def uri(self) -> str:
        return f"{KAGGLE_SOURCE}:{self.id}" + (f"/versions/{self.version}" if self.version else "")

    def file_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"


@dataclass(frozen=True)
class Credentials:
    """Where the credentials came from (safe to show) and the secrets themselves (never shown)."""

    origin: str
    username: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


def find_credentials() -> Credentials:
    from kagglesdk.kaggle_env import get_access_token_from_env  # the client's own token lookup

    token, origin = get_access_token_from_env()
    if token:
        return Credentials(origin=origin, token=token)
    values, origin = {}, ""
    config_file = _kaggle_json()
    if config_file:
        try:
            with open(config_file) as handle:
                loaded = json.load(handle)
        except (OSError, ValueError):
            raise UserError(f"{config_file}: not a readable kaggle.json (expected "
                            '{"username": ..., "key": ...})') from None
        if isinstance(loaded, dict):
            values = {k: loaded.get(k) for k in ("username", "key")}
            origin = config_file
    for name in ("username", "key"):
        if os.environ.get(f"KAGGLE_{name.upper()}"):
            values[name] = os.environ[f"KAGGLE_{name.upper()}"]
            origin = "KAGGLE_USERNAME/KAGGLE_KEY" + (f" and {config_file}" if config_file else "")
    if values.get("username") and values.get("key"):
        return Credentials(origin=origin, username=values["username"], key=values["key"])
    raise UserError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json in "
                    "~/.kaggle, or set KAGGLE_API_TOKEN (create them under Settings, API on kaggle.com)")


def _kaggle_json() -> str | None:
    folders = [os.environ["KAGGLE_CONFIG_DIR"]] if os.environ.get("KAGGLE_CONFIG_DIR") else [
        os.path.expanduser("~/.kaggle"),
        os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "kaggle")]
    for folder in folders:
        path = os.path.join(folder, "kaggle.json")
        if os.path.isfile(path):
            return path
    return None


def environment() -> str:
    """The name of the Kaggle environment this process's client would use."""
    from kagglesdk.kaggle_env import get_env

    try:
        return get_env().name
    except Exception as exc:  # noqa: BLE001 - kagglesdk raises a bare Exception for a bad value
        raise UserError(f"KAGGLE_API_ENVIRONMENT: {exc}") from None


class IncompleteDownload(Exception):
    """The server sent fewer bytes than it announced: worth another try."""


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def send(self, request, timeout=None, **kwargs):  # noqa: ANN001 - requests' own signature
        return super().send(request, timeout=timeout or self._timeout, **kwargs)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int  # bytes as listed; 0 when the listing does not say


@dataclass(frozen=True)
class Remote:
    """Everything a worker needs to download from one pinned dataset version."""

    dataset: DatasetRef
    credentials: Credentials
    environment: str
    policy: DownloadConfig

    @property
    def endpoint(self) -> str:
        from kagglesdk.kaggle_env import KaggleEnv, get_endpoint

        return get_endpoint(KaggleEnv[self.environment])

    def client(self):
        """A client whose every request has a timeout (kagglesdk sets none: a stalled server
        would hold a worker forever)."""
        from kagglesdk import KaggleClient
        from kagglesdk.kaggle_env import KaggleEnv

        client = KaggleClient(env=KaggleEnv[self.environment], username=self.credentials.username,
                              password=self.credentials.key, api_token=self.credentials.token)
        http = client.http_client()
        http._init_session()  # noqa: SLF001 - the session exists only after this, to mount on
        adapter = _TimeoutAdapter(self.policy.timeout_seconds)
        for scheme in ("http://", "https://"):
            http._session.mount(scheme, adapter)  # noqa: SLF001
        return client

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()`, again after a backoff while it fails in a way worth retrying.

        On giving up, the last error is raised with `.attempts` set.
        """
        for attempt in range(1, self.policy.retries + 2):
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless transient
                if not is_transient(exc) or attempt > self.policy.retries:
                    exc.attempts = attempt
                    raise
                delay = _retry_after(exc)
                if delay is None:
                    delay = self.policy.backoff(attempt) * random.uniform(0.5, 1.0)
                delay = min(delay, self.policy.max_backoff_seconds)
                log.debug("%s; retry %d in %.1f s", describe(exc), attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def explain(self, exc: Exception, what: str) -> str:
        """A one-line UserError message for a failed call of the driver's checks."""
        status = _status(exc)
        attempts = getattr(exc, "attempts", 1)
        if status == 401:
            return (f"Kaggle refused the credentials from {self.credentials.origin} (HTTP 401): "
                    f"check the username and key, or create a new API token on kaggle.com")
        if status == 403:
            return (f"Kaggle denied access to {self.dataset.id} (HTTP 403): a private dataset, or "
                    f"credentials without the right to read it")
        if status == 404:
            return f"Kaggle has no dataset {self.dataset.uri} (HTTP 404): check kaggle:<owner>/<dataset>"
        if isinstance(exc, requests.Timeout):
            return f"Kaggle at {self.endpoint} did not answer {what} within {self.policy.timeout_seconds:g} s"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot reach Kaggle at {self.endpoint} ({describe(exc)}): no network, or a proxy in the way?"
        return f"Kaggle at {self.endpoint} failed {what}: {describe(exc)} after {attempts} attempt(s)"

    def _request(self, request_type):
        """A request of `request_type` for the pinned dataset version."""
        request = request_type()
        request.owner_slug, request.dataset_slug = self.dataset.owner, self.dataset.slug
        request.dataset_version_number = self.dataset.version
        return request

    def list_files(self) -> list[RemoteFile]:
        """Every file of the pinned version, page by page."""
        from kagglesdk.datasets.types.dataset_api_service import ApiListDatasetFilesRequest

        files, token, seen = [], "", set()
        with self.client() as client:
            while True:
                request = self._request(ApiListDatasetFilesRequest)
                request.page_token, request.page_size = token, self.policy.page_size
                try:
                    response = self.retrying(lambda: client.datasets.dataset_api_client.list_dataset_files(request))
                except Exception as exc:  # noqa: BLE001 - becomes one line for the user
                    raise UserError(self.explain(exc, "the file listing")) from None
                if response.error_message:
                    raise UserError(f"Kaggle could not list {self.dataset.uri}: {response.error_message}")
                files += [RemoteFile(f.name, f.total_bytes or 0) for f in response.dataset_files]
                token = response.next_page_token
                if token and not response.dataset_files:
                    # Seen on Kaggle (kaggle-cli#836): an empty page that still points further.
                    log.warning("Kaggle's listing of %s ended with an empty page after %d files",
                                self.dataset.uri, len(files))
                    return files
                if not token:
                    return files
                if token in seen:
                    raise UserError(f"Kaggle's listing of {self.dataset.uri} repeats page token {token!r}")
                seen.add(token)
                if len(seen) % 20 == 0:
                    log.info("listed %d files of %s so far", len(files), self.dataset.uri)

    def fetch(self, client, file: RemoteFile) -> bytes:
        """One file's bytes, checked against the listed size; DownloadFailed when it cannot be had."""
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        request = self._request(ApiDownloadDatasetRequest)
        request.file_name = file.name

        def attempt() -> bytes:
            response = client.datasets.dataset_api_client.download_dataset(request)
            with response:
                data = _file_payload(response, file.name)
            if file.size and len(data) != file.size:
                raise IncompleteDownload(f"got {len(data)} of {file.size} bytes")
            return data

        try:
            return self.retrying(attempt)
        except Exception as exc:  # noqa: BLE001 - this file's reject, with what happened
            attempts = getattr(exc, "attempts", 1)
            raise DownloadFailed(f"{describe(exc)}" + (f" after {attempts} attempts" if attempts > 1 else "")) from None

    def download_archive(self, target: storage.Location) -> int:
        """The whole version as one zip, streamed into `target`; its size in bytes."""
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        request = self._request(ApiDownloadDatasetRequest)

        def attempt() -> int:
            with self.client() as client:
                response = client.datasets.dataset_api_client.download_dataset(request)
                with response:
                    if "json" in response.headers.get("Content-Type", ""):
                        raise DownloadFailed("Kaggle answered with JSON instead of the archive")
                    expected = int(response.headers.get("Content-Length") or 0)
                    chunks = _logged(response.iter_content(chunk_size=1 << 20), expected, self.dataset.uri)
                    written = storage.write_stream_atomically(target, chunks)
            if expected and written != expected:
                raise IncompleteDownload(f"got {written} of {expected} bytes")
            return written

        try:
            return self.retrying(attempt)
        except (requests.RequestException, DownloadFailed, IncompleteDownload) as exc:
            raise UserError(self.explain(exc, f"the archive download of {self.dataset.uri}")) from None
        except OSError as exc:  # writing the raw cache (requests' errors are OSErrors too: caught above)
            raise storage.storage_error(exc, target.uri) from None


def open_dataset(source: str, policy: DownloadConfig) -> Remote:
    """Check credentials, network and dataset, and pin the version: all before any worker starts."""
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    ref = DatasetRef.parse(source)
    remote = Remote(dataset=ref, credentials=find_credentials(), environment=environment(), policy=policy)
    request = ApiGetDatasetRequest()
    request.owner_slug, request.dataset_slug = ref.owner, ref.slug
    with remote.client() as client:
        try:
            dataset = remote.retrying(lambda: client.datasets.dataset_api_client.get_dataset(request))
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise UserError(remote.explain(exc, "the dataset lookup")) from None
    version = ref.version or dataset.current_version_number
    if not version:
        raise UserError(f"Kaggle dataset {ref.id} has no published version")
    return dataclasses.replace(remote, dataset=dataclasses.replace(ref, version=version))


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                        IncompleteDownload)):
        return True
    status = _status(exc)
    return status is not None and (status == 429 or status >= 500)


def describe(exc: BaseException) -> str:
    """What went wrong, in a few words: a status, a timeout, a refused connection."""
    status = _status(exc)
    if status is not None:
        reason = getattr(exc.response, "reason", "") or ""
        return f"HTTP {status}" + (f" {reason}" if reason else "")
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        return f"connection failed: {errno.group(0)}" if errno else "connection failed"
    return one_line(exc) if not isinstance(exc, (DownloadFailed, IncompleteDownload)) else str(exc)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None) if isinstance(exc, requests.HTTPError) else None
    return response.status_code if response is not None else None


def _retry_after(exc: BaseException) -> float | None:
    """A 429's Retry-After in seconds, when the server sent a number."""
    if _status(exc) != 429:
        return None
    try:
        return max(0.0, float(exc.response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _file_payload(response: requests.Response, name: str) -> bytes:
    """The requested file's bytes from a download response.

    A JSON body is the server talking, not the file (and would otherwise be saved as the
    image). Kaggle serves some files compressed, as `<name>.zip` holding the one file,
    as the `kaggle` command knows; those are unpacked.
    """
    if "json" in response.headers.get("Content-Type", ""):
        raise DownloadFailed(f"Kaggle answered with JSON instead of {name}")
    data = response.content
    served_as = response.url.split("?")[0].rsplit("/", 1)[-1]
    if served_as == name.rsplit("/", 1)[-1] + ".zip":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise DownloadFailed(f"{served_as} holds {len(members)} files, expected 1")
                return archive.read(members[0])
        except zipfile.BadZipFile:
            raise IncompleteDownload(f"{served_as} is not a complete zip") from None
    return data


def _logged(chunks: Iterator[bytes], expected: int, what: str) -> Iterator[bytes]:
    """Pass the chunks through, logging progress every PROGRESS_SECONDS."""
    start = last = time.monotonic()
    done = 0
    for chunk in chunks:
        done += len(chunk)
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            share = f" of {expected / 1e6:.0f} MB ({done / expected:.0%})" if expected else ""
            log.info("downloading %s: %.0f MB%s, %.1f MB/s", what, done / 1e6, share, done / 1e6 / (now - start))
        yield chunk
