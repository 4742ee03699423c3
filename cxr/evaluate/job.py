"""Evaluation: score a held-out set three ways, then write the report and the model card.

The held-out set is the test split named in the model's manifest (the default), the
split of other shards (`--data` with a manifest.json), or a raw class-per-folder image
tree preprocessed exactly as the training data. The operating threshold is chosen on
the training data's validation split, never on the evaluated images; the same scores give
the validation split's metrics per source (the split the model was chosen on). Each image is
scored as it is, with its lung fields blacked out and with only its lungs left (see
cxr.evaluate.shortcuts); the report puts the three side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass

import numpy as np

from cxr import resources, runtime, storage
from cxr.artifacts import (MODEL_CARD_FILE, REPORT_MARKDOWN_FILE, ReportLayout, ShardsLayout, check_shard_files,
                           read_manifest)
from cxr.config import EvaluateConfig
from cxr.errors import UserError
from cxr.evaluate.by_source import summary_lines, training_source_sentences
from cxr.evaluate.overlap import fingerprint_overlap, training_overlap
from cxr.evaluate.report import build_report, format_ci, write_report
from cxr.evaluate.shortcuts import VARIANTS, lung_crop_margin, variant_functions
from cxr.ingest import sources
from cxr.scoring.datasets import preprocessed_images, raw_pixels, shard_images, shard_pixels
from cxr.scoring.export import Export, check_compatible, find_export
from cxr.scoring.predictor import score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """A scored set: labels, probabilities per variant, and where each image came from."""

    description: str
    source_uris: list[str]
    labels: np.ndarray
    probs: dict[str, np.ndarray]
    rejected: dict[str, int]
    images: object  # callable: source_uris -> uint8 (n, H, W) images, for Grad-CAM
    sources: list[str | None]  # each image's source, None when unknown
    # The sources the scored split holds out from training (--test-sources for test, --val-sources for val).
    held_out: tuple[str, ...] = ()
    split: str | None = None  # the shard split scored; None for a raw image tree
    shards: str | None = None  # the shard set scored, if it was one
    fingerprints: list[str] | None = None  # a raw tree's images' fingerprints, as preprocessing computes them


def run_evaluation(config: EvaluateConfig) -> dict:
    """Evaluate, write the report folder, return the report."""
    started = time.time()
    export = find_export(config.run)
    training_data = export.training.get("config", {}).get("data")
    output = ReportLayout.at(config.output) if config.output else export.layout.run.report
    storage.check_bucket(output.root)
    existed = storage.exists(output.root)
    storage.check_writable(output.root)
    if not existed:
        # The probe's folder: an evaluation that fails leaves no report folder behind.
        storage.delete_tree(output.root)
    # A pool larger than the cluster would wait forever: refused, or waited for, first.
    resources.wait_for_actors(config.gpu, config.actors, runtime.ensure_ray(), config.wait_timeout)

    validation_source = _validation_source(training_data)
    validation = None
    if validation_source is not None:
        log.info("scoring the validation split of %s (the operating threshold and per-source metrics)",
                 validation_source)
        validation = score_shards(export, validation_source, "val", ("full",), config)
    evaluated = (score_shards(export, training_data, config.split, VARIANTS, config) if config.data is None
                 else score_data(export, config))
    log.debug("scored %d images of %s", len(evaluated.labels), evaluated.description)
    report = build_report(export, evaluated, validation, config)
    if (config.data is not None and training_data is not None
            and _training_split_readable(training_data, "train", "no near-duplicate check")):
        overlap = (training_overlap(training_data, evaluated.shards, config.split, evaluated.source_uris)
                   if evaluated.shards is not None else fingerprint_overlap(training_data, evaluated.fingerprints))
        if overlap is not None:
            report["data"]["near_duplicates_in_training"] = overlap
    report["seconds"] = round(time.time() - started, 1)
    report["output"] = output.root.uri
    write_report(report, export, evaluated, output, config)
    return report


def _validation_source(training_data: str | None) -> str | None:
    """The training data, when its validation split can be scored (it holds images and is readable)."""
    if training_data is None or not _training_split_readable(
            training_data, "val", "the threshold stays at 0.5 and validation metrics are left out"):
        return None
    return training_data if read_manifest(training_data).splits["val"].total else None


def _training_split_readable(training_data: str, split: str, otherwise: str) -> bool:
    """Whether a split of the training data can be read; if not, a warning says what is done without it."""
    try:
        check_shard_files(storage.resolve(training_data), read_manifest(training_data), split)
    except UserError as exc:
        log.warning("the training data is not readable (%s): %s", exc, otherwise)
        return False
    return True


def score_data(export: Export, config: EvaluateConfig) -> Scored:
    """`--data`: shards with a manifest, or a raw class-per-folder tree."""
    location = storage.resolve(config.data)
    storage.check_bucket(location)
    if storage.is_file(ShardsLayout(location).manifest):
        return score_shards(export, location.uri, config.split, VARIANTS, config)
    return score_raw(export, location.uri, config)


def score_shards(export: Export, data_uri: str, split: str, variants: tuple[str, ...],
                 config: EvaluateConfig) -> Scored:
    if data_uri is None:
        raise UserError("the run does not name its training data; pass --data")
    data = storage.resolve(data_uri)
    manifest = read_manifest(data.uri)
    check_compatible(export, manifest, data.uri)
    paths = manifest.split_paths(data, split)
    if not paths or manifest.splits[split].total == 0:
        raise UserError(f"{data.uri}: the {split} split is empty")
    check_shard_files(data, manifest, split)
    rows = score(shard_images(data, paths, with_source=manifest.has_column("source")), export,
                 variant_functions(variants, lung_crop_margin(export)), gpu=config.gpu,
                 actors=config.actors).take_all()
    held_out = {"test": manifest.test_sources, "val": manifest.val_sources}.get(split, ())
    scored = _scored(f"{data.uri}, {split} split", rows, variants, {}, functools.partial(shard_pixels, data, paths),
                     held_out)
    return dataclasses.replace(scored, shards=data.uri, split=split)


def score_raw(export: Export, uri: str, config: EvaluateConfig) -> Scored:
    """A class-per-folder tree of raw images, preprocessed as the model's training data."""
    pp = export.manifest.preprocess_config(source=uri, classes=export.class_names)
    listing = sources.list_source(pp)
    if not listing.items:
        raise UserError(f"{listing.root}: no images in the class folders")
    rows = score(preprocessed_images(listing.items, pp), export,
                 variant_functions(VARIANTS, lung_crop_margin(export)), gpu=config.gpu, actors=config.actors).take_all()
    rejected: dict[str, int] = {}
    for reject in listing.rejects:
        rejected[reject["reason"]] = rejected.get(reject["reason"], 0) + 1
    by_uri = {item["source_uri"]: item for item in listing.items}

    def images(uris: list[str]) -> np.ndarray:
        return raw_pixels([by_uri[u] for u in uris], pp)

    scored = _scored(f"{listing.root} (raw images, preprocessed as the training data)", rows, VARIANTS,
                     rejected, images)
    fingerprint_of = {r["source_uri"]: r["fingerprint"] for r in rows}
    return dataclasses.replace(scored, fingerprints=[fingerprint_of[u] for u in scored.source_uris])


def _scored(description: str, rows: list[dict], variants: tuple[str, ...], rejected: dict[str, int],
            images, held_out: tuple[str, ...] = ()) -> Scored:
    rows = sorted(rows, key=lambda r: r["source_uri"])
    rejected = dict(rejected)
    # Only "ok": an image with markings of the kind preprocessing dropped from the training
    # data is left out here too (and counted), as the test split would have left it out.
    for row in rows:
        if row["status"] != "ok":
            rejected[row["status"]] = rejected.get(row["status"], 0) + 1
    rows = [r for r in rows if r["status"] == "ok"]
    if not rows:
        raise UserError(f"{description}: no image could be scored ({rejected})")
    return Scored(description=description, source_uris=[r["source_uri"] for r in rows],
                  labels=np.array([r["label"] for r in rows], dtype=np.int64),
                  probs={v: np.stack([r[f"probs_{v}"] for r in rows]).astype(np.float64) for v in variants},
                  rejected=rejected, images=images, held_out=held_out,
                  # Ray Data may turn a batch's all-None object column into NaN: a source is text or nothing.
                  sources=[r.get("source") if isinstance(r.get("source"), str) else None for r in rows])


def format_summary(report: dict) -> str:
    full = report["metrics"]
    lines = [f"evaluated {report['data']['images']} images of {report['data']['evaluated']}",
             f"  accuracy {format_ci(full['accuracy'])}  balanced accuracy {format_ci(full['balanced_accuracy'])}  "
             f"AUC {format_ci(full['auc'])}  (95% CI)"]
    if "shortcuts" in report:
        masked = report["shortcuts"]["variants"]["lungs_masked"]["auc"]
        lines.append(f"  AUC with the lungs blacked out {format_ci(masked)}: see the shortcut check in "
                     f"{REPORT_MARKDOWN_FILE}")
    lines += summary_lines(report.get("sources"), format_ci)
    validation = report.get("validation_sources")
    if validation and validation["groups"]:  # each validation source would be too many lines
        lines += summary_lines(validation, format_ci, "validation split, ")
    warnings, _ = training_source_sentences(report["data"].get("training_sources"), report["model"]["class_names"])
    lines += [f"  WARNING (training data): {warning}" for warning in warnings]
    overlap = report["data"].get("near_duplicates_in_training")
    if overlap:
        lines.append(f"  {overlap['with_near_duplicate']} of {overlap['evaluated_images']} evaluated images have a "
                     f"near-duplicate in the model's training data "
                     f"(fingerprints <= {overlap['max_distance']} bits apart)")
    lines.append(f"  report: {report['output']}/{REPORT_MARKDOWN_FILE}, "
                 f"model card: {report['output']}/{MODEL_CARD_FILE}")
    return "\n".join(lines)
