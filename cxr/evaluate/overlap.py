"""Leakage check: how many evaluated images have a near-duplicate in the model's training data.

Every image preprocessing keeps carries a fingerprint (cxr.preprocess.fingerprints); each
evaluated image's nearest training fingerprint says whether a copy of it (resized,
re-windowed, re-compressed) was trained on. Evaluated shards carry their fingerprints; a
raw image tree gets them where it is preprocessed for scoring (cxr.scoring.datasets), by
the same `process_image` with the training data's settings, so both are compared alike.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from cxr import storage
from cxr.artifacts import Manifest, read_manifest
from cxr.preprocess.fingerprints import nearest_distances

# The distance used when the training data was preprocessed without grouping (-1): the
# largest distance of resized, re-windowed and re-compressed copies on 40 real X-rays.
REPORT_DISTANCE = 24


def training_overlap(training_data: str, data_uri: str, split: str, evaluated_uris: list[str]) -> dict | None:
    """Counts of evaluated shard images with a near-duplicate in the training split, or None
    when either shard set has no fingerprints (made before they were computed)."""
    evaluated = storage.resolve(data_uri)
    queries = _fingerprints(evaluated, read_manifest(evaluated.uri), split)
    if queries is None:
        return None
    return fingerprint_overlap(training_data, [queries[u] for u in evaluated_uris if u in queries])


def fingerprint_overlap(training_data: str, fingerprints: list[str]) -> dict | None:
    """Counts of `fingerprints` (the evaluated images') with a near-duplicate in the training
    split, or None when the training shards have no fingerprints."""
    training = storage.resolve(training_data)
    training_manifest = read_manifest(training.uri)
    reference = _fingerprints(training, training_manifest, "train")
    if reference is None:
        return None
    configured = training_manifest.preprocess_config().split.near_duplicate_distance
    distance = configured if configured >= 0 else REPORT_DISTANCE
    nearest = nearest_distances(fingerprints, list(reference.values()))
    return {"max_distance": distance, "training_images": len(reference), "evaluated_images": len(fingerprints),
            "with_near_duplicate": int((nearest <= distance).sum()),
            "with_same_fingerprint": int((nearest == 0).sum())}


def _fingerprints(data: storage.Location, manifest: Manifest, split: str) -> dict[str, str] | None:
    found = {}
    for path in manifest.split_paths(data, split):
        if "fingerprint" not in pq.read_schema(path, filesystem=data.fs).names:
            return None
        # Two small columns, not the images.
        table = pq.read_table(path, columns=["source_uri", "fingerprint"], filesystem=data.fs)
        found.update(zip(table.column("source_uri").to_pylist(), table.column("fingerprint").to_pylist()))
    return found
