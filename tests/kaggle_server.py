"""A local stand-in for the Kaggle API, for the real `kaggle` client (kagglesdk) to talk to.

It answers what the client sends to look up, list and download a dataset: JSON POSTs with
HTTP basic auth to /api/v1/datasets.DatasetApiService/{GetDataset,ListDatasetFiles,
DownloadDataset}, listings in pages of at most `page_cap` files, and downloads as Kaggle
does, with a redirect to the bytes. Faults are scripted per file. `KAGGLE_API_ENVIRONMENT=TEST`
points the client at http://localhost:7777, so this listens there.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import numpy as np

from tests.trees import kaggle_sheet, png_bytes, synthetic_png

PORT = 7777  # where kagglesdk's TEST environment goes; not configurable in the client
API = "/api/v1/datasets.DatasetApiService/"
WRAPPER = "COVID-19_Radiography_Dataset"
CLASS_SIZES = {"COVID": 8, "Normal": 10, "Lung_Opacity": 4, "Viral Pneumonia": 3}
# Where each class's images come from, by their metadata sheets' URLs (image i: the i-th modulo).
SHEET_URLS = {"COVID": ("https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/", "https://sirm.org/covid-19/"),
              "Normal": ("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
                         "https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia")}
SHEET_SOURCES = {"COVID": ("bimcv", "sirm"), "Normal": ("rsna", "pediatric-pneumonia")}


def kaggle_layout(sizes: dict[str, int] = CLASS_SIZES, side: int = 64) -> dict[str, bytes]:
    """The COVID-19 Radiography Database's layout in miniature: images, masks, metadata files."""
    files = {f"{WRAPPER}/README.md.txt": b"COVID-19 Radiography Database (synthetic stand-in)\n"}
    for c, (class_name, count) in enumerate(sizes.items()):
        # Real sheets for the paper's two classes; the others' are broken, as a download can be.
        files[f"{WRAPPER}/{class_name}.metadata.xlsx"] = (
            kaggle_sheet(class_name, count, lambda i, urls=SHEET_URLS[class_name]: urls[i % 2])
            if class_name in SHEET_URLS else b"PK\x03\x04 not really a spreadsheet")
        for i in range(count):
            name = f"{class_name}-{i + 1}.png"
            # Distinct indices per class: the renderer draws every non-COVID class alike.
            files[f"{WRAPPER}/{class_name}/images/{name}"] = synthetic_png(
                "COVID" if class_name == "COVID" else "Normal", 100 * c + i, side)
            files[f"{WRAPPER}/{class_name}/masks/{name}"] = png_bytes(np.zeros((side, side), np.uint8))
    return files


def image_name(class_name: str, index: int) -> str:
    return f"{WRAPPER}/{class_name}/images/{class_name}-{index}.png"


@dataclass
class FakeKaggle:
    """The dataset `owner/slug` at `version`, served to `username`/`key`.

    `script[name]` lists what the next downloads of that file get before the file itself:
    an HTTP status (429 comes with Retry-After: 1), "stall" (no answer for `stall_seconds`)
    or "json" (a 200 whose body is `{}`, not the file). `broken` files answer 500 forever;
    `wrapped` ones are served as `<name>.zip`, as Kaggle serves some files.
    """

    files: dict[str, bytes] = field(default_factory=kaggle_layout)
    owner: str = "tawsifurrahman"
    slug: str = "covid19-radiography-database"
    version: int = 5
    username: str = "cxr-tester"
    key: str = "kaggle-key-3b1f9a7c5e"
    page_cap: int = 7
    script: dict[str, list] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    wrapped: set[str] = field(default_factory=set)
    stall_seconds: float = 3.0
    delay_seconds: float = 0.0  # before every file download: to interrupt a job midway
    # [endpoint, fileName or None, status (None until answered)] of every API call, in order.
    calls: list[list] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- what the tests look at -------------------------------------------------------
    def downloads(self) -> Counter:
        """Successful downloads (redirects to the bytes) per file; None for the archive."""
        with self._lock:
            return Counter(name for endpoint, name, status in self.calls
                           if endpoint == "DownloadDataset" and status == 302)

    def count(self, endpoint: str) -> int:
        with self._lock:
            return sum(1 for e, _, _ in self.calls if e == endpoint)

    def archive(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in self.files.items():
                archive.writestr(name, data)
        return buffer.getvalue()

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> FakeKaggle:
        self._server = ThreadingHTTPServer(("127.0.0.1", PORT), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- the API ----------------------------------------------------------------------
    def answer(self, endpoint: str, body: dict, authorization: str | None) -> tuple[int, dict, bytes]:
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        if authorization != expected:
            return _json(401, {"code": 401, "message": "Unauthenticated"})
        if (body.get("ownerSlug"), body.get("datasetSlug")) != (self.owner, self.slug):
            return _json(404, {"code": 404, "message": "Not found"})
        if body.get("datasetVersionNumber") not in (None, self.version):
            return _json(404, {"code": 404, "message": "Version not found"})
        if endpoint == "GetDataset":
            return _json(200, {"ref": f"{self.owner}/{self.slug}", "title": "COVID-19 Radiography Database",
                               "currentVersionNumber": self.version,
                               "totalBytes": sum(len(d) for d in self.files.values())})
        if endpoint == "ListDatasetFiles":
            names = sorted(self.files)
            start = int(body.get("pageToken") or 0)
            end = start + min(int(body.get("pageSize") or 20), self.page_cap)
            page = [{"name": n, "totalBytes": len(self.files[n])} for n in names[start:end]]
            return _json(200, {"datasetFiles": page, "nextPageToken": str(end) if end < len(names) else ""})
        if endpoint == "DownloadDataset":
            name = body.get("fileName")
            if name is None:
                return 302, {"Location": f"/blobs/archive/{self.slug}.zip"}, b""
            if name not in self.files:
                return _json(404, {"code": 404, "message": "File not found"})
            if name in self.broken:
                return _json(500, {"code": 500, "message": "Internal error"})
            with self._lock:
                fault = self.script[name].pop(0) if self.script.get(name) else None
            if fault == "stall":
                time.sleep(self.stall_seconds)
            elif fault == "json":
                return _json(200, {})
            elif fault is not None:
                return _json(fault, {"code": fault, "message": "scripted"},
                             {"Retry-After": "1"} if fault == 429 else {})
            time.sleep(self.delay_seconds)
            suffix = ".zip" if name in self.wrapped else ""
            return 302, {"Location": "/blobs/files/" + quote(name) + suffix}, b""
        return _json(404, {"code": 404, "message": f"no method {endpoint}"})

    def blob(self, path: str) -> bytes | None:
        if path == f"/blobs/archive/{self.slug}.zip":
            return self.archive()
        name = unquote(path.removeprefix("/blobs/files/"))
        if name.endswith(".zip") and name[:-4] in self.wrapped:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr(name[:-4].rsplit("/", 1)[-1], self.files[name[:-4]])
            return buffer.getvalue()
        return self.files.get(name)


def _json(status: int, payload: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def _handler(kaggle: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            endpoint = self.path.removeprefix(API) if self.path.startswith(API) else self.path
            call = [endpoint, body.get("fileName"), None]  # recorded on arrival: a stalled call counts
            with kaggle._lock:  # noqa: SLF001 - the server's own record
                kaggle.calls.append(call)
            status, headers, payload = kaggle.answer(endpoint, body, self.headers.get("Authorization"))
            call[2] = status
            self._send(status, headers, payload)

        def do_GET(self) -> None:  # noqa: N802
            data = kaggle.blob(self.path)
            if data is None:
                self._send(*_json(404, {"code": 404, "message": "no such blob"}))
            else:
                self._send(200, {"Content-Type": "application/octet-stream"}, data)

        def _send(self, status: int, headers: dict, payload: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def log_message(self, *args) -> None:  # quiet: the tests read `calls`
            pass

    return Handler
