"""Scoring datasets: Ray Data rows of decoded images, from shard files or from raw images.

Both give rows of `source_uri`, `label`, `image` (uint8 (H, W, 1)) and `status`, what
cxr.scoring.predictor scores. Shards already hold preprocessed PNGs: they are only decoded.
Raw files are read (cxr.ingest.sources) and preprocessed exactly as the model's training
data (cxr.preprocess.pipeline.process_image, with the settings of the export's manifest),
so scoring sees what training saw.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from cxr import storage
from cxr.config import PreprocessConfig
from cxr.errors import one_line
from cxr.ingest import sources
from cxr.preprocess.pipeline import block_count, process_image
from cxr.preprocess.transforms import ImageRejected, decode_png_gray

# ---------------------------------------------------------------- from shards


def shard_images(data: storage.Location, paths: list[str], with_source: bool = False):
    """Ray Data rows (source_uri, label, decoded image, status, and the source if asked) of
    shard files, lazily. Shards written before sources existed have no source column."""
    columns = ["source_uri", "image_png", "label"] + (["source"] if with_source else [])
    dataset = ray.data.read_parquet(paths, filesystem=data.fs).select_columns(columns)
    return dataset.map_batches(decode_shard_rows, batch_format="numpy")


def decode_shard_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: shard rows to what the Predictor scores."""
    images = np.stack([decode_png_gray(png) for png in batch["image_png"]])
    rows = {"source_uri": batch["source_uri"], "label": np.asarray(batch["label"], dtype=np.int64),
            "image": images[..., None], "status": np.full(len(images), "ok", dtype=object)}
    if "source" in batch:
        rows["source"] = batch["source"]
    return rows


def shard_pixels(data: storage.Location, paths: list[str], uris: list[str]) -> np.ndarray:
    """The images of `uris` in shard files, decoded: uint8 (n, H, W), in that order."""
    wanted, found = set(uris), {}
    for path in paths:
        table = pq.read_table(path, columns=["source_uri", "image_png"], filesystem=data.fs)
        for uri, png in zip(table.column("source_uri").to_pylist(), table.column("image_png").to_pylist()):
            if uri in wanted:
                found[uri] = decode_png_gray(png)
    return np.stack([found[u] for u in uris])


# ---------------------------------------------------------------- from raw images


def preprocessed_images(items: list[dict], config: PreprocessConfig):
    """Ray Data rows of listed raw images, preprocessed as the model's training data, lazily."""
    blocks = block_count(len(items), int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        preprocess_for_model, batch_format="pyarrow", batch_size=None, fn_kwargs={"config": config})


def raw_pixels(items: list[dict], config: PreprocessConfig) -> np.ndarray:
    """Listed raw images preprocessed as the model's training data: uint8 (n, H, W), in order."""
    return preprocess_for_model(pa.Table.from_pylist(items), config)["image"][..., 0]


def preprocess_for_model(batch: pa.Table, config: PreprocessConfig) -> dict[str, np.ndarray]:
    """Ray Data stage: read listed raw images and preprocess them as the model's training data.

    Every image gets a row: `status` "ok", "marking" (scored, but it carries burned-in
    markings of a kind the training data excluded) or why it could not be read; and the
    image's `fingerprint` (cxr.preprocess.fingerprints), computed by `process_image` as
    preprocessing computes it, so that evaluation can look for it in the training data.
    """
    size = config.image_size
    # Training dropped marked images; scoring still scores them, flagged.
    scoring = dataclasses.replace(config, markings=dataclasses.replace(
        config.markings, policy="keep" if config.markings.policy == "drop" else config.markings.policy))
    rows = batch.to_pylist()
    images = np.zeros((len(rows), size, size, 1), dtype=np.uint8)
    status, detail, marking = [], [], np.full(len(rows), np.nan, dtype=np.float32)
    fingerprint = np.full(len(rows), None, dtype=object)
    with sources.BatchReader(config.synthetic) as reader:
        for i, item in enumerate(rows):
            stage = "read_error"
            try:
                data, _ = reader.read(item)
                stage = "processing_error"
                result = process_image(data, scoring, sources.input_format(item["source_uri"]))
                images[i, ..., 0] = decode_png_gray(result["image_png"])
                marking[i] = result["marking_score"]
                fingerprint[i] = result["fingerprint"]
                flagged = config.markings.policy == "drop" and result["marking_score"] >= config.markings.threshold
                status.append("marking" if flagged else "ok")
                detail.append(f"marking score {result['marking_score']:.2f}: training excluded such images"
                              if flagged else None)
            except ImageRejected as exc:
                status.append(exc.reason)
                detail.append(exc.detail)
            except Exception as exc:  # noqa: BLE001 - this image's status; the job goes on
                status.append(stage)
                detail.append(one_line(exc))
    return {"source_uri": np.array([r["source_uri"] for r in rows], dtype=object),
            "source": np.array([r.get("source") for r in rows], dtype=object),
            "label": np.array([r["label"] for r in rows], dtype=np.int64),
            "image": images, "marking_score": marking, "fingerprint": fingerprint,
            "status": np.array(status, dtype=object), "detail": np.array(detail, dtype=object)}
