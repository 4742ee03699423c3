"""Writing manifest.json (what a shard set holds and how it was made) and its human summary.

Its fields and the typed view every reader uses are cxr.artifacts's `Manifest`.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from collections.abc import Mapping
from importlib import metadata

from cxr import __version__
from cxr.artifacts import SCHEMA_VERSION, SPLITS, UNKNOWN_SOURCE, Manifest, ordered_sources, shard_schema
from cxr.config import PreprocessConfig
from cxr.ingest.sources import Listing

# pydicom and its decoders: what a DICOM input became depends on them too.
RECORDED_PACKAGES = ("ray", "scikit-image", "pyarrow", "numpy", "pillow", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
                     "pylibjpeg-openjpeg", "pylibjpeg-rle")


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# A class this share or more of whose images come from sources that hold no image of another
# class can be told apart by its sources alone (hospital, device, borders, text): the
# confound of the COVID-19 Radiography Database, where the share is 100% for COVID and for
# Normal and models score about 0.7 AUC elsewhere (DeGrave et al. 2021). Below 100%, so that
# a few mixed sources of a mostly single-class data set do not silence the warning.
CONFOUNDED_SHARE = 0.8


def class_by_source(kept: list[dict], class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Kept images per source (UNKNOWN_SOURCE for those without one), per class; sources
    sorted, the unknown last."""
    table: dict[str, dict[str, int]] = {}
    for row in kept:
        per_class = table.setdefault(row.get("source") or UNKNOWN_SOURCE, {name: 0 for name in class_names})
        per_class[row["class_name"]] += 1
    return {name: table[name] for name in ordered_sources(table)}


def source_confound(table: Mapping[str, Mapping[str, int]], class_names: tuple[str, ...] | list[str]) -> dict:
    """How the classes spread over the sources of a class-by-source table.

    Per class: its images, those from known sources holding no other class, and their
    share; `confounded`: the classes whose share reaches CONFOUNDED_SHARE; `in_mixed_sources`:
    the images in known sources that hold more than one class. An image of unknown source
    may come from any hospital: it counts in the totals but neither as mixed nor as single-class.
    """
    known = {name: per_class for name, per_class in table.items() if name != UNKNOWN_SOURCE}
    mixed = {name for name, per_class in known.items() if sum(n > 0 for n in per_class.values()) > 1}
    classes = {}
    for name in class_names:
        images = sum(per_class.get(name, 0) for per_class in table.values())
        alone = sum(per_class.get(name, 0) for source, per_class in known.items() if source not in mixed)
        classes[name] = {"images": images, "from_single_class_sources": alone,
                         "share": alone / images if images else None}
    return {"sources_known": bool(known), "images": sum(sum(per_class.values()) for per_class in table.values()),
            "in_mixed_sources": sum(sum(known[name].values()) for name in mixed), "classes": classes,
            "confounded": [name for name in class_names
                           if classes[name]["share"] is not None and classes[name]["share"] >= CONFOUNDED_SHARE]}


def confound_sentences(confound: dict, class_names: tuple[str, ...] | list[str]) -> tuple[list[str], str | None]:
    """(one warning per confounded class, the share of images in mixed sources), as text;
    ([], None) when no image's source is known or there is one class."""
    if not confound["sources_known"] or len(class_names) < 2:
        return [], None
    warnings = []
    for name in confound["confounded"]:
        others = " or ".join(printable(c) for c in class_names if c != name)
        warnings.append(f"{printable(name)}: {_percent(confound['classes'][name]['share'])} from sources without "
                        f"{others} images; a model can learn the hospital")
    held = "both classes" if len(class_names) == 2 else "more than one class"
    images = confound["images"]
    mixed = (f"images in sources that hold {held}: {_percent(confound['in_mixed_sources'] / max(images, 1))} "
             f"({confound['in_mixed_sources']} of {images})")
    return warnings, mixed


def _percent(share: float) -> str:
    """Rounded down: 99.6% of a class from single-class sources is not "100%"."""
    return f"{math.floor(share * 100 + 1e-9)}%"


def build_manifest(*, config: PreprocessConfig, listing: Listing, kept: list[dict], assignment: dict[str, str],
                   rejects: list[dict], shard_files: dict[str, list[dict]], source_details: dict,
                   stage_seconds: dict[str, float], wall_seconds: dict[str, float],
                   near_duplicates: dict | None = None, grouped_by: dict | None = None) -> dict:
    splits = {split: {name: 0 for name in listing.class_names} for split in SPLITS}
    by_source: dict[str, dict[str, dict[str, int]]] = {split: {} for split in SPLITS}
    for row in kept:
        split = assignment[row["source_uri"]]
        splits[split][row["class_name"]] += 1
        per_class = by_source[split].setdefault(row.get("source") or UNKNOWN_SOURCE,
                                                {name: 0 for name in listing.class_names})
        per_class[row["class_name"]] += 1
    if sum(f["rows"] for files in shard_files.values() for f in files) != len(kept):
        raise RuntimeError("shard row counts do not match the kept images")  # a bug, not a user error
    if listing.found != len(kept) + len(rejects):
        raise RuntimeError(f"found {listing.found} inputs but kept {len(kept)} + rejected {len(rejects)}")
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "packages": package_versions(),
        "source": {"uri": " + ".join(config.source), "kind": listing.kind, "root": listing.root, **source_details,
                   **({"metadata": listing.metadata} if listing.metadata else {})},
        "class_names": list(listing.class_names),
        "image": {"height": config.image_size, "width": config.image_size, "channels": 1, "format": "png"},
        "counts": {
            "found": listing.found,
            "kept": len(kept),
            "rejected": len(rejects),
            "splits": {split: {**per_class, "total": sum(per_class.values())} for split, per_class in splits.items()},
            "classes": {name: sum(splits[s][name] for s in SPLITS) for name in listing.class_names},
            # Per source, per class, over all splits: how far class and hospital are one variable.
            "class_by_source": class_by_source(kept, listing.class_names),
            "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
            "inpainted": sum(1 for r in kept if r.get("marking_inpainted")),
            # With a lung focus: found in the image, or the template stood in.
            **({"lungs": {"found": sum(1 for r in kept if r.get("lungs_found")),
                          "template": sum(1 for r in kept if r.get("lungs_found") is False)}}
               if config.lungs.enabled else {}),
            "ignored": dict(sorted(listing.ignored.items())),
            # Only when some image's source is known: per split, per source, per class.
            **({"sources": {split: {source: {**per_class, "total": sum(per_class.values())}
                                    for source, per_class in sorted(by_source[split].items())}
                            for split in SPLITS}}
               if any(row.get("source") for row in kept) else {}),
            # Groups of two or more near-duplicates (each kept inside one split), and their sizes.
            "near_duplicates": near_duplicates or {},
            # With --group-by: the groups of two or more images that share the column's value
            # (joined with their near-duplicates), each kept inside one split; never the values.
            "grouped_by": grouped_by or {},
        },
        "shards": shard_files,
        "columns": {field.name: str(field.type) for field in shard_schema(listing.extra_columns)},
        "config": config.to_dict(),
        "timing": {"wall_seconds": {k: round(v, 2) for k, v in wall_seconds.items()},
                   "stage_cpu_seconds": stage_seconds},
    }


def _focus_lines(config) -> list[str]:
    """The generalization levers this shard set was made with; none for the defaults."""
    done = (["every detected marking inpainted"] if config.markings.remove_all else []) + \
           (["cropped to the lung fields"] if config.lungs.crop else []) + \
           (["outside the lung fields blacked out"] if config.lungs.suppress else [])
    return [f"  images {', '.join(done)} (evaluate and predict do the same)"] if done else []


def printable(text: str) -> str:
    """`text` on one line: each control character (a newline, a tab, an escape) as its escape.

    Names in the summary come from the user's files (folder names, --metadata's sources and
    header): one holding a newline would break a table, or forge a line of it.
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def format_summary(manifest: Manifest, output_uri: str) -> str:
    """A table a person reads at the end of the job; every name in it is printable()."""
    classes, counts = manifest.class_names, manifest.counts
    shown = {c: printable(c) for c in classes}
    width = max(8, *(len(shown[c]) + 2 for c in classes))  # two spaces between columns
    lines = [f"shards written to {printable(output_uri)}", "",
             "split  " + "".join(f"{shown[c]:>{width}}" for c in classes) + f"{'total':>{width}}"]
    for split in SPLITS:
        row = manifest.splits[split]
        lines.append(f"{split:<7}" + "".join(f"{row.per_class[c]:>{width}}" for c in classes)
                     + f"{row.total:>{width}}")
    lines.append("")
    lines.append(f"inputs found {counts.found} = kept {counts.kept} + rejected {counts.rejected}")
    for name, each in manifest.input_counts().items():
        lines.append(f"  from {printable(name)} ({printable(each['uri'])}): found {each['found']} = kept {each['kept']} "
                     f"+ rejected {each['rejected']}")
    for reason, n in counts.rejected_by_reason.items():
        lines.append(f"  rejected {printable(reason)}: {n}")
    near = counts.near_duplicates
    if near.get("groups"):
        lines.append(f"  near-duplicate groups kept within one split: {near['groups']} "
                     f"({near['images_in_groups']} images)")
    by_column = counts.grouped_by
    if by_column:
        several = by_column["groups_with_several_classes"]
        lines.append(f"  images that share a {printable(by_column['column'])} kept within one split: "
                     f"{by_column['groups']} groups ({by_column['images_in_groups']} images"
                     + (f"; {several} groups hold more than one class" if several else "") + ")")
        if by_column["images_without_value"]:
            lines.append(f"  warning: {by_column['images_without_value']} kept images have no "
                         f"{printable(by_column['column'])}; each is a group of its own")
    if counts.inpainted:
        lines.append(f"  kept with markings inpainted: {counts.inpainted}")
    if counts.lungs:
        lines.append(f"  lung fields found in {counts.lungs['found']} kept images; the template stood in for "
                     f"{counts.lungs['template']}")
    for what, n in counts.ignored.items():
        lines.append(f"  ignored {printable(what)}: {n}")
    lines += _focus_lines(manifest.preprocess_config())
    lines += _metadata_lines(manifest.metadata_record())
    # One source (the quickstart's) would only repeat the table above, and cannot stand for a class.
    if len({name for per_split in manifest.sources.values() for name in per_split}) > 1:
        lines += ["", *_source_table(manifest)]
    if manifest.kaggle:
        how = Counter()
        for per_class in manifest.kaggle.fetched.values():
            how.update(per_class)
        lines.append(f"Kaggle {printable(manifest.kaggle.dataset)} version {manifest.kaggle.version}: "
                     + ", ".join(f"{what} {n}" for what, n in sorted(how.items())))
    lines.append(f"took {manifest.wall_seconds:.1f} s ({counts.found / max(manifest.wall_seconds, 1e-9):.1f} inputs/s)")
    return "\n".join(lines)


def _metadata_lines(record: dict) -> list[str]:
    """What the metadata sheets and --metadata matched: counts and column names, never values."""
    lines = []
    for class_name, sheet in record.get("sheets", {}).items():
        lines.append(f"  metadata sheet {printable(sheet['path'])}: {sheet['rows']} rows, "
                     f"{sheet['rows_without_image']} naming no image found, {sheet['images_without_row']} "
                     f"{printable(class_name)} images without a row")
    table = record.get("csv")
    if table:
        columns = f"; columns kept: {', '.join(map(printable, table['columns']))}" if table["columns"] else ""
        lines.append(f"  --metadata: {table['rows']} rows, {table['rows_without_image']} naming no image found, "
                     f"{table['images_without_row']} images without a row{columns}")
    return lines


def _source_table(manifest: Manifest) -> list[str]:
    """Per source: kept images per class and per split, then how the classes spread over them."""
    names = sorted({source for per_split in manifest.sources.values() for source in per_split},
                   key=lambda name: (name == UNKNOWN_SOURCE, name))
    classes, by_class = manifest.class_names, manifest.counts.class_by_source
    width = max(8, *(len(printable(n)) + 2 for n in names))
    class_width = max(8, *(len(printable(c)) + 2 for c in classes))
    held_out = [f"held out in {split}: {', '.join(map(printable, held))}"
                for split, held in (("test", manifest.test_sources), ("val", manifest.val_sources)) if held]
    lines = ["images per source" + (f" ({'; '.join(held_out)})" if held_out else ""),
             f"{'source':<{width}}" + "".join(f"{printable(c):>{class_width}}" for c in classes)
             + "".join(f"{s:>8}" for s in SPLITS)]
    for name in names:
        per_class = by_class.get(name, {})
        lines.append(f"{printable(name):<{width}}" + "".join(f"{per_class.get(c, 0):>{class_width}}" for c in classes)
                     + "".join(f"{manifest.sources[s][name].total if name in manifest.sources[s] else 0:>8}"
                               for s in SPLITS))
    warnings, mixed = confound_sentences(source_confound(by_class, classes), classes)
    return lines + [f"WARNING: {warning}" for warning in warnings] + ([mixed] if mixed else [])
