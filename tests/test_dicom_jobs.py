"""DICOM inputs through the jobs on a real local Ray: every source, every reject, no patient
data in anything written, and the same shard images and predictions as the PNGs they came from."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, RLELossless

from cxr.config import PreprocessConfig
from cxr.ingest.synthetic import render_synthetic
from cxr.preprocess.pipeline import run_preprocess
from cxr.preprocess.transforms import decode_image, decode_png_gray, to_grayscale
from tests.cli import run_job
from tests.dicom_files import PATIENT_ID, make_dicom
from tests.kaggle_server import WRAPPER, image_name
from tests.test_kaggle_job import kaggle_env
from tests.test_preprocess_job import check_consistent, read_output
from tests.trees import write_tree, write_zip

pytestmark = pytest.mark.slow

# What must appear nowhere cxr writes: the planted name's parts, the ID, the birth date, the study.
PLANTED = (b"Plantedname", b"Zelda", PATIENT_ID.encode(), b"19700101", b"Planted study")
SYNTAXES = ("", RLELossless, JPEG2000Lossless, JPEGLosslessSV1)
KEPT_PER_CLASS = 6


def to_12_bits(pixels8: np.ndarray) -> np.ndarray:
    return np.rint(pixels8.astype(np.float64) * 4095 / 255).astype(np.uint16)


def dicom_x_ray(pixels8: np.ndarray, monochrome1: bool, syntax: str = "") -> bytes:
    """An 8-bit gray image as the 12-bit DICOM a hospital would send, MONOCHROME1 or 2."""
    stored = to_12_bits(pixels8)
    if monochrome1:
        return make_dicom(4095 - stored, photometric="MONOCHROME1", syntax=syntax)
    return make_dicom(stored, syntax=syntax)


def dicom_tree() -> tuple[dict[str, bytes], dict[str, str]]:
    """A Kaggle-layout tree of DICOMs (every name form and syntax) and bad files; and each bad file's reason."""
    files = {}
    for c, class_name in enumerate(("COVID", "Normal")):
        for i in range(KEPT_PER_CLASS):
            pixels = render_synthetic(class_name, i, seed=4, size=96, marking_fraction=0.0).pixels
            name = (f"{class_name}-{i}.dcm", f"{class_name}-{i}.DICOM", f"IM{c}{i:03d}",
                    f"1.2.826.0.1.3680043.{c}.{i}")[i % 4]
            data = (make_dicom(pixels, syntax=JPEGBaseline8Bit) if i == 5
                    else dicom_x_ray(pixels, monochrome1=i % 2 == 1, syntax=SYNTAXES[i % 4]))
            files[f"{class_name}/images/{name}"] = data
    signed = render_synthetic("Normal", 40, seed=4, size=96, marking_fraction=0.0).pixels.astype(np.int16) * 64 - 8192
    files["Normal/images/signed.dcm"] = make_dicom(signed, bits_stored=16)
    good = files["COVID/images/COVID-0.dcm"]
    bad = {
        "colour.dcm": (make_dicom(np.zeros((96, 96, 3), np.uint8)), "colour"),
        "frames.dcm": (make_dicom(np.zeros((2, 96, 96), np.uint16), frames=2), "multi_frame"),
        "nopixels.dcm": (make_dicom(np.zeros((96, 96), np.uint16), pixel_data=False), "no_pixel_data"),
        "truncated.dcm": (good[: len(good) - 2000], "undecodable"),
        "huge.dcm": (make_dicom(np.zeros((96, 96), np.uint16), extra={"Rows": 30_000, "Columns": 30_000}),
                     "too_large"),
        "lateral.dcm": (make_dicom(to_12_bits(np.full((96, 96), 128, np.uint8)), view="LL"), "lateral_view"),
        "NOTES": (b"not a DICOM, whatever its missing extension says\n", "unsupported_file"),
    }
    for name, (data, _) in bad.items():
        files[f"COVID/images/{name}"] = data
    return files, {name: reason for name, (_, reason) in bad.items()}


def check_dicom_output(manifest: dict, splits: dict, rejected: list[dict], reasons: dict[str, str]) -> None:
    check_consistent(manifest, splits, rejected)
    assert manifest["counts"]["found"] == 2 * KEPT_PER_CLASS + 1 + len(reasons)
    assert manifest["counts"]["kept"] == 2 * KEPT_PER_CLASS + 1  # the signed one too
    assert {r["source_uri"].rsplit("/", 1)[-1]: r["reason"] for r in rejected} == reasons
    assert Counter(r["class_name"] for rows in splits.values() for r in rows) == {"COVID": 6, "Normal": 7}


def output_bytes(root: Path) -> bytes:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    return b"".join(p.read_bytes() for p in files)


def assert_no_patient_data(everything: bytes) -> None:
    for planted in PLANTED:
        assert planted not in everything, planted


@pytest.fixture
def ray_tmpdir():
    path = tempfile.mkdtemp(prefix="cxr-ray-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_a_dicom_folder_preprocessed_with_its_rejects_and_no_patient_data_anywhere(tmp_path, ray_tmpdir):
    files, reasons = dicom_tree()
    source, output = write_tree(tmp_path / "hospital", files), tmp_path / "shards"
    # The job starts its own Ray here, so that its workers' logs can be searched too.
    result = run_job("preprocess", "--source", str(source), "--output", str(output), "--image-size", "64",
                     "--verbose", env={"RAY_TMPDIR": str(ray_tmpdir)})
    assert result.returncode == 0, result.stderr[-3000:]
    check_dicom_output(*read_output(str(output)), reasons)
    assert f"inputs found {len(files)} = kept 13 + rejected {len(reasons)}" in result.stdout

    logs = [p for p in ray_tmpdir.rglob("*") if p.is_file() and "logs" in p.parts]
    assert any(p.name == "raylet.out" for p in logs)  # the logs were searched
    assert_no_patient_data(result.stdout.encode() + result.stderr.encode() + output_bytes(output)
                           + b"".join(p.read_bytes() for p in logs))


def test_dicom_from_an_s3_folder_and_an_s3_zip(ray_session, s3_env, s3_bucket, s3_client, tmp_path):
    from cxr.storage import s3_filesystem

    files, reasons = dicom_tree()
    for relative, data in files.items():
        s3_client.put_object(Bucket=s3_bucket, Key=f"dicom/{relative}", Body=data)
    s3_client.upload_file(str(write_zip(tmp_path / "dicom.zip", files, prefix="export/")), s3_bucket, "dicom.zip")
    for source in (f"s3://{s3_bucket}/dicom/", f"s3://{s3_bucket}/dicom.zip"):
        output = f"{s3_bucket}/shards/{'zip' if source.endswith('zip') else 'folder'}"
        run_preprocess(PreprocessConfig(source=source, output=f"s3://{output}", image_size=64))
        check_dicom_output(*read_output(output, s3_filesystem()), reasons)


def test_dicom_from_kaggle(ray_session, fake_kaggle, tmp_path):
    for class_name in ("COVID", "Normal"):
        for index in (1, 2):
            png = fake_kaggle.files.pop(image_name(class_name, index))
            pixels = decode_image(png, 10**8)
            fake_kaggle.files[f"{WRAPPER}/{class_name}/images/{class_name}-{index}.dcm"] = dicom_x_ray(
                pixels, monochrome1=index == 2, syntax=RLELossless)
    output = tmp_path / "shards"
    result = run_job("preprocess", "--source", "kaggle", "--output", str(output), "--image-size", "64",
                     env=kaggle_env(fake_kaggle, ray_session))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, splits, rejected = read_output(str(output))
    check_consistent(manifest, splits, rejected)
    kept = [r["source_uri"] for rows in splits.values() for r in rows]
    assert sum(uri.endswith(".dcm") for uri in kept) == 4
    assert {r["reason"] for r in rejected} == {"wrong_layout"}  # the metadata spreadsheets


# ---------------------------------------------------------------- real images


def windowed_12_bit(gray8: np.ndarray, monochrome1: bool, syntax: str = "") -> bytes:
    """12-bit DICOM (values 16 x the 8-bit ones) with the window that maps them back to [0, 1]:
    DICOM's LINEAR window, centre 2040.5 and width 4081, gives exactly value / 4080."""
    stored = gray8.astype(np.uint16) * 16
    if monochrome1:
        return make_dicom(4080 - stored, photometric="MONOCHROME1", window=(2040.5, 4081), syntax=syntax)
    return make_dicom(stored, window=(2040.5, 4081), syntax=syntax)


def test_real_x_rays_as_12_bit_dicom_give_the_png_path_images_and_predictions(
        ray_session, real_sample, tiny_run, tmp_path):
    """Windowed 12-bit DICOMs of real PNGs give the PNG path's very shard images and predictions.

    Without a window (the full 12-bit range), the gray values differ from the PNG's by under
    1/8000, and still CLAHE (256 histogram bins) moves some images' pixels by up to about
    20 levels where a gray level sits on a bin edge: close, not equal; checked on average.
    """
    from cxr.config import PredictConfig
    from cxr.predict.job import run_predict

    pngs = [p for name in ("COVID", "Normal") for p in sorted((real_sample / name / "images").glob("*.png"))[:5]]
    trees = {"png": {}, "mono1": {}, "mono2": {}, "full_range": {}}
    for path in pngs:
        relative = f"{path.parent.parent.name}/{path.stem}"
        gray8 = np.rint(to_grayscale(decode_image(path.read_bytes(), 10**8)) * 255).astype(np.uint8)
        trees["png"][f"{relative}.png"] = path.read_bytes()
        trees["mono1"][f"{relative}.dcm"] = windowed_12_bit(gray8, monochrome1=True)
        trees["mono2"][f"{relative}.dcm"] = windowed_12_bit(gray8, monochrome1=False, syntax=JPEG2000Lossless)
        trees["full_range"][f"{relative}.dcm"] = dicom_x_ray(gray8, monochrome1=True, syntax=JPEGLosslessSV1)
    images = {}
    for name, files in trees.items():
        source = write_tree(tmp_path / "inputs" / name, files)
        run_preprocess(PreprocessConfig(source=str(source), output=str(tmp_path / f"{name}-shards")))
        manifest, splits, rejected = read_output(str(tmp_path / f"{name}-shards"))
        assert manifest["counts"]["found"] == len(pngs) == manifest["counts"]["kept"] + len(rejected)
        images[name] = {}
        for shard in (s["path"] for split in manifest["shards"].values() for s in split):
            table = pq.read_table(tmp_path / f"{name}-shards" / shard, columns=["source_uri", "image_png"])
            for uri, png in zip(table.column("source_uri").to_pylist(), table.column("image_png").to_pylist()):
                images[name][Path(uri).stem] = decode_png_gray(png).astype(int)
    assert images["png"] and all(images[name].keys() == images["png"].keys() for name in trees)
    for stem, expected in images["png"].items():
        for name in ("mono1", "mono2"):
            np.testing.assert_array_equal(images[name][stem], expected, err_msg=f"{name} {stem}")
        assert np.abs(images["full_range"][stem] - expected).mean() < 2.5, stem

    # The same model scores the DICOMs as it scores the PNGs: one batch job over the four
    # trees (inputs/<tree>/<class>/<file>), as a user would score a mixed folder.
    run_predict(PredictConfig(model=str(tiny_run / "model"), input=str(tmp_path / "inputs"),
                              output=str(tmp_path / "preds")))
    rows = pq.read_table(tmp_path / "preds" / "predictions.parquet").to_pylist()
    assert len(rows) == len(trees) * len(pngs) and {r["status"] for r in rows} <= {"ok", "marking"}
    probabilities = {name: {} for name in trees}
    for row in rows:
        path = Path(row["path"])
        probabilities[path.parent.parent.name][path.stem] = row["prob_COVID"]
    assert all(len(probabilities[name]) == len(pngs) for name in trees)
    assert_no_patient_data(output_bytes(tmp_path / "preds"))
    for stem, expected in probabilities["png"].items():
        for name in ("mono1", "mono2"):  # the same images: only float noise between batches
            assert probabilities[name][stem] == pytest.approx(expected, abs=1e-5), (name, stem)
        assert probabilities["full_range"][stem] == pytest.approx(expected, abs=0.05), stem
    assert_no_patient_data(b"".join(output_bytes(tmp_path / f"{name}-shards") for name in trees))
