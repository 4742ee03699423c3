"""Writing a shard set (its format: cxr.artifacts), and the job's two global decisions.

The first pass writes staging files (STAGING_SCHEMA: the shard columns, each image's
status and per-stage seconds); the driver reads back their METADATA_COLUMNS only and
decides, from per-image metadata, exact-duplicate removal and the train/val/test split;
`write_shard` then copies the kept rows into the final shards, one Ray task each.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from cxr import storage
from cxr.errors import UserError
from cxr.artifacts import REJECT_SCHEMA, SPLITS, shard_schema
from cxr.config import SplitConfig
from cxr.preprocess import fingerprints
from cxr.preprocess.components import Components

STAGES = ("read", "decode", "grayscale", "markings", "clahe", "resize", "encode")


def staging_schema(extra_columns: tuple[str, ...] = ()) -> pa.Schema:
    """The shard columns (with the user's metadata columns), each image's status and stage seconds."""
    return pa.schema(
        # fetch: how a remote source's image was had (downloaded, cached, failed); null otherwise.
        list(shard_schema(extra_columns)) + [("status", pa.string()), ("detail", pa.string()), ("fetch", pa.string())]
        + [(f"t_{stage}", pa.float32()) for stage in STAGES])


STAGING_SCHEMA = staging_schema()

# What the driver reads back from the staging shards to decide duplicates and splits.
METADATA_COLUMNS = ["source_uri", "label", "class_name", "source", "content_hash", "status", "detail", "fetch",
                    "marking_score", "marking_inpainted", "marking_truth", "lungs_found", "fingerprint",
                    *(f"t_{stage}" for stage in STAGES)]


def remove_duplicates(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Split processed rows into (kept, rejected) by exact pixel duplicates.

    Of identical images of one class the one with the smallest source URI is kept, so the
    choice does not depend on processing order. Identical images filed under different
    classes are all rejected: their labels contradict each other.
    """
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_hash[row["content_hash"]].append(row)
    kept, rejected = [], []
    for group in by_hash.values():
        group = sorted(group, key=lambda r: r["source_uri"])
        if len({r["label"] for r in group}) > 1:
            classes = sorted({r["class_name"] for r in group})
            rejected += [_as_reject(r, "conflicting_duplicate", f"same pixels filed as {', '.join(classes)}")
                         for r in group]
            continue
        kept.append(group[0])
        rejected += [_as_reject(r, "duplicate", f"same pixels as {group[0]['source_uri']}") for r in group[1:]]
    return kept, rejected


def group_near_duplicates(rows: list[dict], max_distance: int) -> tuple[list[dict], list[dict], dict]:
    """Group kept rows by fingerprint; return (kept, rejected, counts).

    Each kept row gets `group`: the smallest content hash of its group (its own hash when it
    has no near-duplicate), which assign_splits keys on. A group filed under several
    classes is rejected whole (`conflicting_duplicate`): its labels contradict each other.
    `max_distance` -1 leaves every image in a group of its own.
    """
    rows = sorted(rows, key=lambda r: r["content_hash"])
    if max_distance < 0:
        numbers = list(range(len(rows)))
    else:
        numbers = fingerprints.near_duplicate_groups([r["fingerprint"] for r in rows], max_distance)
    members: dict[int, list[dict]] = defaultdict(list)
    for row, number in zip(rows, numbers):
        members[number].append(row)
    kept, rejected = [], []
    for group in members.values():
        if len({r["label"] for r in group}) > 1:
            classes = sorted({r["class_name"] for r in group})
            rejected += [_as_reject(r, "conflicting_duplicate", f"near-duplicate images filed as {', '.join(classes)}")
                         for r in group]
            continue
        kept += [{**r, "group": group[0]["content_hash"]} for r in group]
    sizes = Counter(len(g) for g in members.values() if len(g) > 1)
    counts = {"max_distance": max_distance, "groups": sum(sizes.values()),
              "images_in_groups": sum(size * n for size, n in sizes.items()),
              "group_sizes": {str(size): n for size, n in sorted(sizes.items())}}
    return kept, rejected, counts


def group_by_value(rows: list[dict], values: dict[str, str | None]) -> tuple[list[dict], dict]:
    """Join the groups of rows that share a value (a patient id, by source URI); return (rows, counts).

    The joined groups keep the smallest content hash among them as their `group` key, never
    the value, which may identify a patient. Unlike near-duplicates, a patient's images may
    carry several classes (studies at different times): they are kept, in one split.
    """
    groups = Components()
    first_group: dict[str, str] = {}
    for row in rows:
        group, value = row.get("group") or row["content_hash"], values.get(row["source_uri"])
        if value is not None:
            groups.join(first_group.setdefault(value, group), group)
    joined = [{**r, "group": groups.root(r.get("group") or r["content_hash"])} for r in rows]
    members: dict[str, list[dict]] = defaultdict(list)
    for row in joined:
        members[row["group"]].append(row)
    shared = [g for g in members.values() if sum(values.get(r["source_uri"]) is not None for r in g) > 1]
    counts = {"groups": len(shared), "images_in_groups": sum(len(g) for g in shared),
              "groups_with_several_classes": sum(1 for g in shared if len({r["label"] for r in g}) > 1),
              "images_without_value": sum(1 for r in rows if values.get(r["source_uri"]) is None)}
    return joined, counts


def _as_reject(row: dict, reason: str, detail: str) -> dict:
    return {**{name: row.get(name) for name in REJECT_SCHEMA.names}, "reason": reason, "detail": detail}


def split_key(content_hash: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{content_hash}".encode()).hexdigest()


def assign_splits(rows: list[dict], split: SplitConfig) -> dict[str, str]:
    """Map each row's source URI to a split, stratified by label, a group whole.

    Within a class, groups (`group`, from group_near_duplicates and group_by_value; a row
    without one is its own group; a group of several classes counts under its most common
    one) are ordered by a hash of their key, a pixel hash, and cut at the ratios:
    a group goes to the split where its first image falls. So the assignment depends only
    on which images there are: not on listing order, block layout or worker count.
    Duplicates are removed before this, so no image can sit in two splits. Images of
    `split.test_sources` all go to test and those of `split.val_sources` to val, whatever
    the ratios, with every member of their groups; the others are split as if those sources
    were not there.
    """
    members: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        members[row.get("group") or row["content_hash"]].append(row)
    by_label: dict[int, dict[str, list[dict]]] = defaultdict(dict)
    for key, group in members.items():
        by_label[_stratum(group)][key] = group
    assignment = {}
    for all_groups in by_label.values():
        groups = {}
        for key, members in all_groups.items():
            held_in = _held_out_split(members, split)
            if held_in:
                assignment.update((row["source_uri"], held_in) for row in members)
            else:
                groups[key] = members
        n = sum(len(g) for g in groups.values())
        train_end = round(n * split.train)
        # With no test split, rounding must not leave a stray image for it.
        val_end = n if split.test == 0 else min(n, train_end + round(n * split.val))
        before = 0
        for key in sorted(groups, key=lambda k: split_key(k, split.seed)):
            name = "train" if before < train_end else "val" if before < val_end else "test"
            for row in groups[key]:
                assignment[row["source_uri"]] = name
            before += len(groups[key])
    return assignment


def _stratum(group: list[dict]) -> int:
    """The class a group is split with: its most common label (the smaller on a tie)."""
    counts = Counter(row["label"] for row in group)
    return min(counts, key=lambda label: (-counts[label], label))


def _held_out_split(group: list[dict], split: SplitConfig) -> str | None:
    """"test" or "val" when a member of the group comes from a source held out there, else None.

    Test wins for a group that spans a test source and a validation source (a near-duplicate
    filed under both): the test split's promise, that none of its held-out sources' images
    was seen while training or choosing the model, is the one a reader relies on.
    """
    sources = {row.get("source") for row in group}
    if sources & set(split.test_sources):
        return "test"
    if sources & set(split.val_sources):
        return "val"
    return None


def check_held_out_sources(rows: list[dict], split: SplitConfig) -> None:
    """--test-sources and --val-sources must name sources the images have, and leave some for training."""
    held_out = {"--test-sources": split.test_sources, "--val-sources": split.val_sources}
    if not any(held_out.values()):
        return
    known = {row.get("source") for row in rows} - {None}
    for flag, names in held_out.items():
        unknown = [name for name in names if name not in known]
        if unknown:
            listed = ", ".join(sorted(known)) if known else "none: no image's source is known"
            raise UserError(f"{flag}: no image comes from {', '.join(unknown)} (sources: {listed})")
    every = {*split.test_sources, *split.val_sources}
    if not any(row.get("source") not in every for row in rows):
        flags = [flag for flag, names in held_out.items() if names]
        raise UserError(f"{' and '.join(flags)} {'name' if len(flags) > 1 else 'names'} every source: none would "
                        "be left for training")


def write_shard(staging_files: list[str], keep: set[str], output_uri: str,
                schema: pa.Schema | None = None) -> int:
    """Copy the rows of `keep` (source URIs) from staging files into one shard; return rows.

    Runs in a Ray task. Rows are sorted by content hash so a shard's content is the same
    whatever order the staging files were written in.
    """
    location = storage.resolve(output_uri)
    schema = schema or shard_schema()
    tables = []
    for path in staging_files:
        table = pq.read_table(storage.resolve(path).path, filesystem=location.fs)
        mask = pa.array([uri in keep for uri in table.column("source_uri").to_pylist()])
        tables.append(table.filter(mask).select(schema.names).cast(schema))
    shard = pa.concat_tables(tables).sort_by("content_hash")
    if shard.num_rows:
        # Row groups of a few hundred images: the unit a training reader fetches at once.
        storage.ensure_parent(location)
        pq.write_table(shard, location.path, filesystem=location.fs, row_group_size=256)
    return shard.num_rows


def plan_shards(file_rows: dict[str, dict[str, int]], rows_per_shard: int) -> dict[str, list[list[str]]]:
    """Group staging files into shards per split: {split: [[file, ...], ...]}.

    `file_rows` maps each staging file to its kept row count per split.
    """
    plan: dict[str, list[list[str]]] = {}
    for split in SPLITS:
        groups, current, count = [], [], 0
        for path in sorted(file_rows):
            n = file_rows[path].get(split, 0)
            if not n:
                continue
            if current and count + n > rows_per_shard:
                groups.append(current)
                current, count = [], 0
            current.append(path)
            count += n
        if current:
            groups.append(current)
        plan[split] = groups
    return plan


def write_rejects(rows: list[dict], target: storage.Location) -> None:
    """rejected.parquet: one row per input not kept, with its reason."""
    table = pa.Table.from_pylist([{name: r.get(name) for name in REJECT_SCHEMA.names} for r in rows],
                                 schema=REJECT_SCHEMA).sort_by("source_uri")
    pq.write_table(table, target.path, filesystem=target.fs)
