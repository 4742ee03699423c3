"""The public chest X-ray collections, read in their own layouts with their own metadata.

Each adapter recognises one collection's layout in what a listing found below a source's
root (a sources.Found) and returns a sources.Listing, or None when the tree is not that
collection. Every image gets its `finding` (the collection's own word), a class through the
label map, a `source`, and the extra columns COLUMNS (patient, age, sex, view, finding,
location, cohort: None where the collection does not say). The layouts, as published:

- `cohen` (ieee8023/covid-chestxray-dataset): `images/` and `metadata.csv` (patientid, sex,
  age, finding, view, modality, location, folder, filename, ...). Findings are paths in its
  newer versions ("Pneumonia/Viral/COVID-19"), words in older ones ("COVID-19"); CT images
  (modality CT) are `not_xray`, lateral views (view "L") `lateral_view`.
- `actualmed` (agchung/Actualmed-COVID-chestxray-dataset): `images/` and `metadata.csv`
  (patientid, sex, age, finding, view, modality, imagename, ...).
- `figure1` (agchung/Figure1-COVID-chestxray-dataset): `images/<patientid>.jpg|.png` and
  `metadata.csv` (patientid, sex, age, finding, view, modality, ...; no file-name column).
  Actualmed and Figure 1 are two sources here, not one: a Spanish hospital group's archive
  and a crowd-sourced case platform are different acquisitions (the Kaggle database's sheets
  cannot tell them apart and call both `figure1-actualmed`).
- `rsna` (RSNA Pneumonia Detection Challenge): `stage_2_train_images/<patientId>.dcm` and
  `stage_2_detailed_class_info.csv` (patientId, class: "Normal", "Lung Opacity", "No Lung
  Opacity / Not Normal"); `stage_2_train_labels.csv`'s Target says only whether there is an
  opacity, so the class file is the one read. Age, sex and view are in each DICOM header:
  unknown when listing, so the items are marked cohort.AT_READ and the worker checks the
  cohort against the header. Other stages' names (stage_1_...) are read the same way.
- `pediatric-pneumonia` (Kermany et al., "Chest X-Ray Images (Pneumonia)"):
  `[chest_xray/]{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`; a PNEUMONIA file named with
  "bacteria" or "virus" is "Pneumonia/Bacterial" or "Pneumonia/Viral", any other
  "Pneumonia"; NORMAL is "Normal". The patients are children of one to five years (the
  dataset's paper) with no per-image age: each image's `cohort` is "paediatric", which
  --min-age reads as under 18 (cxr.ingest.cohort), and its view AP, as the paper states.
  The patient is the file name's `personN` (PNEUMONIA) or its stem without the image counter
  (NORMAL: `IM-0115-0001` -> `IM-0115`).
- The COVID-19 Radiography Database (Kaggle) is a class-per-folder tree (list_tree): its
  findings are its folder names (COVID, Normal, Lung_Opacity, Viral Pneumonia), and with a
  --label-map `map_class_folders` relabels them.

Only the collection's image folder holds inputs; its other files (README, scripts, CT
volumes, the metadata itself) are counted as ignored `collection_files`. An image with no
metadata row is a reject (`no_metadata_row`), and so is one whose finding the label map does
not map (`unmapped_finding`, the finding as detail) or that is not a frontal X-ray. A
metadata row that names no image is counted in the listing's metadata record. Values of
the demographic columns reach the shards only, never a log line or an error message.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import posixpath
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cxr.errors import DownloadFailed, UserError
from cxr.ingest import cohort, metadata, sources
from cxr.ingest.sources import Found, Listing, item_row, reject_row

# The extra columns every collection's items carry (under metadata.EXTRA_PREFIX).
COLUMNS = ("patient", "age", "sex", "view", "finding", "location", cohort.COHORT)
# Each collection's findings to the job's classes, unless --label-map is given (then it
# alone applies). Keys match case-insensitively, and a key also matches the end of a finding
# path ("COVID-19" matches cohen's "Pneumonia/Viral/COVID-19").
DEFAULT_LABEL_MAP = (("COVID-19", "COVID"), ("No Finding", "Normal"), ("Normal", "Normal"))
METADATA_CSV = "metadata.csv"
IMAGE_FOLDER = "images"
# ViewPosition-like spellings of a lateral view in collections' metadata (cohen writes "L").
LATERAL_VIEWS = frozenset({"L", "LL", "RL", "LAT", "LATERAL"})
XRAY_MODALITIES = frozenset({"x-ray", "xray", "cr", "dx"})


@dataclass(frozen=True)
class Tree:
    """A listed source as the adapters see it: what was found below `root`, and how to name
    and read its files (the same callables sources.list_tree takes)."""

    kind: str  # "folder" or "zip"
    root: str
    found: Found
    read: Callable[[str], bytes]  # a metadata file's bytes, by its path relative to the root
    uri_of: Callable[[str], str]
    read_spec_of: Callable[[str], tuple[str, str, str]]
    max_bytes: int | None = None


@dataclass(frozen=True)
class Labels:
    """The label map in force and the job's classes, in label order."""

    mapping: dict[str, str]  # casefolded finding: class
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, label_map: tuple[tuple[str, str], ...] = (), classes: tuple[str, ...] | None = None) -> Labels:
        """--label-map's pairs (or DEFAULT_LABEL_MAP) and --classes (or every class the map names, sorted)."""
        pairs = label_map or DEFAULT_LABEL_MAP
        mapping = {_finding_key(finding): name for finding, name in pairs}
        return cls(mapping=mapping, class_names=tuple(classes) if classes else tuple(sorted(set(mapping.values()))))

    def class_of(self, finding: str) -> str | None:
        """The class of a finding: itself, else its shorter and shorter ends ("Viral/COVID-19", "COVID-19");
        a finding the map does not name but that is one of the classes (a `COVID` folder) is that class."""
        parts = _finding_key(finding).split("/")
        mapped = next((self.mapping[end] for end in ("/".join(parts[i:]) for i in range(len(parts)))
                       if end in self.mapping), None)
        return mapped or next((name for name in self.class_names if _finding_key(name) == _finding_key(finding)), None)


def _finding_key(finding: str) -> str:
    """How findings are compared: case and the spaces around a path's slashes aside."""
    return "/".join(part.strip() for part in finding.split("/")).casefold()


@dataclass(frozen=True)
class Image:
    """What a collection's metadata says about one of its image files."""

    finding: str | None
    source: str
    patient: str | None = None
    age: str | None = None
    sex: str | None = None
    view: str | None = None
    location: str | None = None
    cohort: str | None = None
    modality: str | None = None
    at_read: bool = False  # age, sex and view are in the file's own header (cohort.AT_READ)


@dataclass(frozen=True)
class Layout:
    """A recognised collection: where it starts below the root, which files are its inputs,
    and what its metadata says about each (None: an input no metadata row names)."""

    name: str
    base: str  # "" or "<wrapping folders>/"
    is_input: Callable[[str], bool]  # of a path below `base`
    describe: Callable[[str], Image | None]
    # A metadata table's file, its row count, and how its rows meet files: `key_of(path)` is
    # in `keys` when a row names the file (for the record of rows that name no file).
    metadata_file: str | None = None
    rows: int = 0
    keys: frozenset[str] = frozenset()
    key_of: Callable[[str], str] = str


def list_collection(tree: Tree, label_map: tuple[tuple[str, str], ...] = (),
                    classes: tuple[str, ...] | None = None) -> Listing | None:
    """The listing of the public collection `tree` holds, or None when it holds none of them."""
    for recognise in (cohen_layout, actualmed_layout, figure1_layout, rsna_layout, pediatric_layout):
        layout = recognise(tree)
        if layout is not None:
            return listing_of(tree, layout, Labels.of(label_map, classes))
    return None


# ---------------------------------------------------------------- the collections

def cohen_layout(tree: Tree) -> Layout | None:
    """ieee8023/covid-chestxray-dataset: metadata.csv with filename and finding columns."""
    found = _csv_collection(tree, ("filename", "finding"))
    if found is None:
        return None
    base, path, rows = found
    return _csv_layout("cohen", base, path, rows,
                       lambda row: row["filename"] and f"{row.get('folder') or IMAGE_FOLDER}/{row['filename']}",
                       lambda row: Image(finding=row.get("finding"), source="cohen", patient=row.get("patientid"),
                                         age=row.get("age"), sex=row.get("sex"), view=row.get("view"),
                                         location=row.get("location"), modality=row.get("modality")))


def actualmed_layout(tree: Tree) -> Layout | None:
    """agchung/Actualmed-COVID-chestxray-dataset: metadata.csv with imagename and finding columns."""
    found = _csv_collection(tree, ("imagename", "finding"))
    if found is None:
        return None
    base, path, rows = found
    return _csv_layout("actualmed", base, path, rows,
                       lambda row: row["imagename"] and f"{IMAGE_FOLDER}/{row['imagename']}",
                       lambda row: _agchung_image("actualmed", row))


def figure1_layout(tree: Tree) -> Layout | None:
    """agchung/Figure1-COVID-chestxray-dataset: metadata.csv keyed by patientid, images named by it."""
    found = _csv_collection(tree, ("patientid", "finding"), without=("imagename", "filename"))
    if found is None:
        return None
    base, path, rows = found
    # Its images are `<patientid>.jpg` (or .png): rows meet files by stem, case aside.
    return _csv_layout("figure1", base, path, rows,
                       lambda row: row["patientid"] and f"{IMAGE_FOLDER}/{row['patientid'].lower()}",
                       lambda row: _agchung_image("figure1", row),
                       key_of=lambda relative: posixpath.splitext(relative)[0].lower())


def _agchung_image(source: str, row: dict) -> Image:
    return Image(finding=row.get("finding"), source=source, patient=row.get("patientid"), age=row.get("age"),
                 sex=row.get("sex"), view=row.get("view"), modality=row.get("modality"))


RSNA_CLASSES = re.compile(r"stage_(\d+)_detailed_class_info\.csv")


def rsna_layout(tree: Tree) -> Layout | None:
    """The RSNA Pneumonia Detection Challenge: stage_N_train_images/*.dcm and stage_N_detailed_class_info.csv."""
    stages: dict[str, list[int]] = {}
    for path in tree.found.files:
        folder, _, name = path.rpartition("/")
        match = RSNA_CLASSES.fullmatch(name)
        if match:
            stages.setdefault(folder + "/" if folder else "", []).append(int(match.group(1)))
    base = _one_base(tree, stages, "RSNA class files")
    if base is None:
        return None
    stage = max(stages[base])
    images = f"stage_{stage}_train_images"
    if not any(path.startswith(f"{base}{images}/") for path in tree.found.files):
        return None
    path = f"{base}stage_{stage}_detailed_class_info.csv"
    rows = _read_csv(tree, path, ("patientid", "class"))
    return _csv_layout("rsna", base, path, rows, lambda row: row["patientid"] and f"{images}/{row['patientid']}",
                       lambda row: Image(finding=row.get("class"), source="rsna", patient=row.get("patientid"),
                                         at_read=True),
                       key_of=lambda relative: posixpath.splitext(relative)[0], folder=images)


PEDIATRIC_SPLITS = ("train", "test", "val")
PEDIATRIC_CLASSES = ("NORMAL", "PNEUMONIA")
_PEDIATRIC_FINDINGS = (("bacteria", "Pneumonia/Bacterial"), ("virus", "Pneumonia/Viral"))


def pediatric_layout(tree: Tree) -> Layout | None:
    """Kermany et al.'s Chest X-Ray Images (Pneumonia): {train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg."""
    matches = [path for path in tree.found.files if _pediatric_parts(path)]
    named = any(word in path.rsplit("/", 1)[-1].lower() for path in matches for word, _ in _PEDIATRIC_FINDINGS)
    if not matches or not named:  # a split/NORMAL tree of someone else's is not this collection
        return None

    def describe(path: str) -> Image:
        class_folder, name = path.split("/")[-2:]
        stem = posixpath.splitext(name)[0]
        if class_folder.upper() == "NORMAL":
            finding, patient = "Normal", re.sub(r"-\d+$", "", stem)
        else:
            lowered = stem.lower()
            finding = next((f for word, f in _PEDIATRIC_FINDINGS if word in lowered), "Pneumonia")
            person = re.match(r"person\d+", lowered)
            patient = person.group(0) if person else None
        return Image(finding=finding, source="pediatric-pneumonia", patient=patient, view="AP",
                     cohort=cohort.PAEDIATRIC)

    return Layout(name="pediatric-pneumonia", base="", is_input=_pediatric_parts, describe=describe)


def _pediatric_parts(path: str) -> bool:
    parts = path.split("/")
    return (len(parts) >= 3 and parts[-3].lower() in PEDIATRIC_SPLITS
            and parts[-2].upper() in PEDIATRIC_CLASSES)


# ---------------------------------------------------------------- a collection to a listing

def listing_of(tree: Tree, layout: Layout, labels: Labels) -> Listing:
    """Every file below the collection's root as an item, a reject or an ignored file."""
    label_of = {name: i for i, name in enumerate(labels.class_names)}
    items, rejects, ignored, matched, without_row = [], [], Counter(), set(), 0
    rejects += [{**reject_row(tree.uri_of(path), None, reason, detail), "source": layout.name}
                for path, reason, detail in tree.found.problems]
    for original, size in tree.found.files.items():
        uri = tree.uri_of(original)
        if not sources.is_safe_path(original):
            rejects.append({**sources._unsafe_reject(uri), "source": layout.name})
            continue
        path = original[len(layout.base):] if original.startswith(layout.base) else None
        if path is None or not layout.is_input(path):
            ignored["collection_files"] += 1
            continue
        image = layout.describe(path) if sources.input_format(path) else None
        if image is not None:
            matched.add(layout.key_of(path))
        else:
            without_row += bool(sources.input_format(path))
        reject = _input_reject(uri, path, size, tree.max_bytes, image, labels)
        if reject is not None:
            rejects.append({**reject, "source": image.source if image else layout.name})
            continue
        class_name = labels.class_of(image.finding)
        if class_name not in label_of:
            ignored[f"unselected_class:{class_name}"] += 1
            continue
        kind, location, member = tree.read_spec_of(original)
        item = item_row(uri, class_name, label_of[class_name], kind, location, member, source=image.source,
                        path=path, wrapped_path=original)
        item.update({metadata.EXTRA_PREFIX + name: getattr(image, name) for name in COLUMNS})
        item[cohort.AT_READ] = image.at_read
        items.append(item)
    if not items and not rejects:
        raise UserError(f"{tree.root}: the {layout.name} collection holds no images")
    record = {"name": layout.name}
    if layout.metadata_file is not None:
        record.update(path=layout.metadata_file, rows=layout.rows, rows_without_image=len(layout.keys - matched),
                      images_without_row=without_row)
    root = tree.root + ("/" + layout.base.rstrip("/") if layout.base else "")
    return Listing(kind=tree.kind, root=root, class_names=labels.class_names, items=items, rejects=rejects,
                   ignored=dict(ignored), metadata={"collection": record}, extra_columns=COLUMNS)


def _input_reject(uri: str, path: str, size: int | None, max_bytes: int | None, image: Image | None,
                  labels: Labels) -> dict | None:
    """Why an input of the collection is a reject, or None when it is an image of a mapped finding."""
    if not sources.input_format(path):
        return reject_row(uri, None, "unsupported_file", f"not a {sources.SUPPORTED} file")
    if max_bytes is not None and size is not None and size > max_bytes:
        return sources._too_large_reject(uri, None, size, max_bytes)
    if image is None:
        return reject_row(uri, None, "no_metadata_row", "no row of the collection's metadata names this file")
    if image.modality and image.modality.strip().lower() not in XRAY_MODALITIES:
        # Modality is the kind of scan, not patient data: safe to quote.
        return reject_row(uri, None, "not_xray", f"modality {image.modality} in the metadata: not a radiograph")
    if cohort.view_code(image.view) in LATERAL_VIEWS:
        return reject_row(uri, None, "lateral_view", "a lateral view in the metadata, not the frontal (PA or AP) "
                                                     "chest radiograph the model reads")
    if not image.finding:
        return reject_row(uri, None, "unmapped_finding", "the metadata gives no finding")
    if labels.class_of(image.finding) is None:
        return reject_row(uri, None, "unmapped_finding", image.finding)
    return None


def map_class_folders(listing: Listing, label_map: tuple[tuple[str, str], ...],
                      classes: tuple[str, ...] | None = None) -> Listing:
    """A class-per-folder listing (every folder listed as a class) relabelled by --label-map:
    each folder name is its images' finding (the Kaggle database's `Viral Pneumonia`...)."""
    labels = Labels.of(label_map, classes)
    label_of = {name: i for i, name in enumerate(labels.class_names)}
    items, rejects, ignored = [], list(listing.rejects), Counter(listing.ignored)
    for item in listing.items:
        finding = item["class_name"]
        class_name = labels.class_of(finding)
        if class_name is None:
            rejects.append({**reject_row(item["source_uri"], None, "unmapped_finding", finding),
                            "source": item.get("source")})
        elif class_name not in label_of:
            ignored[f"unselected_class:{class_name}"] += 1
        else:
            items.append({**item, "class_name": class_name, "label": label_of[class_name],
                          metadata.EXTRA_PREFIX + "finding": finding})
    return dataclasses.replace(listing, class_names=labels.class_names, items=items, rejects=rejects,
                               ignored=dict(ignored),
                               extra_columns=tuple(dict.fromkeys((*listing.extra_columns, "finding"))))


# ---------------------------------------------------------------- metadata CSVs

def _csv_collection(tree: Tree, wanted: tuple[str, ...], without: tuple[str, ...] = ()
                    ) -> tuple[str, str, list[dict]] | None:
    """(base, path, rows) of a metadata.csv beside an images/ folder whose header has the
    `wanted` columns and none of `without`; None when the tree has no such file."""
    folders = {path.rsplit("/", 2)[0] + "/" if path.count("/") >= 2 else "" for path in tree.found.files
               if path.rsplit("/", 2)[-2:-1] == [IMAGE_FOLDER]}
    tables = {}
    for path in tree.found.files:
        folder, _, name = path.rpartition("/")
        base = folder + "/" if folder else ""
        if name.lower() == METADATA_CSV and base in folders:
            tables[base] = path
    base = _one_base(tree, tables, "metadata.csv files beside images/")
    if base is None:
        return None
    rows = _parsed(tree, tables[base])
    header = {cell.strip().lower() for cell in rows[0]} if rows else set()
    if not header.issuperset(wanted) or header & set(without):
        return None
    return base, tables[base], _records(rows)


def _one_base(tree: Tree, bases: dict, what: str) -> str | None:
    """The one place a collection starts (its shallowest); two at that depth are two collections."""
    if not bases:
        return None
    depth = min(base.count("/") for base in bases)
    shallowest = sorted(base for base in bases if base.count("/") == depth)
    if len(shallowest) > 1:
        raise UserError(f"{tree.root}: holds several collections ({what} in {', '.join(shallowest)}); give each "
                        "as its own --source NAME=PATH")
    return shallowest[0]


def _metadata_bytes(tree: Tree, path: str) -> str:
    size = tree.found.files.get(path)
    if size is not None and size > metadata.MAX_CSV_BYTES:
        raise UserError(f"{tree.uri_of(path)}: larger than {metadata.MAX_CSV_BYTES // 2**20} MiB, not a metadata table")
    try:
        return tree.read(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{tree.uri_of(path)}: not UTF-8 text") from None
    except (OSError, DownloadFailed) as exc:
        raise UserError(f"{tree.uri_of(path)}: could not be read ({type(exc).__name__})") from None


def _parsed(tree: Tree, path: str) -> list[list[str]]:
    try:
        return [row for row in csv.reader(io.StringIO(_metadata_bytes(tree, path), newline=""), strict=True)
                if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise UserError(f"{tree.uri_of(path)}: not a readable CSV ({exc})") from None


def _read_csv(tree: Tree, path: str, wanted: tuple[str, ...]) -> list[dict]:
    rows = _parsed(tree, path)
    header = {cell.strip().lower() for cell in rows[0]} if rows else set()
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{tree.uri_of(path)}: no {', '.join(missing)} column")
    return _records(rows)


def _records(rows: list[list[str]]) -> list[dict]:
    """A CSV's rows as {lower-case column: stripped value or None}; the first of a repeated column name wins."""
    at = {}
    for i, name in enumerate(cell.strip().lower() for cell in rows[0]):
        if name:
            at.setdefault(name, i)
    return [{name: (row[i].strip() or None) if i < len(row) else None for name, i in at.items()} for row in rows[1:]]


def _csv_layout(name: str, base: str, path: str, rows: list[dict], path_of: Callable[[dict], str | None],
                image_of: Callable[[dict], Image], key_of: Callable[[str], str] = str,
                folder: str = IMAGE_FOLDER) -> Layout:
    """A collection whose `folder` holds the images a metadata CSV describes, a row each.

    `path_of(row)` is the image a row names (below `base`; None: none), `key_of(path)` how a
    file's path is compared with it; of rows naming one image, the first counts.
    """
    by_key: dict[str, dict] = {}
    for row in rows:
        named = path_of(row)
        if named:
            by_key.setdefault(named, row)
    return Layout(name=name, base=base, is_input=lambda relative: relative.startswith(folder + "/"),
                  describe=lambda relative: image_of(by_key[key_of(relative)]) if key_of(relative) in by_key else None,
                  metadata_file=path, rows=len(rows), keys=frozenset(by_key), key_of=key_of)
