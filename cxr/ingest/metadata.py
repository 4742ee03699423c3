"""Where each image came from, and what else the user knows about it: metadata to listed images.

Two kinds of metadata reach a listing (cxr.ingest.sources):

- the Kaggle archive's `<class>.metadata.xlsx` sheets (columns `FILE NAME`, `FORMAT`,
  `SIZE`, `URL`), whose URL names the public collection an image was taken from; the URL
  becomes a short source name (`source_from_url`);
- a user's `--metadata` CSV: a `path` (relative to --source) or `file_name` column, a
  `source` column, and any other columns (patient id, age, view...), which become text
  columns of the shards. It wins over a sheet where both name a source.

Nothing is silent: rows that match no image and images that no row names are counted and
recorded in the manifest. Values never reach a log line or an error message, only the
shards, because they may be patient data; errors name rows by number and columns by name.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlparse

from cxr import storage
from cxr.artifacts import SHARD_SCHEMA
from cxr.errors import UserError
from cxr.ingest.xlsx import SpreadsheetError, read_first_sheet

SHEET_SUFFIX = ".metadata.xlsx"
# Listing items carry the user's columns under this prefix, beside their own fields.
EXTRA_PREFIX = "meta:"

# The collections the COVID-19 Radiography Database was assembled from (its README.md.txt),
# by a piece of the URL its sheets give, to short names a person can type in --test-sources.
# An unknown URL becomes its host (and, on a hosting site, its owner/name): still one name
# per collection, just a less readable one.
KNOWN_SOURCES = (
    ("bimcv", "bimcv"),  # BIMCV-COVID19+ / PadChest, Valencia
    ("padchest", "bimcv"),
    ("ml-workgroup/covid-19-image-repository", "hannover"),  # Hannover Medical School
    ("sirm.org", "sirm"),  # Italian Society of Medical and Interventional Radiology
    ("ieee8023/covid-chestxray-dataset", "cohen"),  # J. P. Cohen's COVID-19 image data collection
    ("eurorad", "eurorad"),
    ("armiro/covid-cxnet", "covid-cxnet"),
    ("agchung", "figure1-actualmed"),  # the Figure 1 and Actualmed COVID-19 collections
    ("rsna-pneumonia-detection-challenge", "rsna"),  # RSNA pneumonia challenge (NIH ChestX-ray8)
    ("chest-xray-pneumonia", "pediatric-pneumonia"),  # Kermany et al., Guangzhou, children
    ("twitter.com", "twitter"),
    ("radiopaedia", "radiopaedia"),
)
_HOSTING = ("github.com", "kaggle.com", "gitlab.com")


def source_from_url(url: str) -> str | None:
    """A short name of the collection behind `url`; None for an empty cell."""
    text = url.strip().lower()
    if not text:
        return None
    for piece, name in KNOWN_SOURCES:
        if piece in text:
            return name
    parsed = urlparse(text if "//" in text else f"//{text}")
    host = (parsed.hostname or text).removeprefix("www.")
    parts = [p for p in parsed.path.split("/") if p]
    if host in _HOSTING and parts:
        parts = parts[1:3] if parts[0] in ("c", "datasets") else parts[:2]
        host = f"{host.split('.')[0]}-{'-'.join(parts)}"
    # Commas separate --test-sources; spaces make names awkward to type.
    return re.sub(r"[^a-z0-9._-]+", "-", host).strip("-") or None


def sheet_class(name: str) -> str | None:
    """`COVID` for `COVID.metadata.xlsx`; None for a file that is not a metadata sheet."""
    return name[: -len(SHEET_SUFFIX)] if name.lower().endswith(SHEET_SUFFIX) and len(name) > len(SHEET_SUFFIX) else None


def _key(name: str) -> str:
    """How a sheet's FILE NAME meets a file: without extension, case-insensitive (the archive
    lists `NORMAL-1` for `Normal-1.png`)."""
    stem = name.strip().rsplit("/", 1)[-1]
    root, extension = posixpath.splitext(stem)
    return (root if extension.lower() in (".png", ".jpg", ".jpeg") else stem).lower()


def sheet_sources(data: bytes) -> dict[str, str | None]:
    """{file key: source} of one metadata sheet; SpreadsheetError (one line) when unreadable."""
    rows = read_first_sheet(data)
    if not rows:
        raise SpreadsheetError("the sheet is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    columns = {}
    for wanted in ("file name", "url"):
        if wanted not in header:
            raise SpreadsheetError(f"no {wanted.upper()!r} column (found: {', '.join(c for c in header if c)})")
        columns[wanted] = header.index(wanted)
    sources = {}
    for row in rows[1:]:
        cells = row + [""] * (len(header) - len(row))
        name = cells[columns["file name"]].strip()
        if name:
            sources[_key(name)] = source_from_url(cells[columns["url"]])
    return sources


def apply_sheet(items: list[dict], class_name: str, sources: dict[str, str | None]) -> dict:
    """Give the images of `class_name` their sheet's source; the sheet's record for the manifest."""
    with_source, without_row, seen = Counter(), 0, set()
    for item in (i for i in items if i["class_name"] == class_name):
        key = _key(item["source_uri"])
        if key not in sources:
            without_row += 1
            continue
        seen.add(key)
        if sources[key] is not None:
            item["source"] = sources[key]
            with_source[sources[key]] += 1
    return {"rows": len(sources), "rows_without_image": len(sources) - len(seen),
            "images_without_row": without_row, "images_per_source": dict(sorted(with_source.items()))}


# ---------------------------------------------------------------- --metadata CSV

PATH_COLUMNS = ("path", "relative_path")
FILE_NAME_COLUMNS = ("file_name", "filename", "file name", "file")
SOURCE_COLUMN = "source"
# Enough for a very large database's sheet; beyond it a file is not a metadata table.
MAX_CSV_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class MetadataTable:
    """A --metadata CSV, checked: each row's key (a path or a file name), source and extra values."""

    uri: str
    key_column: str  # "path" or "file_name": how rows meet images
    extra_columns: tuple[str, ...]
    rows: tuple[tuple[int, str, str | None, tuple[str | None, ...]], ...]  # (line, key, source, extras)


def read_metadata_csv(uri: str) -> MetadataTable:
    """Read and check a --metadata CSV (local or s3://); any problem is a one-line UserError."""
    location = storage.resolve(uri)
    storage.check_bucket(location)
    if not storage.is_file(location):
        raise UserError(f"--metadata {location.uri}: no such file")
    if storage.file_info(location).size > MAX_CSV_BYTES:
        raise UserError(f"--metadata {location.uri}: larger than {MAX_CSV_BYTES // 2**20} MiB, not a metadata table")
    try:
        text = storage.read_bytes(location).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"--metadata {location.uri}: not UTF-8 text") from None
    return parse_metadata_csv(text, location.uri)


def parse_metadata_csv(text: str, uri: str) -> MetadataTable:
    where = f"--metadata {uri}"
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise UserError(f"{where}: not a readable CSV ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise UserError(f"{where}: the file is empty")
    header = [cell.strip() for cell in rows[0]]
    lowered = [name.lower() for name in header]
    # The first line is named only by its shape: without a header it would be a patient's row.
    if any(not name for name in header) or len(set(lowered)) != len(lowered):
        raise UserError(f"{where}: the first line must be a header of distinct, non-empty column names")
    key_at = next((lowered.index(c) for c in PATH_COLUMNS + FILE_NAME_COLUMNS if c in lowered), None)
    if key_at is None:
        raise UserError(f"{where}: the header names no column of image paths (path) or file names (file_name)")
    key_column = "path" if lowered[key_at] in PATH_COLUMNS else "file_name"
    source_at = lowered.index(SOURCE_COLUMN) if SOURCE_COLUMN in lowered else None
    extras = [i for i in range(len(header)) if i not in (key_at, source_at)]
    taken = [header[i] for i in extras if header[i] in SHARD_SCHEMA.names or header[i].startswith(EXTRA_PREFIX)]
    if taken:
        raise UserError(f"{where}: column(s) {', '.join(taken)} would replace the shards' own; rename them")
    if source_at is None and not extras:
        raise UserError(f"{where}: no source column and no other metadata: nothing to add")
    table_rows, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserError(f"{where}: row {line} has {len(row)} fields, the header {len(header)}")
        key = _normalised_path(row[key_at]) if key_column == "path" else row[key_at].strip()
        if not key:
            raise UserError(f"{where}: row {line} has an empty {header[key_at]}")
        if key in seen:
            raise UserError(f"{where}: rows {seen[key]} and {line} name the same image")
        seen[key] = line
        source = row[source_at].strip() if source_at is not None else ""
        if "," in source:
            raise UserError(f"{where}: row {line}: a source name may not hold a comma (--test-sources separates "
                            "names with commas)")
        table_rows.append((line, key, source or None, tuple(row[i].strip() or None for i in extras)))
    return MetadataTable(uri=uri, key_column=key_column, extra_columns=tuple(header[i] for i in extras),
                         rows=tuple(table_rows))


def _normalised_path(text: str) -> str:
    path = posixpath.normpath(text.strip().replace("\\", "/")).lstrip("/")
    return "" if path == "." else path


def attach_csv(items: list[dict], table: MetadataTable) -> dict:
    """Give listed images their row's source and extra columns; the CSV's record for the manifest.

    An item's `path` is its path relative to the source, with and without a wrapping
    folder (`wrapped_path`); rows meet images by that, or by file name. A file name that
    names several images is a UserError: which one was meant cannot be known.
    """
    by_key: dict[str, list[dict]] = {}
    for item in items:
        keys = ({item.get("path"), item.get("wrapped_path")} if table.key_column == "path"
                else {posixpath.basename(item.get("path") or item["source_uri"])})
        for key in keys - {None}:
            by_key.setdefault(key, []).append(item)
    for item in items:
        for name in table.extra_columns:
            item[EXTRA_PREFIX + name] = None
    matched_items, unmatched_rows = set(), 0
    for line, key, source, extras in table.rows:
        found = by_key.get(key, [])
        if not found:
            unmatched_rows += 1
            continue
        if len(found) > 1:
            raise UserError(f"--metadata {table.uri}: row {line}'s file name names {len(found)} images "
                            "(in several folders); use a path column")
        item = found[0]
        if source is not None:
            item["source"] = source
        for name, value in zip(table.extra_columns, extras):
            item[EXTRA_PREFIX + name] = value
        matched_items.add(id(item))
    return {"uri": table.uri, "key": table.key_column, "columns": list(table.extra_columns),
            "rows": len(table.rows), "rows_without_image": unmatched_rows,
            "images_without_row": len(items) - len(matched_items)}
