"""manifest.json as jobs/preprocess.py writes it, without running the job: for tests of its readers."""

from __future__ import annotations

import copy

from cxr.artifacts import SCHEMA_VERSION, Manifest

# A small synthetic run's manifest, as written (packages and timings shortened).
SAMPLE = {
    "schema_version": SCHEMA_VERSION,
    "created_at": "2026-01-01T00:00:00+00:00",
    "cxr_version": "0.1.0",
    "packages": {"ray": "2.60.0"},
    "source": {"uri": "synthetic", "kind": "synthetic", "root": "synthetic://seed-0"},
    "class_names": ["COVID", "Normal"],
    "image": {"height": 64, "width": 64, "channels": 1, "format": "png"},
    "counts": {
        "found": 60, "kept": 50, "rejected": 10,
        "splits": {"train": {"COVID": 11, "Normal": 29, "total": 40},
                   "val": {"COVID": 1, "Normal": 4, "total": 5},
                   "test": {"COVID": 2, "Normal": 3, "total": 5}},
        "classes": {"COVID": 14, "Normal": 36},
        "rejected_by_reason": {"duplicate": 1, "marking": 9},
        "inpainted": 0,
        "ignored": {},
    },
    "shards": {"train": [{"path": "train/part-00000.parquet", "rows": 40}],
               "val": [{"path": "val/part-00000.parquet", "rows": 5}],
               "test": [{"path": "test/part-00000.parquet", "rows": 5}]},
    "columns": {"image_png": "binary", "label": "int32"},
    "config": {"source": "synthetic", "output": "outputs/shards/synthetic", "image_size": 64, "classes": None,
               "clahe": {"kernel_size": None, "clip_limit": 0.01, "nbins": 256},
               "markings": {"policy": "drop", "threshold": 0.5},
               "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0},
               "synthetic": {"images": 60, "seed": 0, "size": 320, "covid_fraction": 0.27, "marking_fraction": 0.15,
                             "duplicate_fraction": 0.02},
               "download": {"raw_cache": None, "archive": False, "concurrency": 8, "retries": 5,
                            "backoff_seconds": 0.5, "max_backoff_seconds": 60.0, "timeout_seconds": 60.0,
                            "max_failed_share": 0.01, "page_size": 200},
               "max_pixels": 50000000, "working_max_side": 1024, "rows_per_shard": 1000, "overwrite": False},
    "timing": {"wall_seconds": {"process": 10.0, "total": 12.5}, "stage_cpu_seconds": {"decode": 0.1}},
}


def manifest_json(changes: dict | None = None) -> dict:
    """SAMPLE with `changes` merged in, section by section (nested dicts are merged, not replaced)."""
    return _merged(copy.deepcopy(SAMPLE), changes or {})


def as_manifest(changes: dict | None = None) -> Manifest:
    """The typed view of `manifest_json(changes)`."""
    return Manifest.from_dict(manifest_json(changes))


def _merged(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        base[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base
