"""The preprocessing job end to end on a real local Ray: synthetic, real images, zip, S3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cxr.artifacts import SPLITS
from cxr.config import MarkingConfig, PreprocessConfig, SyntheticConfig
from cxr.errors import UserError
from cxr.preprocess import pipeline
from cxr.preprocess.pipeline import run_preprocess
from tests.trees import broken_files, class_tree, png_bytes, write_tree, write_zip

pytestmark = pytest.mark.slow


def read_output(root: str, fs: pafs.FileSystem | None = None) -> tuple[dict, dict, list[dict]]:
    """(manifest, {split: rows without pixels}, rejected rows) of a finished output."""
    fs = fs or pafs.LocalFileSystem()
    with fs.open_input_stream(f"{root}/manifest.json") as stream:
        manifest = json.loads(stream.read())
    splits = {}
    for split in SPLITS:
        rows = []
        for shard in manifest["shards"][split]:
            table = pq.read_table(f"{root}/{shard['path']}", filesystem=fs)
            assert table.num_rows == shard["rows"]
            rows += table.to_pylist()
        splits[split] = rows
    rejected = pq.read_table(f"{root}/rejected.parquet", filesystem=fs).to_pylist()
    return manifest, splits, rejected


def check_consistent(manifest: dict, splits: dict, rejected: list[dict]) -> None:
    """Counts add up, and every input is in exactly one place."""
    counts = manifest["counts"]
    assert counts["found"] == counts["kept"] + counts["rejected"]
    assert counts["kept"] == sum(len(rows) for rows in splits.values())
    assert counts["rejected"] == len(rejected)
    for split, rows in splits.items():
        assert counts["splits"][split]["total"] == len(rows)
        for name in manifest["class_names"]:
            assert counts["splits"][split][name] == sum(r["class_name"] == name for r in rows)
    uris = [r["source_uri"] for rows in splits.values() for r in rows] + [r["source_uri"] for r in rejected]
    assert len(uris) == len(set(uris)) == counts["found"]
    hashes = [r["content_hash"] for rows in splits.values() for r in rows]
    assert len(hashes) == len(set(hashes)), "an exact duplicate survived"


def test_synthetic_job_end_to_end_and_stable_split(ray_session, tmp_path, monkeypatch):
    config = PreprocessConfig(output=str(tmp_path / "out"), image_size=64,
                              synthetic=SyntheticConfig(images=160, size=128, duplicate_fraction=0.03))
    manifest, splits, rejected = run_and_read(config)
    check_consistent(manifest, splits, rejected)
    assert manifest["class_names"] == ["COVID", "Normal"]
    kept_uris = {r["source_uri"] for rows in splits.values() for r in rows}
    duplicates = [r for r in rejected if r["reason"] == "duplicate"]
    assert duplicates and all(r["detail"].split()[-1] in kept_uris for r in duplicates)
    assert manifest["counts"]["rejected_by_reason"].get("marking", 0) > 0
    assert manifest["config"]["clahe"] == {"kernel_size": None, "clip_limit": 0.01, "nbins": 256}
    first = splits["train"][0]
    pixels = np.asarray(Image.open(io.BytesIO(first["image_png"])))
    assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
    assert first["orig_height"] > 100 and first["label"] in (0, 1)
    assert not (tmp_path / "out" / "_staging").exists()

    with pytest.raises(UserError, match="already holds a finished output"):
        run_preprocess(config)
    # Rerun with another block layout: every image lands in the same split.
    monkeypatch.setattr(pipeline, "ROWS_PER_BLOCK", 7)
    _, again, _ = run_and_read(PreprocessConfig(**{**config.__dict__, "overwrite": True}))
    assert split_of(again) == split_of(splits)


def run_and_read(config: PreprocessConfig):
    run_preprocess(config)
    return read_output(config.output)


def split_of(splits: dict) -> dict[str, str]:
    return {r["source_uri"]: split for split, rows in splits.items() for r in rows}


def test_real_images_and_broken_files(ray_session, real_sample, tmp_path):
    """A handful of real X-rays, each kind of bad file, 16-bit, JPEG and RGBA variants."""
    source = tmp_path / "raw"
    reals = {}
    for class_name in ("COVID", "Normal"):
        for path in sorted((real_sample / class_name / "images").glob("*.png"))[:6]:
            reals[f"{class_name}/images/{path.name}"] = path.read_bytes()
    gray = np.asarray(Image.open(sorted((real_sample / "COVID" / "images").glob("*.png"))[0]).convert("L"))
    variants = {
        "COVID/images/sixteen-bit.png": png_bytes((gray.astype(np.uint16) * 257)[::-1]),
        "COVID/images/rgba.png": png_bytes(np.dstack([gray.T] * 3 + [np.full_like(gray.T, 255)])),
        "Normal/images/huge.png": png_bytes(np.zeros((7500, 7500), np.uint8), compress_level=1),
        "Normal/images/copy.png": reals[next(k for k in sorted(reals) if k.startswith("Normal/"))],
        "Normal/masks/mask.png": png_bytes(np.zeros((64, 64), np.uint8)),
        "README.md.txt": b"about this dataset",
    }
    jpeg = io.BytesIO()
    Image.fromarray(gray[:, ::-1]).save(jpeg, format="JPEG", quality=92)
    variants["Normal/images/flipped.jpg"] = jpeg.getvalue()
    broken = {f"COVID/images/{name}": data for name, data in broken_files().items()}
    write_tree(source, {**reals, **variants, **broken})

    config = PreprocessConfig(source=str(source), output=str(tmp_path / "out"), image_size=64,
                              markings=MarkingConfig(policy="inpaint"))
    manifest, splits, rejected = run_and_read(config)
    check_consistent(manifest, splits, rejected)
    reason_of = {Path(r["source_uri"]).name: r["reason"] for r in rejected}
    assert reason_of["truncated.png"] == reason_of["empty.png"] == reason_of["notes.png"] == "undecodable"
    assert reason_of["huge.png"] == "too_large"
    assert reason_of["README.md.txt"] == "wrong_layout"
    assert "duplicate" in reason_of.values()
    kept = {Path(r["source_uri"]).name: r for rows in splits.values() for r in rows}
    assert {"sixteen-bit.png", "rgba.png", "flipped.jpg"} <= set(kept)
    assert kept["rgba.png"]["orig_height"] == gray.shape[1]
    assert manifest["counts"]["ignored"] == {"masks": 1}
    assert manifest["counts"]["found"] == len(reals) + len(variants) + len(broken) - 1  # the mask


def test_zip_source(ray_session, tmp_path):
    archive = write_zip(tmp_path / "cxr.zip", class_tree(per_class=8), prefix="Dataset/")
    manifest, splits, rejected = run_and_read(
        PreprocessConfig(source=str(archive), output=str(tmp_path / "out"), image_size=64))
    check_consistent(manifest, splits, rejected)
    assert manifest["source"]["kind"] == "zip" and manifest["counts"]["found"] == 16
    assert manifest["counts"]["ignored"] == {"masks": 16}


def test_s3_to_s3_folder_and_zip(ray_session, s3_env, s3_bucket, s3_client, tmp_path):
    for relative, data in class_tree(per_class=8).items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"raw/{relative}", Body=data)
    archive = write_zip(tmp_path / "cxr.zip", class_tree(per_class=4, kaggle_layout=False))
    s3_client.upload_file(str(archive), s3_bucket, "archives/cxr.zip")
    from cxr.storage import s3_filesystem

    for source, found in ((f"s3://{s3_bucket}/raw/", 16), (f"s3://{s3_bucket}/archives/cxr.zip", 8)):
        name = "folder" if source.endswith("/") else "zip"
        output = f"s3://{s3_bucket}/shards/{name}"
        run_preprocess(PreprocessConfig(source=source, output=output, image_size=64))
        manifest, splits, rejected = read_output(output.removeprefix("s3://"), s3_filesystem())
        check_consistent(manifest, splits, rejected)
        assert manifest["counts"]["found"] == found
        assert all(r["source_uri"].startswith(f"s3://{s3_bucket}/") for rows in splits.values() for r in rows)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="shards/")["Contents"]}
    assert "shards/folder/manifest.json" in keys
    assert not any("_staging" in k for k in keys)


def test_overwrite_refuses_to_delete_foreign_files(ray_session, tmp_path):
    output = tmp_path / "mine"
    write_tree(output, {"thesis.tex": b"\\documentclass"})
    with pytest.raises(UserError, match="did not write"):
        run_preprocess(PreprocessConfig(output=str(output), overwrite=True,
                                        synthetic=SyntheticConfig(images=10)))
    assert (output / "thesis.tex").exists()
