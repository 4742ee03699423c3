"""Batch inference: raw chest X-rays in, one row of probabilities per image out.

Listing runs on the driver; reading and preprocessing (exactly as for the model's
training data, from the manifest in its export) run in parallel Ray Data tasks; the
model runs in Ray Data actors, each loading it once. Every file found gets a row:
unreadable images and other files carry a status instead of probabilities, so one bad
file never stops the job and none goes missing.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cxr import claims, progress, resources, runtime, storage
from cxr.artifacts import PREDICTIONS_CSV_FILE, PREDICTIONS_FILE, PREDICTIONS_FILES, PredictionsLayout, positive_label
from cxr.config import PredictConfig
from cxr.errors import UserError
from cxr.evaluate.metrics import predict_labels  # the operating-point rule the evaluation report states
from cxr.ingest import sources
from cxr.scoring.datasets import preprocessed_images
from cxr.scoring.export import open_export
from cxr.scoring.predictor import SCORED, score

log = logging.getLogger(__name__)


def run_predict(config: PredictConfig) -> dict:
    """Score every image under `config.input`; write the predictions; return a summary."""
    started = time.time()
    if storage.contains(config.input, config.output):
        # The next run over --input would list the predictions as files to score.
        raise UserError(f"--output {config.output} lies inside --input {config.input}: choose an --output "
                        "outside --input")
    export = open_export(config.model)
    # Files too large for the training data's --max-pixels are rejected unread, as preprocess did.
    listing = sources.list_images(config.input, max_pixels=export.manifest.preprocess_config().max_pixels)
    output = PredictionsLayout.at(config.output)
    storage.check_bucket(output.root)
    with claims.claimed(output.claim, "predict", "--output") as claim:
        _prepare_output(output, config.overwrite)
        return _score_and_write(config, export, listing, output, claim, started)


def _score_and_write(config: PredictConfig, export, listing: sources.Listing, output: PredictionsLayout,
                     claim: claims.Claim, started: float) -> dict:
    """Everything after the checks, with the output claimed."""
    log.info("scoring %d images from %s with %s (%s, %d px)", len(listing.items), listing.root, export.uri,
             ", ".join(export.class_names), export.image_size)

    # A pool larger than the cluster would wait forever: refused, or waited for, first.
    resources.wait_for_actors(config.gpu, config.actors, runtime.ensure_ray(), config.wait_timeout)
    with progress.Progress("predict", len(listing.items), "images",
                           runtime.progress_style(ray_data_bars=True)) as shown:
        dataset = score(preprocessed_images(listing.items, export.manifest.preprocess_config()), export,
                        gpu=config.gpu, actors=config.actors, tally=shown.tally)
        scored = dataset.take_all()  # a few hundred bytes a row: the pixels stayed in the actors

    table = predictions_table(scored, listing.rejects, export.class_names, config.threshold)
    if table.num_rows != listing.found:  # a bug, never the user's
        raise RuntimeError(f"found {listing.found} files but wrote {table.num_rows} rows")
    claim.check()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(output.parquet, buffer.getvalue())
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    storage.write_bytes(output.csv, buffer.getvalue())
    summary = {"model": export.uri, "input": listing.root, "output": output.root.uri, "files": listing.found,
               "status": dict(Counter(table.column("status").to_pylist()).most_common()),
               "predicted": dict(Counter(c for c in table.column("predicted_class").to_pylist() if c)),
               "threshold": config.threshold, "ignored": listing.ignored,
               "seconds": round(time.time() - started, 2),
               "config": config.to_dict()}  # `--config summary.json` repeats this scoring
    storage.write_json(output.summary, summary)
    return summary


def _prepare_output(output: PredictionsLayout, overwrite: bool) -> None:
    existing = [name for name in PREDICTIONS_FILES if storage.exists(output.root.join(name))]
    if existing and not overwrite:
        raise UserError(f"{output.root.uri}: already holds {', '.join(existing)}; pass --overwrite")
    storage.check_writable(output.root)


def predictions_table(scored: list[dict], rejects: list[dict], class_names: tuple[str, ...],
                      threshold: float | None) -> pa.Table:
    """One row per file: path, predicted class, each class's probability, marking score, status."""
    scored = sorted(scored, key=lambda row: row["source_uri"])
    probs = np.array([row["probs_full"] for row in scored], dtype=np.float32).reshape(-1, len(class_names))
    ok = np.array([row["status"] in SCORED for row in scored], dtype=bool)
    predicted = np.full(len(scored), -1)
    if ok.any():
        predicted[ok] = predict_labels(probs[ok], positive_label(class_names), threshold)
    columns = {
        "path": [row["source_uri"] for row in scored] + [r["source_uri"] for r in rejects],
        "predicted_class": [class_names[p] if p >= 0 else None for p in predicted] + [None] * len(rejects),
    }
    for index, name in enumerate(class_names):
        values = [float(v) if o else None for v, o in zip(probs[:, index], ok)]
        columns[f"prob_{name}"] = pa.array(values + [None] * len(rejects), type=pa.float32())
    scores = [None if np.isnan(row["marking_score"]) else float(row["marking_score"]) for row in scored]
    columns["marking_score"] = pa.array(scores + [None] * len(rejects), type=pa.float32())
    columns["status"] = [row["status"] for row in scored] + [r["reason"] for r in rejects]
    # Ray Data turns a batch's all-None object column into NaN: a detail is text or nothing.
    columns["detail"] = pa.array([row["detail"] if isinstance(row["detail"], str) else None for row in scored]
                                 + [r["detail"] for r in rejects], type=pa.string())
    return pa.table(columns)


def format_summary(summary: dict) -> str:
    status = ", ".join(f"{k} {v}" for k, v in summary["status"].items())
    predicted = ", ".join(f"{k} {v}" for k, v in sorted(summary["predicted"].items()))
    return "\n".join([
        f"scored {summary['files']} files from {summary['input']} in {summary['seconds']:.1f} s",
        f"  status: {status}",
        f"  predicted: {predicted or 'none'}",
        f"  predictions: {summary['output']}/{PREDICTIONS_FILE} and {PREDICTIONS_CSV_FILE}",
    ])
