"""The preprocessing pipeline: raw chest X-rays to Parquet shards, with Ray Data.

Two passes. The first streams every input through the per-image work (read, decode,
grayscale, markings, CLAHE, resize, PNG) in parallel and writes staging shards; it is
where all the time goes. The driver then reads back only the small metadata columns,
decides duplicates and the split (both need every image's hash), and a second, I/O-only
pass regroups the staging rows into the final train/val/test shards. The manifest is
written last, and the staging area is removed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter, defaultdict
from time import perf_counter

import pyarrow as pa
import pyarrow.dataset as pads
import ray

from cxr import claims, progress, runtime, storage
from cxr.artifacts import CLAIM_FILE, MANIFEST_FILE, SPLITS, ShardsLayout, shard_schema
from cxr.config import PreprocessConfig, is_kaggle_source
from cxr.errors import DownloadFailed, UserError, one_line
from cxr.ingest import cohort, collections, downloads, sources
from cxr.ingest.metadata import EXTRA_PREFIX, read_metadata_csv
from cxr.preprocess import dicom, fingerprints
from cxr.preprocess import manifest as manifest_lib
from cxr.preprocess import shards
from cxr.preprocess.lungs import crop_to_box, find_lungs, suppress_outside
from cxr.preprocess.markings import detect_markings, inpaint_markings
from cxr.preprocess.transforms import (ImageRejected, apply_clahe, decode_image, encode_png, limit_size, pixel_hash,
                                       resize_square, to_grayscale, to_uint8)

log = logging.getLogger(__name__)

# Inputs per Ray Data block, one task each. Measured on 2 cores: at 24 images (0.4 s tasks)
# the cores idled 30% of the time between tasks; at 96 (1.5 s) scheduling is noise.
ROWS_PER_BLOCK = 96
# ... but at least this many blocks per CPU, so a small job still spreads over every core.
MIN_BLOCKS_PER_CPU = 4


def process_image(data: bytes, config: PreprocessConfig, input_format: str = "image",
                  cohort_at_read: bool = False) -> dict:
    """One image's bytes through decode .. PNG; the shard fields plus per-stage seconds.

    The one definition of the image work: preprocessing runs it on every input, scoring
    (cxr.scoring.datasets) on raw images with the settings the manifest recorded, so the
    markings removed and the lung focus are the same in training and inference.

    A DICOM file (by its magic, whatever its name) is decoded to gray by cxr.preprocess.dicom,
    a PNG or JPEG by Pillow; from grayscale on both take the same path. `input_format` is
    what the listing read the name as (cxr.ingest.sources.input_format): a "dicom" name
    without the magic is rejected rather than guessed at. Raises ImageRejected when the image
    cannot be used; a marking drop is not an error but a status, so its score and hash still
    reach rejected.parquet. `cohort_at_read`: the listing could not know the image's age or
    view (cxr.ingest.cohort.AT_READ), so a DICOM header's are checked against config.cohort.
    """
    seconds: dict[str, float] = {}
    clock = perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = perf_counter()
        seconds[f"t_{stage}"] = now - clock
        clock = now

    if input_format == "dicom" or dicom.is_dicom(data):
        # Already gray float32 in [0, 1].
        pixels = dicom.decode_dicom(data, config.max_pixels, config.cohort if cohort_at_read else None)
    else:
        pixels = decode_image(data, config.max_pixels)
    content_hash = pixel_hash(pixels)
    lap("decode")
    gray = limit_size(to_grayscale(pixels), config.working_max_side)
    lap("grayscale")
    marks = detect_markings(gray)
    fields = {"content_hash": content_hash, "marking_score": float(marks.score),
              "orig_height": int(pixels.shape[0]), "orig_width": int(pixels.shape[1]),
              "marking_inpainted": False, "lungs_found": None, "status": "ok", "detail": None}
    heavy = marks.score >= config.markings.threshold
    if heavy and config.markings.policy == "drop":
        lap("markings")
        return {**fields, **seconds, "status": "marking",
                "detail": f"marking score {marks.score:.2f} >= {config.markings.threshold}"}
    if (heavy and config.markings.policy == "inpaint") or (config.markings.remove_all and marks.mask.any()):
        gray = inpaint_markings(gray, marks.mask)
        fields["marking_inpainted"] = True
    lap("markings")
    # The lung focus is timed with CLAHE (a stage of its own would change the staging schema).
    lungs = find_lungs(gray, config.lungs.margin) if config.lungs.enabled else None
    whole = gray
    if lungs is not None:
        fields["lungs_found"] = lungs.found
    if lungs is not None and config.lungs.crop:
        gray = crop_to_box(gray, lungs.box)
    equalized = apply_clahe(gray, config.clahe)
    # Near-duplicates are copies of one film: its fingerprint is of the whole image, as without
    # the lung focus, whose box moves with a copy's resizing or windowing (on real X-rays the
    # crop's fingerprints of resized, re-windowed and JPEG copies were up to 126 bits apart).
    whole_equalized = equalized if gray is whole else apply_clahe(whole, config.clahe)
    if lungs is not None and config.lungs.suppress:
        # After CLAHE, so that the blacked-out area neither shifts its histograms nor gets lifted by them.
        equalized = suppress_outside(equalized, crop_to_box(lungs.mask, lungs.box) if config.lungs.crop
                                     else lungs.mask)
    lap("clahe")
    resized = resize_square(to_uint8(equalized), config.image_size)
    fingerprinted = resized if whole_equalized is equalized else resize_square(to_uint8(whole_equalized),
                                                                               config.image_size)
    fields["fingerprint"] = fingerprints.perceptual_hash(fingerprinted)
    lap("resize")
    png = encode_png(resized)
    lap("encode")
    return {**fields, **seconds, "image_png": png}


def process_batch(batch: pa.Table, config: PreprocessConfig, tally=None,
                  extra_columns: tuple[str, ...] = ()) -> pa.Table:
    """Ray Data stage: read and process a batch of listed inputs, one staging row each.

    Every failure is caught per image and becomes the row's status, so one bad file never
    aborts the job and never vanishes. The batch is counted into `tally` (cxr.progress).
    The item's source and the user's metadata columns (`extra_columns`) ride along.
    """
    rows = []
    with sources.BatchReader(config.synthetic) as reader:
        for item in batch.to_pylist():
            row = {"source_uri": item["source_uri"], "class_name": item["class_name"], "label": item["label"],
                   "source": item.get("source"), "fetch": item.get("fetch"),
                   **{name: item.get(EXTRA_PREFIX + name) for name in extra_columns}}
            start = perf_counter()
            try:
                data, row["marking_truth"] = reader.read(item)
            except DownloadFailed as exc:
                rows.append({**row, "status": "download_failed", "detail": str(exc)})
                continue
            except Exception as exc:  # noqa: BLE001 - any read failure is this image's reject
                rows.append({**row, "status": "read_error", "detail": one_line(exc)})
                continue
            # A fetched image's read is its download (or its read from the raw cache).
            row["t_read"] = perf_counter() - start + (item.get("t_fetch") or 0.0)
            try:
                row.update(process_image(data, config, sources.input_format(item["source_uri"]),
                                         cohort_at_read=bool(item.get(cohort.AT_READ))))
            except ImageRejected as exc:
                row.update(status=exc.reason, detail=exc.detail)
            except Exception as exc:  # noqa: BLE001 - recorded, counted and shown in the summary
                row.update(status="processing_error", detail=one_line(exc))
            rows.append(row)
    progress.count(tally, len(rows), **Counter(row["status"] for row in rows))
    return pa.Table.from_pylist(rows, schema=shards.staging_schema(extra_columns))


def check_output(output: ShardsLayout) -> None:
    """--output can be written to as a folder (before it is claimed)."""
    storage.check_bucket(output.root)
    if storage.is_file(output.root):
        raise UserError(f"{output.root.uri}: --output is a file, not a folder or prefix")


def check_apart(config: PreprocessConfig) -> None:
    """--output outside what the job reads: shards inside --source would be listed as a class
    folder by the next run over it (a third class, silently), and --overwrite would delete
    inside the source (or, the other way round, the source would be inside what it deletes)."""
    read = [("--source", uri) for _, uri in config.named_sources if uri != "synthetic" and not is_kaggle_source(uri)]
    if config.download.raw_cache:
        read.append(("--raw-cache", config.download.raw_cache))
    for flag, uri in read:
        if storage.contains(uri, config.output) or storage.contains(config.output, uri):
            raise UserError(f"--output {config.output} and {flag} {uri} overlap (one lies inside the other): "
                            f"choose an --output outside {flag}")


def prepare_output(output: ShardsLayout, overwrite: bool) -> None:
    """Refuse to write over an existing output unless asked; never delete foreign files.
    Runs with the output claimed (cxr.claims), whose claim file it leaves alone."""
    root = output.root
    existing = storage.list_files(root) if not root.is_local or storage.exists(root) else []
    names = [f.path[len(root.path.rstrip("/")) + 1:] for f in existing]
    names = [n for n in names if n != CLAIM_FILE]
    if names:
        state = "a finished" if MANIFEST_FILE in names else "a partial"
        if not overwrite:
            raise UserError(f"{root.uri} already holds {state} output; pass --overwrite to replace it")
        foreign = [n for n in names if not ShardsLayout.is_ours(n)]
        if foreign:
            raise UserError(f"{root.uri} holds files cxr did not write (such as {foreign[0]}); "
                            f"refusing to delete them, choose another --output")
        storage.delete_contents(root, keep=(CLAIM_FILE,))
    storage.check_writable(root)


def block_count(items: int, cpus: int) -> int:
    """Ray Data blocks (one task each) for `items` listed inputs on `cpus` CPUs."""
    return max(1, min(items, max(math.ceil(items / ROWS_PER_BLOCK), MIN_BLOCKS_PER_CPU * cpus)))


def run_preprocess(config: PreprocessConfig) -> dict:
    """Run the whole job; return the manifest it wrote."""
    started = time.time()
    check_apart(config)
    table = read_metadata_csv(config.metadata) if config.metadata else None  # a bad file fails first
    if table is not None and config.split.group_by not in (None, *table.extra_columns):
        raise UserError(f"--group-by {config.split.group_by}: --metadata {table.uri} has no such column "
                        f"(its columns: {', '.join(table.extra_columns) or 'none besides the path and source'})")
    listing = list_inputs(config)
    if not listing.items:
        raise UserError(f"{listing.root}: no {sources.SUPPORTED} files in the class folders "
                        f"({len(listing.rejects)} other files)")
    if table is not None:
        listing = sources.with_metadata_csv(listing, table)
    listing = cohort.apply_cohort(listing, config.cohort)  # once every age and view is attached
    if config.split.group_by not in (None, *listing.extra_columns):
        raise UserError(f"--group-by {config.split.group_by}: no source gives such a column (a --metadata CSV, or "
                        f"a collection's metadata; columns here: {', '.join(listing.extra_columns) or 'none'})")
    shards.check_held_out_sources(listing.items, config.split)
    log.info("found %d inputs in %s (%s), classes %s", listing.found, listing.root, listing.kind,
             ", ".join(listing.class_names))
    output = ShardsLayout.at(config.output)
    check_output(output)
    with claims.claimed(output.claim, "preprocess", "--output") as claim:
        prepare_output(output, config.overwrite)
        return _process(config, listing, output, claim, started)


def list_inputs(config: PreprocessConfig) -> sources.Listing:
    """Every input of every --source, as one listing (cxr.ingest.sources.merged)."""
    listings = []
    # Of several sources, each need not hold every class --classes names: each is listed with
    # all of its classes, and merged keeps those asked for.
    each = config if len(config.named_sources) == 1 else dataclasses.replace(config, classes=())
    for name, uri in config.named_sources:
        if is_kaggle_source(uri) and config.label_map:
            # The database's class folders are its findings: every one listed, then mapped.
            listing = collections.map_class_folders(downloads.list_kaggle(dataclasses.replace(config, classes=())),
                                                    config.label_map, each.wanted_classes)
        elif is_kaggle_source(uri):
            listing = downloads.list_kaggle(each)
        else:
            listing = sources.list_source(each, uri)
        if len(config.named_sources) > 1 and not listing.items:
            raise UserError(f"--source {name}={uri}: no {sources.SUPPORTED} files in the class folders "
                            f"({len(listing.rejects)} other files)")
        listings.append(sources.named(listing, name))
    return sources.merged(listings, config.wanted_classes)


def input_counts(config: PreprocessConfig, listing: sources.Listing, kept: list[dict], rejects: list[dict]) -> dict:
    """Per --source NAME=...: its URI and found = kept + rejected."""
    counts = {name: {"uri": uri, "found": 0, "kept": 0, "rejected": 0} for name, uri in config.named_sources}
    for rows, outcome in ((kept, "kept"), (rejects, "rejected")):
        for row in rows:
            name = listing.inputs[row["source_uri"]]
            counts[name]["found"] += 1
            counts[name][outcome] += 1
    return counts


def _process(config: PreprocessConfig, listing: sources.Listing, output: ShardsLayout, claim: claims.Claim,
             started: float) -> dict:
    """Everything after the checks, with the output claimed: both passes, the manifest last."""
    staging = output.staging

    runtime.ensure_ray()
    num_blocks = block_count(len(listing.items), int(ray.cluster_resources().get("CPU", 1)))
    log.debug("processing %d images in %d blocks", len(listing.items), num_blocks)
    dataset = ray.data.from_items(listing.items, override_num_blocks=num_blocks)
    if listing.remote is not None:
        tasks, threads = downloads.fetch_parallelism(config.download.concurrency)
        dataset = dataset.map_batches(downloads.fetch_batch, batch_format="pyarrow", batch_size=None,
                                      fn_kwargs={"remote": listing.remote, "threads": threads},
                                      num_cpus=downloads.FETCH_CPUS, compute=ray.data.TaskPoolStrategy(size=tasks))
    with progress.Progress("preprocess", len(listing.items), "images",
                           runtime.progress_style(ray_data_bars=True)) as shown:
        dataset = dataset.map_batches(process_batch, batch_format="pyarrow", batch_size=None,
                                      fn_kwargs={"config": config, "tally": shown.tally,
                                                 "extra_columns": listing.extra_columns})
        dataset.write_parquet(staging.path, filesystem=staging.fs)
    processed_at = time.time()

    metadata = _read_staging_metadata(staging)
    processed = [row for rows in metadata.values() for row in rows]
    ok_rows = [r for r in processed if r["status"] == "ok"]
    rejects = list(listing.rejects)
    rejects += [{**r, "reason": r["status"]} for r in processed if r["status"] != "ok"]
    source_details = dict(listing.origin)
    if "kaggle" in source_details:
        source_details["kaggle"] = {**source_details["kaggle"],
                                    "fetched": downloads.fetched_per_class(processed, listing.class_names)}
        try:
            downloads.check_failures(processed, config.download, output.rejected.uri)
        except UserError:
            shards.write_rejects(rejects, output.rejected)  # so the user can see which, and why
            storage.delete_tree(staging)
            raise
    kept, duplicates = shards.remove_duplicates(ok_rows)
    kept, conflicting, near_duplicates = shards.group_near_duplicates(kept, config.split.near_duplicate_distance)
    rejects += duplicates + conflicting
    grouped_by = None
    if config.split.group_by:
        column = EXTRA_PREFIX + config.split.group_by
        kept, grouped_by = shards.group_by_value(kept, {item["source_uri"]: item.get(column)
                                                        for item in listing.items})
        grouped_by = {"column": config.split.group_by, **grouped_by}
    assignment = shards.assign_splits(kept, config.split)
    if listing.inputs:
        source_details["inputs"] = input_counts(config, listing, kept, rejects)

    file_rows = {path: Counter(assignment[r["source_uri"]] for r in rows if r["source_uri"] in assignment)
                 for path, rows in metadata.items()}
    shard_files = _write_shards(staging, output, assignment, file_rows, config.rows_per_shard,
                                shard_schema(listing.extra_columns))
    shards.write_rejects(rejects, output.rejected)

    manifest = manifest_lib.build_manifest(
        config=config, listing=listing, kept=kept, assignment=assignment, rejects=rejects,
        shard_files=shard_files, source_details=source_details, stage_seconds=_stage_seconds(processed),
        near_duplicates=near_duplicates, grouped_by=grouped_by,
        wall_seconds={"process": processed_at - started, "total": time.time() - started})
    claim.check()  # the manifest makes the output finished: never for a job that lost its claim
    storage.write_json(output.manifest, manifest)
    storage.delete_tree(staging)
    return manifest


def _read_staging_metadata(staging: storage.Location) -> dict[str, list[dict]]:
    """The metadata rows of each staging file, keyed by file URI; no image bytes are read."""
    dataset = pads.dataset(staging.path, filesystem=staging.fs, format="parquet")
    return {staging.at_path(fragment.path).uri: fragment.to_table(columns=shards.METADATA_COLUMNS).to_pylist()
            for fragment in dataset.get_fragments()}


def _write_shards(staging: storage.Location, output: ShardsLayout, assignment: dict[str, str],
                  file_rows: dict[str, Counter], rows_per_shard: int, schema: pa.Schema) -> dict[str, list[dict]]:
    """Second pass: one Ray task per final shard, regrouping kept staging rows by split."""
    write_shard = ray.remote(num_cpus=1)(shards.write_shard)
    uris_by_split: dict[str, set[str]] = defaultdict(set)
    for uri, split in assignment.items():
        uris_by_split[split].add(uri)
    pending = {}
    for split, groups in shards.plan_shards(file_rows, rows_per_shard).items():
        keep = ray.put(uris_by_split[split])  # once per split, not once per task
        for index, files in enumerate(groups):
            name = ShardsLayout.shard_name(split, index)
            pending[name] = write_shard.remote(files, keep, output.root.join(name).uri, schema)
    rows = dict(zip(pending, ray.get(list(pending.values()))))
    shard_files: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for name, count in sorted(rows.items()):
        shard_files[name.split("/", 1)[0]].append({"path": name, "rows": count})
    return shard_files


def _stage_seconds(rows: list[dict]) -> dict[str, float]:
    """CPU-seconds spent in each per-image stage, summed over all images and workers."""
    return {stage: round(sum(r[f"t_{stage}"] or 0.0 for r in rows), 3) for stage in shards.STAGES}
