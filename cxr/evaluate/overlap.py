"""Leakage check: how many evaluated images have a near-duplicate in the model's training data.

Both shard sets carry a fingerprint per image (cxr.preprocess.fingerprints); each evaluated
image's nearest training fingerprint says whether a copy of it (resized, re-windowed,
re-compressed) was trained on. Only shard sets are compared: a raw image tree has no
fingerprints until it is preprocessed.
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
    """Counts of evaluated images with a near-duplicate in the training split, or None when
    either shard set has no fingerprints (made before they were computed)."""
    training, evaluated = storage.resolve(training_data), storage.resolve(data_uri)
    training_manifest = read_manifest(training.uri)
    reference = _fingerprints(training, training_manifest, "train")
    queries = _fingerprints(evaluated, read_manifest(evaluated.uri), split)
    if reference is None or queries is None:
        return None
    wanted = [queries[u] for u in evaluated_uris if u in queries]
    configured = training_manifest.preprocess_config().split.near_duplicate_distance
    distance = configured if configured >= 0 else REPORT_DISTANCE
    nearest = nearest_distances(wanted, list(reference.values()))
    return {"max_distance": distance, "training_images": len(reference), "evaluated_images": len(wanted),
            "with_near_duplicate": int((nearest <= distance).sum()),
            "with_same_fingerprint": int((nearest == 0).sum())}


def _fingerprints(data: storage.Location, manifest: Manifest, split: str) -> dict[str, str] | None:
    found = {}
    for path in manifest.split_paths(data, split):
        table = pq.read_table(path, filesystem=data.fs)
        if "fingerprint" not in table.column_names:
            return None
        found.update(zip(table.column("source_uri").to_pylist(), table.column("fingerprint").to_pylist()))
    return found
