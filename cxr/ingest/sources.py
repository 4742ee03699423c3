"""Where images come from: find every input of a source, then read each one's bytes.

A source is a class-per-folder tree (`<class>/*.png` or the Kaggle archive's
`<class>/images/*.png`, with `masks/` beside `images/`; PNG, JPEG or DICOM files) in a local folder or under an
`s3://` prefix, a `.zip` of such a tree (local or on S3), or `synthetic`; a Kaggle dataset
(cxr.ingest.downloads) is listed with the same rules. Listing runs on the driver and is cheap; it
returns one row per input found, each either readable or already rejected (unsupported
file, wrong layout, a link that loops or dangles, a path that climbs out of its root, a
file too large for --max-pixels), so that nothing is silently lost. Each row carries its `source` (the
collection or hospital) when one is known: from the archive's metadata sheets beside the
class folders, a --metadata CSV (cxr.ingest.metadata), or the synthetic site. Reading runs
in Ray workers, a batch at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cxr import storage
from cxr.config import PreprocessConfig, SyntheticConfig
from cxr.errors import DownloadFailed, UserError, one_line
from cxr.ingest import metadata, synthetic
from cxr.ingest.xlsx import SpreadsheetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DICOM_EXTENSIONS = (".dcm", ".dicom")
# What a listing says it reads, in its rejects and errors.
SUPPORTED = "PNG/JPEG/DICOM"
# The Kaggle archive keeps lung masks beside the images; they are not inputs.
IGNORED_FOLDERS = ("masks",)
IMAGE_FOLDER = "images"
# The largest file an image of --max-pixels pixels can sensibly be, checked from the
# listing's size (a zip member's header) before a byte is read. A radiograph is gray: 16-bit
# gray is 2 bytes a pixel, and 4 covers gray with alpha or 8-bit RGBA stored without any
# compression. A 16-bit colour PNG that large would pass the pixel limit yet be refused here:
# no chest X-ray is one, while a 300 MB zip member read whole before its rejection held a job
# for a minute (issue 28). Plus room for what is not pixels (a DICOM header's private
# elements and overlays, a PNG's or JPEG's ICC profile and EXIF thumbnail). At the default
# --max-pixels (50 million) the bound is 216 MiB.
MAX_BYTES_PER_PIXEL = 4
NON_PIXEL_BYTES = 16 * 2**20
DEFAULT_MAX_PIXELS = PreprocessConfig.max_pixels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """Every input of a source. `items` are rows for the pipeline; `rejects` failed listing."""

    kind: str
    root: str
    class_names: tuple[str, ...]
    items: list[dict]
    rejects: list[dict]
    ignored: dict[str, int] = field(default_factory=dict)
    # A remote source's files are fetched by a stage of their own first (cxr.ingest.downloads):
    # this is what that stage needs (a kaggle_api.Remote), and `origin` what the manifest
    # records about where they came from.
    remote: object | None = None
    origin: dict = field(default_factory=dict)
    # Where the items' sources and extra columns came from (cxr.ingest.metadata), for the manifest.
    metadata: dict = field(default_factory=dict)
    # The user's metadata columns every item carries (under metadata.EXTRA_PREFIX).
    extra_columns: tuple[str, ...] = ()
    # Several --source NAME=...: which one each input (by source_uri) was listed from.
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def found(self) -> int:
        return len(self.items) + len(self.rejects)


@dataclass(frozen=True)
class Found:
    """What a listing saw below its root, with paths relative to it, before any rule is applied."""

    files: dict[str, int | None]  # path: size in bytes (None: unknown), in listing order
    folders: tuple[str, ...] = ()  # empty ones too: a class folder can hold no file
    # (path, reason, detail): entries that are not files to read, each a reject (storage.Entries).
    problems: tuple[tuple[str, str, str], ...] = ()


def max_input_bytes(max_pixels: int) -> int:
    """The size above which a file cannot be an image of at most `max_pixels` pixels."""
    return max_pixels * MAX_BYTES_PER_PIXEL + NON_PIXEL_BYTES


def is_safe_path(path: str) -> bool:
    """Whether a listed path stays below its root: relative, with no empty, `.` or `..` part.

    A zip member or an S3 key may be named `../../x.png`, `/tmp/x.png` or `COVID//x.png`;
    such a name is never an input, and never a class folder.
    """
    return bool(path) and not path.startswith("/") and all(part not in ("", ".", "..") for part in path.split("/"))


def item_row(source_uri: str, class_name: str, label: int, kind: str, location: str,
             member: str = "", synthetic_index: int = -1, source: str | None = None, path: str = "",
             wrapped_path: str = "", synthetic_source: int = -1) -> dict:
    """One listed input. `path` is relative to the source's root (`wrapped_path` with a
    wrapping folder), for --metadata's rows to meet; `source` its collection, when known."""
    return {"source_uri": source_uri, "class_name": class_name, "label": label, "kind": kind,
            "location": location, "member": member, "synthetic_index": synthetic_index,
            "synthetic_source": synthetic_source, "source": source, "path": path, "wrapped_path": wrapped_path}


def input_format(name: str) -> str | None:
    """What a file named `name` (a path or URI) is read as: "image", "dicom" or None (not an input).

    DICOM files often carry no extension, or are named by their SOP Instance UID
    (`1.2.840....123`): such names are DICOM candidates, and one without the DICM magic is
    rejected when read (cxr.preprocess.dicom), so it is still accounted for.
    """
    base = name.rsplit("/", 1)[-1].lower()
    if not base or base.startswith("."):
        return None
    if base.endswith(IMAGE_EXTENSIONS):
        return "image"
    stem, dot, extension = base.rpartition(".")
    if base.endswith(DICOM_EXTENSIONS) or not dot or (stem and extension.isdigit()):
        return "dicom"
    return None


def reject_row(source_uri: str, class_name: str | None, reason: str, detail: str) -> dict:
    return {"source_uri": source_uri, "class_name": class_name, "reason": reason, "detail": detail}


def with_metadata_csv(listing: Listing, table: metadata.MetadataTable) -> Listing:
    """The listing with a --metadata CSV's sources and columns on its items (copies, not the originals)."""
    items = [dict(item) for item in listing.items]
    record = metadata.attach_csv(items, table)
    return dataclasses.replace(listing, items=items, extra_columns=table.extra_columns,
                               metadata={**listing.metadata, "csv": record})


def named(listing: Listing, name: str | None) -> Listing:
    """The listing of a source named on the command line (`--source NAME=...`): each input's
    source is that name, unless its metadata gave a finer one."""
    if name is None:
        return listing
    items = [{**item, "source": item.get("source") or name} for item in listing.items]
    inputs = {row["source_uri"]: name for row in (*listing.items, *listing.rejects)}
    return dataclasses.replace(listing, items=items, inputs=inputs)


def merged(listings: list[Listing], classes: tuple[str, ...] | None) -> Listing:
    """Several sources' listings as one: the classes `classes` (or every class any source
    has, sorted), each input labelled by its place among them; the metadata and the other
    records by source root."""
    if len(listings) == 1:
        return listings[0]
    found = {name for listing in listings for name in listing.class_names}
    missing = [name for name in classes or () if name not in found]
    if missing:
        raise UserError(f"--classes: no source has a folder for {', '.join(missing)} (found: {', '.join(sorted(found))})")
    class_names = classes or tuple(sorted(found))
    columns = tuple(dict.fromkeys(column for listing in listings for column in listing.extra_columns))
    items, ignored = [], Counter()
    for listing in listings:
        ignored.update(listing.ignored)
        for item in listing.items:
            if item["class_name"] not in class_names:  # listed with every class: see list_inputs
                ignored[f"unselected_class:{item['class_name']}"] += 1
                continue
            items.append({**item, "label": class_names.index(item["class_name"])})
    # Every item with every field any source gives (its metadata columns, a collection's own):
    # the pipeline makes one table of them.
    fields = dict.fromkeys(key for item in items for key in item)
    items = [{**dict.fromkeys(fields), **item} for item in items]
    remote = next((listing for listing in listings if listing.remote is not None), None)
    return Listing(kind="several", root=" + ".join(listing.root for listing in listings), class_names=class_names,
                   items=items, rejects=[reject for listing in listings for reject in listing.rejects],
                   ignored=dict(ignored), remote=remote.remote if remote else None,
                   origin=remote.origin if remote else {},
                   metadata={listing.root: listing.metadata for listing in listings if listing.metadata},
                   extra_columns=columns, inputs={uri: name for listing in listings for uri, name in listing.inputs.items()})


def list_source(config: PreprocessConfig, uri: str | None = None) -> Listing:
    """List the inputs of the source `uri` (a folder, zip or `synthetic`: one of
    config.source's; default: its only one), or fail with a one-line UserError.

    A folder or zip holding a public collection in its own layout (cxr.ingest.collections)
    is read by that collection's adapter, with its metadata; any other by the class folders,
    whose names are the findings --label-map maps."""
    if uri is None:
        [(_, uri)] = config.named_sources
    if uri == "synthetic":
        return list_synthetic(config.synthetic)
    location = storage.resolve(uri)
    storage.check_bucket(location)
    max_bytes = max_input_bytes(config.max_pixels)
    if storage.is_file(location):
        if not location.path.lower().endswith(".zip"):
            raise UserError(f"{location.uri}: a file source must be a .zip archive of a class-per-folder tree")
        found, left_out = _zip_found(location)

        def read_member(member: str) -> bytes:
            with location.fs.open_input_file(location.path) as handle, zipfile.ZipFile(handle) as archive:
                return archive.read(member)

        listing = _list_found(config, "zip", location.uri, found, lambda rel: f"{location.uri}!/{rel}",
                              lambda rel: ("zip", location.uri, rel), read_member, max_bytes)
        listing.ignored.update(left_out)
        return listing
    found = _folder_found(location)
    if not found.files and not found.problems:
        if not storage.exists(location):
            raise UserError(f"{location.uri}: source does not exist")
        raise UserError(f"{location.uri}: source folder is empty")
    return _list_found(config, "folder", location.uri, found, lambda rel: _joined_uri(location, rel),
                       lambda rel: ("file", location.join(rel).uri, ""),
                       lambda rel: storage.read_bytes(location.join(rel)), max_bytes)


def _list_found(config: PreprocessConfig, kind: str, root: str, found: Found, uri_of, read_spec_of, read,
                max_bytes: int) -> Listing:
    """A found tree's listing: a public collection's adapter, or the class folders."""
    # collections builds on this module's Listing and rows: imported here, not at the top.
    from cxr.ingest import collections

    tree = collections.Tree(kind, root, found, read, uri_of, read_spec_of, max_bytes)
    listing = collections.list_collection(tree, config.label_map, config.wanted_classes)
    if listing is not None:
        return listing
    if not config.label_map:
        return list_tree(kind, root, found, config.wanted_classes, uri_of, read_spec_of, read_sheet=read,
                         max_bytes=max_bytes)
    # Every folder is a finding until the label map says which class it is.
    listing = list_tree(kind, root, found, None, uri_of, read_spec_of, read_sheet=read, max_bytes=max_bytes)
    return collections.map_class_folders(listing, config.label_map, config.wanted_classes)


def _joined_uri(location: storage.Location, relative: str) -> str:
    # Not posixpath.join: an S3 key's path may be absolute (`/x.png`), and must still read as
    # below the prefix in the reject that names it.
    return location.uri.rstrip("/") + "/" + relative


def _folder_found(location: storage.Location) -> Found:
    """A local folder's or S3 prefix's entries, relative to it (storage.list_entries)."""
    entries = storage.list_entries(location)
    prefix = location.path.rstrip("/") + "/"
    return Found(files={f.path[len(prefix):]: f.size for f in entries.files},
                 folders=tuple(f[len(prefix):] for f in entries.folders if f.startswith(prefix)),
                 problems=tuple((path[len(prefix):], reason, detail) for path, reason, detail in entries.problems))


def _zip_found(location: storage.Location) -> tuple[Found, dict[str, int]]:
    """A zip archive's members from its central directory (nothing is decompressed), and the
    members left out: macOS metadata, and each but the last of a repeated name (zipfile
    reads only the last member of a name: the earlier ones cannot be had by it)."""
    try:
        with location.fs.open_input_file(location.path) as handle, zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError):  # pyarrow refuses the seek of a file too short to be a zip
        raise UserError(f"{location.uri}: not a valid zip archive") from None
    except OSError as exc:
        raise storage.storage_error(exc, location.uri) from None
    files, folders, left_out = {}, [], Counter()
    for info in infos:
        name = info.filename
        if name.startswith("__MACOSX/"):  # macOS archivers' resource forks: metadata, not inputs
            left_out["macos_metadata"] += not info.is_dir()
        elif info.is_dir():
            folders.append(name.rstrip("/"))
        else:
            left_out["repeated_zip_name"] += name in files
            files[name] = info.file_size  # from the header: what reading it would decompress
    if not files:
        raise UserError(f"{location.uri}: the zip archive holds no files")
    return Found(files=files, folders=tuple(folders)), {what: n for what, n in left_out.items() if n}


def list_zip(location: storage.Location, classes: tuple[str, ...] | None, uri_of=None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Listing:
    """A zip of a class-per-folder tree; `uri_of(member)` names its inputs (default: zip!/member)."""
    found, left_out = _zip_found(location)

    def read_sheet(member: str) -> bytes:
        with location.fs.open_input_file(location.path) as handle, zipfile.ZipFile(handle) as archive:
            return archive.read(member)

    listing = list_tree("zip", location.uri, found, classes, uri_of or (lambda rel: f"{location.uri}!/{rel}"),
                        lambda rel: ("zip", location.uri, rel), read_sheet=read_sheet,
                        max_bytes=max_input_bytes(max_pixels))
    listing.ignored.update(left_out)
    return listing


def list_images(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Listing:
    """Every file under a folder, an s3:// prefix or in a .zip, at any depth, for scoring.

    No classes: items have label -1. Image files are items; anything else is a reject
    (`unsupported_file`; a link that loops or dangles, an unsafe path, a file too large for
    `max_pixels`: see list_tree), so each file found is accounted for. Lung masks are skipped.
    """
    location = storage.resolve(uri)
    storage.check_bucket(location)
    ignored = {}
    if storage.is_file(location):
        if location.path.lower().endswith(".zip"):
            found, ignored = _zip_found(location)
            uri_of, spec_of = (lambda rel: f"{location.uri}!/{rel}"), (lambda rel: ("zip", location.uri, rel))
        else:
            found = Found(files={"": storage.file_info(location).size})
            uri_of, spec_of = (lambda rel: location.uri), (lambda rel: ("file", location.uri, ""))
    else:
        found = _folder_found(location)
        if not found.files and not found.problems:
            raise UserError(f"{location.uri}: " + ("the folder holds no files" if storage.exists(location)
                                                  else "does not exist"))
        uri_of = lambda rel: _joined_uri(location, rel)  # noqa: E731
        spec_of = lambda rel: ("file", location.join(rel).uri, "")  # noqa: E731
    items, rejects, masks = [], [], 0
    max_bytes = max_input_bytes(max_pixels)
    rejects += [reject_row(uri_of(path), None, reason, detail) for path, reason, detail in found.problems]
    for relative, size in found.files.items():
        source_uri = uri_of(relative)
        if relative and not is_safe_path(relative):
            rejects.append(_unsafe_reject(source_uri))
        elif any(part in IGNORED_FOLDERS for part in relative.split("/")[:-1]):
            masks += 1
        elif not input_format(source_uri):
            rejects.append(reject_row(source_uri, None, "unsupported_file", f"not a {SUPPORTED} file"))
        elif size is not None and size > max_bytes:
            rejects.append(_too_large_reject(source_uri, None, size, max_bytes))
        else:
            kind, where, member = spec_of(relative)
            items.append(item_row(source_uri, None, -1, kind, where, member))
    if masks:
        ignored["masks"] = masks
    if not items:
        raise UserError(f"{location.uri}: no {SUPPORTED} images found")
    return Listing(kind="images", root=location.uri, class_names=(), items=items, rejects=rejects, ignored=ignored)


def _unsafe_reject(source_uri: str) -> dict:
    return reject_row(source_uri, None, "unsafe_path",
                      "an absolute path, or one with an empty, '.' or '..' part: it would leave its root")


def _too_large_reject(source_uri: str, class_name: str | None, size: int, max_bytes: int) -> dict:
    return reject_row(source_uri, class_name, "too_large",
                      f"{size} bytes, more than any image within --max-pixels can take ({max_bytes}); not read")


def _strip_wrappers(paths: list[str]) -> tuple[str, list[str]]:
    """Descend through single wrapping folders, as archives often have (`Dataset/<class>/...`)."""
    wrapper = ""
    while True:
        tops = {p.split("/", 1)[0] for p in paths}
        if len(tops) != 1 or any("/" not in p for p in paths):
            return wrapper, paths
        top = tops.pop()
        inner = [p.split("/", 1)[1] for p in paths]
        subfolders = {p.split("/", 1)[0] for p in inner if "/" in p}
        # A lone class folder holds images/ and masks/, not classes: stop there.
        if not subfolders or subfolders <= {IMAGE_FOLDER, *IGNORED_FOLDERS}:
            return wrapper, paths
        wrapper, paths = wrapper + top + "/", inner


def list_tree(kind: str, root: str, found: Found, classes: tuple[str, ...] | None,
              uri_of, read_spec_of, read_sheet=None, max_bytes: int | None = None) -> Listing:
    """The inputs of a class-per-folder tree, from what a listing `found` below `root`.

    `uri_of(path)` is an input's source_uri; `read_spec_of(path)` its (kind, location,
    member) for BatchReader or the fetch stage. `read_sheet(path)` reads a metadata sheet
    beside the class folders (`<class>.metadata.xlsx`), whose sources the class's images
    then carry; without it, or when it fails, the sheet is a reject. A file larger than
    `max_bytes` is a reject before it is read.

    Only safe paths (is_safe_path) take part in finding the wrapping folders and the
    classes; the others are rejects. A class folder with no image (`_class_images`) is an
    error when `classes` names it; found by the listing, it is left out with a warning.
    """
    safe = [p for p in found.files if is_safe_path(p)]
    wrapper, stripped = _strip_wrappers(safe)
    inside = [f[len(wrapper):] for f in found.folders if f.startswith(wrapper) and is_safe_path(f)]
    found_classes = sorted({p.split("/", 1)[0] for p in stripped if "/" in p}
                           | {f.split("/", 1)[0] for f in inside if f})
    if not found_classes:
        raise UserError(f"{root}: no class subfolders (expected <class>/*.png or <class>/images/*.png)")
    with_images = _class_images(stripped)
    empty = [c for c in found_classes if c not in with_images]
    if classes is None:
        class_names = tuple(c for c in found_classes if c in with_images)
        for name in empty:
            log.warning("%s: class folder %s holds no %s image; it is left out of the classes", root, name, SUPPORTED)
        if len(class_names) < 2:
            without = f" ({', '.join(empty)}: no {SUPPORTED} image)" if empty else ""
            raise UserError(f"{root}: found {len(class_names)} class folder(s) with images "
                            f"({', '.join(class_names) or 'none'}){without}; at least two are needed")
    else:
        missing = [c for c in classes if c not in found_classes]
        if missing:
            raise UserError(f"{root}: no folder for class(es) {', '.join(missing)} "
                            f"(found: {', '.join(found_classes)})")
        named_empty = [c for c in classes if c in empty]
        if named_empty:
            raise UserError(f"{root}: class folder {', '.join(named_empty)} "
                            f"hold{'s' if len(named_empty) == 1 else ''} no {SUPPORTED} image")
        class_names = classes
    label_of = {name: i for i, name in enumerate(class_names)}
    left_out = set(empty) if classes is None else set()
    items, rejects, ignored, sheets = [], [], Counter(), {}
    rejects += [_unsafe_reject(uri_of(p)) for p in found.files if not is_safe_path(p)]
    for original, reason, detail in found.problems:
        class_name = _class_of(original, wrapper)
        if class_name in found_classes and class_name not in label_of and class_name not in left_out:
            ignored[f"unselected_class:{class_name}"] += 1
        else:
            rejects.append(reject_row(uri_of(original), class_name if class_name in label_of else None, reason,
                                      detail))
    for original, rel in zip(safe, stripped):
        parts = rel.split("/")
        uri = uri_of(original)
        sheet_of = metadata.sheet_class(parts[0]) if len(parts) == 1 else None
        if sheet_of is not None and read_sheet is not None:
            # Case aside: the archive's older versions name a sheet NORMAL for the folder Normal.
            sheet_of = next((c for c in found_classes if c.lower() == sheet_of.lower()), sheet_of)
            if sheet_of in label_of:
                sheets[sheet_of] = (original, uri)
            elif sheet_of in found_classes:
                ignored[f"unselected_class:{sheet_of}"] += 1
            else:
                rejects.append(reject_row(uri, None, "wrong_layout", "a metadata sheet of no class folder"))
            continue
        class_name = parts[0] if len(parts) > 1 else None
        if class_name in left_out:
            class_name = None  # what a folder without images holds is rejected below, in no class
        elif class_name is not None and class_name not in label_of:
            ignored[f"unselected_class:{class_name}"] += 1
            continue
        if len(parts) == 3 and parts[1] in IGNORED_FOLDERS:
            ignored[parts[1]] += 1
            continue
        if not _in_layout(parts):
            rejects.append(reject_row(uri, class_name, "wrong_layout",
                                      "not in <class>/ or <class>/images/"))
            continue
        if not input_format(parts[-1]):
            rejects.append(reject_row(uri, class_name, "unsupported_file", f"not a {SUPPORTED} file"))
            continue
        size = found.files[original]
        if max_bytes is not None and size is not None and size > max_bytes:
            rejects.append(_too_large_reject(uri, class_name, size, max_bytes))
            continue
        read_kind, location, member = read_spec_of(original)
        items.append(item_row(uri, class_name, label_of[class_name], read_kind, location, member,
                              path=rel, wrapped_path=original))
    if not items and not rejects:
        raise UserError(f"{root}: no files in the class folders {', '.join(class_names)}")
    records = {}
    for class_name, (original, uri) in sorted(sheets.items()):
        try:
            found_sources = metadata.sheet_sources(read_sheet(original))
        except (SpreadsheetError, OSError, DownloadFailed) as exc:
            rejects.append(reject_row(uri, class_name, "bad_metadata", one_line(exc)))
            continue
        records[class_name] = {"path": original, **metadata.apply_sheet(items, class_name, found_sources)}
    return Listing(kind=kind, root=root + ("/" + wrapper.rstrip("/") if wrapper else ""),
                   class_names=class_names, items=items, rejects=rejects, ignored=dict(ignored),
                   metadata={"sheets": records} if records else {})


def _in_layout(parts: list[str]) -> bool:
    """Whether a path's parts are `<class>/<file>` or `<class>/images/<file>`."""
    return len(parts) == 2 or (len(parts) == 3 and parts[1] == IMAGE_FOLDER)


def _class_images(paths: list[str]) -> set[str]:
    """The class folders that hold at least one input (input_format) where the layout reads one."""
    return {parts[0] for parts in (p.split("/") for p in paths) if _in_layout(parts) and input_format(parts[-1])}


def _class_of(path: str, wrapper: str) -> str | None:
    """The class folder a path below the wrapping folders is in; None for one outside them or at their top."""
    if not path.startswith(wrapper) or "/" not in path[len(wrapper):]:
        return None
    return path[len(wrapper):].split("/", 1)[0]


def list_synthetic(spec: SyntheticConfig) -> Listing:
    """The embedded default: `spec.images` generated images, a few of them exact copies.

    With one source every image is from "synthetic"; with more, the images are shared
    equally between that many sites (synthetic.SITES), whose COVID rates `spec.confound`
    pulls apart, all but the last's (`site_covid_rates`).
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 7]))
    if spec.sources == 1:
        n_covid = max(1, min(spec.images - 1, round(spec.images * spec.covid_fraction)))
        classes = ["COVID"] * n_covid + ["Normal"] * (spec.images - n_covid)
        sites = [-1] * spec.images
    else:
        classes, sites = [], []
        for site, (size, rate) in enumerate(zip(_site_sizes(spec), site_covid_rates(spec))):
            # Every site keeps both classes unless the confound empties one on purpose.
            low, high = (0, size) if min(rate, 1.0 - rate) < 1e-9 else (1, size - 1)
            n_covid = max(low, min(high, round(size * rate)))
            classes += ["COVID"] * n_covid + ["Normal"] * (size - n_covid)
            sites += [site] * size
    render_index = list(range(spec.images))
    n_copies = round(spec.images * spec.duplicate_fraction)
    for copy in rng.choice(spec.images, size=n_copies, replace=False):
        # A copy renders the same picture as another image of its class and site.
        peers = [i for i, c in enumerate(classes) if c == classes[copy] and sites[i] == sites[copy] and i != copy]
        if peers:
            render_index[copy] = render_index[int(rng.choice(peers))]
    label_of = {name: i for i, name in enumerate(synthetic.SYNTHETIC_CLASSES)}
    items = []
    for i, (c, site) in enumerate(zip(classes, sites)):
        name = synthetic_source_name(site)
        folder = "" if site < 0 else f"{name}/"
        items.append(item_row(f"synthetic://seed-{spec.seed}/{folder}{c}/{i:05d}.png", c, label_of[c], "synthetic",
                              "", synthetic_index=render_index[i], synthetic_source=site, source=name))
    return Listing(kind="synthetic", root=f"synthetic://seed-{spec.seed}", class_names=synthetic.SYNTHETIC_CLASSES,
                   items=items, rejects=[])


def synthetic_source_name(site: int) -> str:
    return synthetic.DEFAULT_ACQUISITION.name if site < 0 else synthetic.SITES[site].name


def _site_sizes(spec: SyntheticConfig) -> list[int]:
    base, extra = divmod(spec.images, spec.sources)
    return [base + (1 if site < extra else 0) for site in range(spec.sources)]


def site_covid_rates(spec: SyntheticConfig) -> list[float]:
    """Each site's COVID rate: the training sites' spread evenly around the overall rate, by
    up to `confound` times as far as it allows (0 or 1 at the extreme); the last site's
    the overall rate, so that it shows what a model learned from the sites."""
    base, training = spec.covid_fraction, spec.sources - 1
    reach = spec.confound * min(base, 1.0 - base)
    spread = np.linspace(-1.0, 1.0, training) if training > 1 else np.zeros(1)
    return [float(np.clip(base + reach * d, 0.0, 1.0)) for d in spread] + [base]


class BatchReader:
    """Reads the bytes of a batch of items; opens each zip archive once per batch."""

    def __init__(self, synthetic: SyntheticConfig):
        self._synthetic = synthetic
        self._archives: dict[str, zipfile.ZipFile] = {}
        self._handles: list = []

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc) -> None:
        for archive in self._archives.values():
            archive.close()
        for handle in self._handles:
            handle.close()

    def read(self, item: dict) -> tuple[bytes, str | None]:
        """The item's bytes and, for synthetic images, the markings drawn on it."""
        if item["kind"] == "fetched":  # by the download stage, which records failures
            if item["data"] is None:
                raise DownloadFailed(item["fetch_detail"])
            return item["data"], None
        if item["kind"] == "file":
            return storage.read_bytes(storage.resolve(item["location"])), None
        if item["kind"] == "zip":
            return self._archive(item["location"]).read(item["member"]), None
        site = item.get("synthetic_source", -1)
        data, markings = synthetic.render_synthetic_png(
            item["class_name"], item["synthetic_index"], seed=self._synthetic.seed,
            size=self._synthetic.size, marking_fraction=self._synthetic.marking_fraction,
            site=None if site is None or site < 0 else site)
        return data, ",".join(markings)

    def _archive(self, uri: str) -> zipfile.ZipFile:
        if uri not in self._archives:
            location = storage.resolve(uri)
            handle = location.fs.open_input_file(location.path)
            self._handles.append(handle)
            self._archives[uri] = zipfile.ZipFile(handle)
        return self._archives[uri]
