"""Evaluation and batch inference end to end: a tiny trained model, a real local Ray, S3.

One small model is trained once for the session (tiny_run in tests/conftest.py: 64 px synthetic
images, 2 epochs); the tests then run jobs/evaluate.py and jobs/predict.py on it as a user does.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cxr.cli.evaluate import JOB as EVALUATE
from cxr.cli.predict import JOB as PREDICT
from cxr.config import EvaluateConfig, PredictConfig, PreprocessConfig, SyntheticConfig
from cxr.ingest.synthetic import render_synthetic
from cxr.preprocess.pipeline import run_preprocess
from cxr.preprocess.transforms import encode_png
from tests.cli import assert_one_line_error, run_job
from tests.dicom_files import gradient, make_dicom

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(ray_session, tiny_shards, tiny_run) -> dict:
    return {"shards": tiny_shards, "run": tiny_run,
            "env": {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}}


def write_raw_images(folder: Path, per_class: int, seed: int = 5) -> list[Path]:
    """A class-per-folder tree of raw synthetic X-rays, as a user would bring."""
    paths = []
    for class_name in ("COVID", "Normal"):
        (folder / class_name).mkdir(parents=True)
        for index in range(per_class):
            image = render_synthetic(class_name, index, seed=seed, size=150, marking_fraction=0.0)
            paths.append(folder / class_name / f"{index:03d}.png")
            paths[-1].write_bytes(encode_png(image.pixels))
    return paths


def test_evaluate_writes_a_report_with_intervals_shortcuts_and_a_model_card(trained):
    result = run_job("evaluate", "--run", str(trained["run"]), "--resamples", "200", "--gradcam-examples", "2",
                     env=trained["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AUC with the lungs blacked out" in result.stdout
    report_dir = trained["run"] / "report"
    report = json.loads((report_dir / "report.json").read_text())
    manifest = json.loads((Path(trained["shards"]) / "manifest.json").read_text())
    # The report records the evaluation's settings: `--config report.json` repeats it.
    assert EVALUATE.build_config(EVALUATE.parse_args(["--config", str(report_dir / "report.json")])) == \
        EvaluateConfig(run=str(trained["run"]), resamples=200, gradcam_examples=2)

    # Every test image scored once; the confusion matrix accounts for all of them.
    test_counts = manifest["counts"]["splits"]["test"]
    assert report["data"]["images"] == test_counts["total"]
    assert report["data"]["per_class"] == {n: test_counts[n] for n in manifest["class_names"]}
    assert np.sum(report["metrics"]["confusion_matrix"]) == test_counts["total"]
    # The threshold comes from the validation split, and the report says so.
    assert 0 <= report["threshold"]["value"] <= 1 and "validation split" in report["threshold"]["note"]
    assert report["metrics"]["threshold"] == report["threshold"]["value"]
    for metric in (report["metrics"]["accuracy"], report["metrics"]["auc"],
                   report["metrics"]["per_class"]["COVID"]["sensitivity"]):
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    # Sensitivity of COVID, recomputed from the confusion matrix.
    (tp, fn), _ = report["metrics"]["confusion_matrix"]
    assert report["metrics"]["per_class"]["COVID"]["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
    assert set(report["shortcuts"]["variants"]) == {"lungs_masked", "lungs_only"}
    assert report["shortcuts"]["verdict"].startswith("AUC on full images")
    assert {g["group"] for g in report["gradcam"]} <= {"true_positive", "false_positive", "false_negative"}

    for figure in ("roc", "confusion_matrix", "reliability", "learning_curve", "gradcam"):
        with Image.open(report_dir / "figures" / f"{figure}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
    markdown = (report_dir / "report.md").read_text()
    assert "## Shortcut check" in markdown and "lung fields blacked out" in markdown
    card = (report_dir / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "Known confounders" in card and str(test_counts["total"]) in card
    # The shards have the default lung crop; this model trained without augmentation.
    assert "Trained with the lung crop: levers" in card and "## Generalization" in markdown


def training_images_as_raw_files(shards: str, folder: Path, count: int) -> list[Path]:
    """`count` images of the training split, written as the synthetic source generated them:
    raw files a user could bring back unknowingly."""
    from cxr.artifacts import read_manifest
    from cxr.ingest.sources import list_synthetic
    from cxr.ingest.synthetic import render_synthetic_png
    from tests.test_preprocess_job import read_output

    spec = read_manifest(shards).preprocess_config().synthetic
    listed = {item["source_uri"]: item for item in list_synthetic(spec).items}
    paths = []
    for row in read_output(shards)[1]["train"][:count]:
        item = listed[row["source_uri"]]
        data, _ = render_synthetic_png(item["class_name"], item["synthetic_index"], seed=spec.seed, size=spec.size,
                                       marking_fraction=spec.marking_fraction)
        paths.append(folder / item["class_name"] / f"trained-{len(paths)}.png")
        paths[-1].write_bytes(data)
    return paths


def test_evaluate_on_a_raw_image_tree_reports_its_near_duplicates_in_the_training_data(trained, tmp_path):
    raw = tmp_path / "raw"
    paths = write_raw_images(raw, per_class=6)
    copies = training_images_as_raw_files(trained["shards"], raw, count=3)
    (raw / "Normal" / "broken.png").write_bytes(b"not a png")
    result = run_job("evaluate", "--run", str(trained["run"]), "--data", str(raw), "--output",
                     str(tmp_path / "report"), "--resamples", "100", "--gradcam-examples", "0", env=trained["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["data"]["images"] == len(paths) + len(copies)
    assert report["data"]["per_class"] == {name: 6 + sum(p.parent.name == name for p in copies)
                                           for name in ("COVID", "Normal")}
    assert report["data"]["not_scored"] == {"undecodable": 1}
    assert "gradcam" not in report and "raw images" in report["data"]["evaluated"]
    # Fingerprinted as preprocessing fingerprints: the trained-on files are found exactly.
    overlap = report["data"]["near_duplicates_in_training"]
    manifest = json.loads((Path(trained["shards"]) / "manifest.json").read_text())
    assert overlap["evaluated_images"] == report["data"]["images"]
    assert overlap["training_images"] == manifest["counts"]["splits"]["train"]["total"]
    assert overlap["with_same_fingerprint"] >= len(copies) and overlap["with_near_duplicate"] >= len(copies)
    assert f"{overlap['with_near_duplicate']} of {overlap['evaluated_images']} evaluated images" in result.stdout


def test_evaluate_on_shards_reports_near_duplicates_in_the_training_data(trained, tmp_path):
    result = run_job("evaluate", "--run", str(trained["run"]), "--data", str(trained["shards"]), "--output",
                     str(tmp_path / "report"), "--resamples", "100", "--gradcam-examples", "0", env=trained["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    overlap = report["data"]["near_duplicates_in_training"]
    manifest = json.loads((Path(trained["shards"]) / "manifest.json").read_text())
    assert overlap["evaluated_images"] == report["data"]["images"]
    assert overlap["training_images"] == manifest["counts"]["splits"]["train"]["total"]
    # Exact duplicates never cross splits; the synthetic images, alike by design, are near.
    assert overlap["with_same_fingerprint"] == 0 and 0 < overlap["with_near_duplicate"] <= overlap["evaluated_images"]
    assert f"{overlap['with_near_duplicate']} of {overlap['evaluated_images']} evaluated images" in result.stdout
    assert "near-duplicate among the model's" in (tmp_path / "report" / "report.md").read_text()


def test_predict_scores_every_file_as_training_preprocessed_it(trained, tmp_path, s3_bucket, s3_client, s3_env):
    raw = tmp_path / "raw"
    paths = write_raw_images(raw, per_class=4)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in paths:
            bundle.write(path, f"batch/{path.parent.name}-{path.name}")
        bundle.writestr("batch/corrupt.png", b"\x89PNG\r\n\x1a\n garbage")
        bundle.writestr("batch/readme.txt", "scanned 2026-11")
        bundle.writestr("batch/lateral.dcm", make_dicom(gradient(), view="LL"))
    output = f"s3://{s3_bucket}/predictions/zip"
    result = run_job("predict", "--model", str(trained["run"] / "model"), "--input", str(archive),
                     "--output", output, env={**trained["env"], **s3_env})
    assert result.returncode == 0, result.stderr[-3000:]
    table = pq.read_table(io.BytesIO(
        s3_client.get_object(Bucket=s3_bucket, Key="predictions/zip/predictions.parquet")["Body"].read()))
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert len(rows) == len(paths) + 3
    assert rows["readme.txt"]["status"] == "unsupported_file" and rows["readme.txt"]["prob_COVID"] is None
    assert rows["corrupt.png"]["status"] == "undecodable" and rows["corrupt.png"]["predicted_class"] is None
    assert rows["lateral.dcm"]["status"] == "lateral_view" and rows["lateral.dcm"]["prob_COVID"] is None
    assert rows["lateral.dcm"]["detail"].startswith("ViewPosition LL:")
    # Every listed image went through the scoring actors, and the log says so.
    assert f"predict: {len(paths) + 2}/{len(paths) + 2} images (100%)" in result.stdout
    scored = [r for r in rows.values() if r["status"] == "ok"]
    assert len(scored) == len(paths)
    for row in scored:
        assert row["prob_COVID"] + row["prob_Normal"] == pytest.approx(1.0, abs=1e-5)
        assert row["predicted_class"] == ("COVID" if row["prob_COVID"] >= row["prob_Normal"] else "Normal")
        assert 0 <= row["marking_score"] <= 1
    # The summary records the scoring's settings: `--config summary.json` repeats it.
    (tmp_path / "summary.json").write_bytes(
        s3_client.get_object(Bucket=s3_bucket, Key="predictions/zip/summary.json")["Body"].read())
    assert PREDICT.build_config(PREDICT.parse_args(["--config", str(tmp_path / "summary.json")])) == \
        PredictConfig(model=str(trained["run"] / "model"), input=str(archive), output=output)
    csv = s3_client.get_object(Bucket=s3_bucket, Key="predictions/zip/predictions.csv")["Body"].read().decode()
    assert csv.splitlines()[0].startswith('"path","predicted_class","prob_COVID","prob_Normal"')
    assert len(csv.strip().splitlines()) == len(rows) + 1

    # The job's probabilities are the model's on the image preprocessed as its training data.
    from cxr.preprocess.pipeline import process_image
    from cxr.scoring.export import open_export
    from cxr.train.models import load_model

    export = open_export(str(trained["run"] / "model"))
    image = process_image(paths[0].read_bytes(), export.manifest.preprocess_config())["image_png"]
    pixels = np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32)[None, ..., None]
    expected = load_model(str(trained["run"] / "model" / "model.keras")).predict(pixels, verbose=0)[0]
    row = rows[f"{paths[0].parent.name}-{paths[0].name}"]
    assert [row["prob_COVID"], row["prob_Normal"]] == pytest.approx(expected.tolist(), abs=1e-5)


def test_bad_input_fails_in_one_line(trained, tmp_path):
    env = trained["env"]
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_job("evaluate", "--run", str(tmp_path / "empty"), env=env), "no exported model")
    assert_one_line_error(run_job("evaluate", "--run", str(tmp_path / "nowhere"), env=env), "no such run")
    other = str(tmp_path / "shards96")
    run_preprocess(PreprocessConfig(output=other, image_size=72, synthetic=SyntheticConfig(images=40, size=100)))
    assert_one_line_error(run_job("evaluate", "--run", str(trained["run"]), "--data", other, env=env),
                          "72 px images do not match the model's 64 px")
    model = str(trained["run"] / "model")
    assert_one_line_error(run_job("predict", "--model", model, "--input", str(tmp_path / "empty"),
                                  "--output", str(tmp_path / "out"), env=env), "the folder holds no files")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    assert_one_line_error(run_job("predict", "--model", model, "--input", str(tmp_path / "texts"),
                                  "--output", str(tmp_path / "out"), env=env), "no PNG/JPEG/DICOM images found")
    assert_one_line_error(run_job("predict", "--model", str(tmp_path / "empty"), "--input", str(tmp_path / "texts"),
                                  "--output", str(tmp_path / "out"), env=env), "no exported model")


def test_predictions_table_takes_what_ray_data_returns_for_empty_details():
    from cxr.predict.job import predictions_table

    scored = [{"source_uri": "b.png", "probs_full": np.array([0.2, 0.8]), "marking_score": 0.1,
               "status": "ok", "detail": float("nan")},  # an all-None column of a batch, as Ray returns it
              {"source_uri": "a.png", "probs_full": np.array([np.nan, np.nan]), "marking_score": np.nan,
               "status": "undecodable", "detail": "cannot identify image file"}]
    rejects = [{"source_uri": "c.txt", "reason": "unsupported_file", "detail": "not a .png/.jpg/.jpeg file"}]
    table = predictions_table(scored, rejects, ["COVID", "Normal"], threshold=0.15)
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == ["a.png", "b.png", "c.txt"]
    assert [r["detail"] for r in rows] == ["cannot identify image file", None, "not a .png/.jpg/.jpeg file"]
    # At threshold 0.15 a COVID probability of 0.2 is a COVID prediction, though Normal is likelier.
    assert [r["predicted_class"] for r in rows] == [None, "COVID", None]
    assert rows[1]["prob_Normal"] == pytest.approx(0.8) and rows[0]["prob_COVID"] is None
