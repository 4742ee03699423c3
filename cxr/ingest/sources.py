"""Where images come from: find every input of a source, then read each one's bytes.

A source is a class-per-folder tree (`<class>/*.png` or the Kaggle archive's
`<class>/images/*.png`, with `masks/` beside `images/`; PNG, JPEG or DICOM files) in a local folder or under an
`s3://` prefix, a `.zip` of such a tree (local or on S3), or `synthetic`; a Kaggle dataset
(cxr.ingest.downloads) is listed with the same rules. Listing runs on the driver and is cheap; it
returns one row per input found, each either readable or already rejected (unsupported
file, wrong layout), so that nothing is silently lost. Each row carries its `source` (the
collection or hospital) when one is known: from the archive's metadata sheets beside the
class folders, a --metadata CSV (cxr.ingest.metadata), or the synthetic site. Reading runs
in Ray workers, a batch at a time.
"""

from __future__ import annotations

import dataclasses
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

    @property
    def found(self) -> int:
        return len(self.items) + len(self.rejects)


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


def list_source(config: PreprocessConfig) -> Listing:
    """List the inputs of `config.source`, or fail with a one-line UserError."""
    if config.source == "synthetic":
        return list_synthetic(config.synthetic)
    location = storage.resolve(config.source)
    storage.check_bucket(location)
    if storage.is_file(location):
        if not location.path.lower().endswith(".zip"):
            raise UserError(f"{location.uri}: a file source must be a .zip archive of a class-per-folder tree")
        return list_zip(location, config.classes)
    files = storage.list_files(location)
    if not files:
        if not storage.exists(location):
            raise UserError(f"{location.uri}: source does not exist")
        raise UserError(f"{location.uri}: source folder is empty")
    prefix = location.path.rstrip("/") + "/"
    relative = [f.path[len(prefix):] for f in files]
    return list_tree("folder", location.uri, relative, config.classes,
                     lambda rel: location.join(rel).uri, lambda rel: ("file", location.join(rel).uri, ""),
                     read_sheet=lambda rel: storage.read_bytes(location.join(rel)))


def _zip_members(location: storage.Location) -> tuple[list[str], int]:
    """The file members of a zip archive, and how many macOS metadata members were left out."""
    try:
        with location.fs.open_input_file(location.path) as handle, zipfile.ZipFile(handle) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, ValueError):  # pyarrow refuses the seek of a file too short to be a zip
        raise UserError(f"{location.uri}: not a valid zip archive") from None
    except OSError as exc:
        raise storage.storage_error(exc, location.uri) from None
    # macOS archivers add resource forks under __MACOSX/: metadata, not inputs.
    members = [n for n in names if not n.startswith("__MACOSX/")]
    if not members:
        raise UserError(f"{location.uri}: the zip archive holds no files")
    return members, len(names) - len(members)


def list_zip(location: storage.Location, classes: tuple[str, ...] | None, uri_of=None) -> Listing:
    """A zip of a class-per-folder tree; `uri_of(member)` names its inputs (default: zip!/member)."""
    names, macos = _zip_members(location)

    def read_sheet(member: str) -> bytes:
        with location.fs.open_input_file(location.path) as handle, zipfile.ZipFile(handle) as archive:
            return archive.read(member)

    listing = list_tree("zip", location.uri, names, classes, uri_of or (lambda rel: f"{location.uri}!/{rel}"),
                        lambda rel: ("zip", location.uri, rel), read_sheet=read_sheet)
    if macos:
        listing.ignored["macos_metadata"] = macos
    return listing


def list_images(uri: str) -> Listing:
    """Every file under a folder, an s3:// prefix or in a .zip, at any depth, for scoring.

    No classes: items have label -1. Image files are items; anything else is a reject
    (`unsupported_file`), so each file found is accounted for. Lung masks are skipped.
    """
    location = storage.resolve(uri)
    storage.check_bucket(location)
    if storage.is_file(location):
        if location.path.lower().endswith(".zip"):
            members, macos = _zip_members(location)
            entries = [(m, f"{location.uri}!/{m}", ("zip", location.uri, m)) for m in members]
            ignored = {"macos_metadata": macos} if macos else {}
        else:
            entries, ignored = [("", location.uri, ("file", location.uri, ""))], {}
    else:
        files = storage.list_files(location)
        if not files:
            raise UserError(f"{location.uri}: " + ("the folder holds no files" if storage.exists(location)
                                                  else "does not exist"))
        prefix = location.path.rstrip("/") + "/"
        entries = [(f.path[len(prefix):], location.join(f.path[len(prefix):]).uri,
                    ("file", location.join(f.path[len(prefix):]).uri, "")) for f in files]
        ignored = {}
    items, rejects, masks = [], [], 0
    for relative, source_uri, (kind, where, member) in entries:
        name = source_uri.rsplit("/", 1)[-1]
        if any(part in IGNORED_FOLDERS for part in relative.split("/")[:-1]):
            masks += 1
        elif input_format(name):
            items.append(item_row(source_uri, None, -1, kind, where, member))
        else:
            rejects.append(reject_row(source_uri, None, "unsupported_file", f"not a {SUPPORTED} file"))
    if masks:
        ignored["masks"] = masks
    if not items:
        raise UserError(f"{location.uri}: no {SUPPORTED} images found")
    return Listing(kind="images", root=location.uri, class_names=(), items=items, rejects=rejects, ignored=ignored)


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


def list_tree(kind: str, root: str, relative: list[str], classes: tuple[str, ...] | None,
              uri_of, read_spec_of, read_sheet=None) -> Listing:
    """The inputs of a class-per-folder tree, given its files' paths relative to `root`.

    `uri_of(path)` is an input's source_uri; `read_spec_of(path)` its (kind, location,
    member) for BatchReader or the fetch stage. `read_sheet(path)` reads a metadata sheet
    beside the class folders (`<class>.metadata.xlsx`), whose sources the class's images
    then carry; without it, or when it fails, the sheet is a reject.
    """
    wrapper, stripped = _strip_wrappers(relative)
    found_classes = sorted({p.split("/", 1)[0] for p in stripped if "/" in p})
    if not found_classes:
        raise UserError(f"{root}: no class subfolders (expected <class>/*.png or <class>/images/*.png)")
    if classes is None:
        if len(found_classes) < 2:
            raise UserError(f"{root}: found one class folder ({found_classes[0]}); at least two are needed")
        class_names = tuple(found_classes)
    else:
        missing = [c for c in classes if c not in found_classes]
        if missing:
            raise UserError(f"{root}: no folder for class(es) {', '.join(missing)} "
                            f"(found: {', '.join(found_classes)})")
        class_names = classes
    label_of = {name: i for i, name in enumerate(class_names)}
    items, rejects, ignored, sheets = [], [], Counter(), {}
    for original, rel in zip(relative, stripped):
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
        if class_name is not None and class_name not in label_of:
            ignored[f"unselected_class:{class_name}"] += 1
            continue
        if len(parts) == 3 and parts[1] in IGNORED_FOLDERS:
            ignored[parts[1]] += 1
            continue
        if not (len(parts) == 2 or (len(parts) == 3 and parts[1] == IMAGE_FOLDER)):
            rejects.append(reject_row(uri, class_name, "wrong_layout",
                                      "not in <class>/ or <class>/images/"))
            continue
        if not input_format(parts[-1]):
            rejects.append(reject_row(uri, class_name, "unsupported_file", f"not a {SUPPORTED} file"))
            continue
        read_kind, location, member = read_spec_of(original)
        items.append(item_row(uri, class_name, label_of[class_name], read_kind, location, member,
                              path=rel, wrapped_path=original))
    if not items and not rejects:
        raise UserError(f"{root}: no files in the class folders {', '.join(class_names)}")
    records = {}
    for class_name, (original, uri) in sorted(sheets.items()):
        try:
            found = metadata.sheet_sources(read_sheet(original))
        except (SpreadsheetError, OSError, DownloadFailed) as exc:
            rejects.append(reject_row(uri, class_name, "bad_metadata", one_line(exc)))
            continue
        records[class_name] = {"path": original, **metadata.apply_sheet(items, class_name, found)}
    return Listing(kind=kind, root=root + ("/" + wrapper.rstrip("/") if wrapper else ""),
                   class_names=class_names, items=items, rejects=rejects, ignored=dict(ignored),
                   metadata={"sheets": records} if records else {})


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
