"""Writing manifest.json (what a shard set holds and how it was made) and its human summary.

Its fields and the typed view every reader uses are cxr.artifacts's `Manifest`.
"""

from __future__ import annotations

import datetime
from collections import Counter
from importlib import metadata

from cxr import __version__
from cxr.artifacts import SCHEMA_VERSION, SHARD_SCHEMA, SPLITS, Manifest
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


def build_manifest(*, config: PreprocessConfig, listing: Listing, kept: list[dict], assignment: dict[str, str],
                   rejects: list[dict], shard_files: dict[str, list[dict]], source_details: dict,
                   stage_seconds: dict[str, float], wall_seconds: dict[str, float],
                   near_duplicates: dict | None = None) -> dict:
    splits = {split: {name: 0 for name in listing.class_names} for split in SPLITS}
    for row in kept:
        splits[assignment[row["source_uri"]]][row["class_name"]] += 1
    if sum(f["rows"] for files in shard_files.values() for f in files) != len(kept):
        raise RuntimeError("shard row counts do not match the kept images")  # a bug, not a user error
    if listing.found != len(kept) + len(rejects):
        raise RuntimeError(f"found {listing.found} inputs but kept {len(kept)} + rejected {len(rejects)}")
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cxr_version": __version__,
        "packages": package_versions(),
        "source": {"uri": config.source, "kind": listing.kind, "root": listing.root, **source_details},
        "class_names": list(listing.class_names),
        "image": {"height": config.image_size, "width": config.image_size, "channels": 1, "format": "png"},
        "counts": {
            "found": listing.found,
            "kept": len(kept),
            "rejected": len(rejects),
            "splits": {split: {**per_class, "total": sum(per_class.values())} for split, per_class in splits.items()},
            "classes": {name: sum(splits[s][name] for s in SPLITS) for name in listing.class_names},
            "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
            "inpainted": sum(1 for r in kept if r.get("marking_inpainted")),
            "ignored": dict(sorted(listing.ignored.items())),
            # Groups of two or more near-duplicates (each kept inside one split), and their sizes.
            "near_duplicates": near_duplicates or {},
        },
        "shards": shard_files,
        "columns": {field.name: str(field.type) for field in SHARD_SCHEMA},
        "config": config.to_dict(),
        "timing": {"wall_seconds": {k: round(v, 2) for k, v in wall_seconds.items()},
                   "stage_cpu_seconds": stage_seconds},
    }


def format_summary(manifest: Manifest, output_uri: str) -> str:
    """A table a person reads at the end of the job."""
    classes, counts = manifest.class_names, manifest.counts
    width = max(8, *(len(c) + 2 for c in classes))  # two spaces between columns
    lines = [f"shards written to {output_uri}", "",
             "split  " + "".join(f"{c:>{width}}" for c in classes) + f"{'total':>{width}}"]
    for split in SPLITS:
        row = manifest.splits[split]
        lines.append(f"{split:<7}" + "".join(f"{row.per_class[c]:>{width}}" for c in classes)
                     + f"{row.total:>{width}}")
    lines.append("")
    lines.append(f"inputs found {counts.found} = kept {counts.kept} + rejected {counts.rejected}")
    for reason, n in counts.rejected_by_reason.items():
        lines.append(f"  rejected {reason}: {n}")
    near = counts.near_duplicates
    if near.get("groups"):
        lines.append(f"  near-duplicate groups kept within one split: {near['groups']} "
                     f"({near['images_in_groups']} images)")
    if counts.inpainted:
        lines.append(f"  kept with markings inpainted: {counts.inpainted}")
    for what, n in counts.ignored.items():
        lines.append(f"  ignored {what}: {n}")
    if manifest.kaggle:
        how = Counter()
        for per_class in manifest.kaggle.fetched.values():
            how.update(per_class)
        lines.append(f"Kaggle {manifest.kaggle.dataset} version {manifest.kaggle.version}: "
                     + ", ".join(f"{what} {n}" for what, n in sorted(how.items())))
    lines.append(f"took {manifest.wall_seconds:.1f} s ({counts.found / max(manifest.wall_seconds, 1e-9):.1f} inputs/s)")
    return "\n".join(lines)
