"""Scoring images with an exported model, in Ray Data, as evaluation and batch inference do.

An export (`<storage>/<name>/model/`, written by the training job) holds the model and a
copy of the preprocessing manifest. Raw images are preprocessed here with the manifest's
own settings (CLAHE, size, marking policy), so inference sees what training saw. The
model is loaded once per Ray Data actor, on a GPU when asked.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cxr import progress, storage
from cxr.config import ClaheConfig, MarkingConfig, PreprocessConfig, SplitConfig, SyntheticConfig
from cxr.errors import UserError, one_line
from cxr.manifest import read_manifest
from cxr.shortcuts import VARIANTS, apply_variant

MODEL_FILE = "model.keras"
TRAINING_FILE = "training.json"
# Images per model call: large enough to keep a CPU busy, small enough for any GPU at 299 px.
PREDICT_BATCH = 64
# Image statuses that get probabilities; any other is why an image could not be scored.
SCORED = ("ok", "marking")


@dataclass(frozen=True)
class Export:
    """A model exported by the training job, with what it was trained on."""

    uri: str
    manifest: dict
    training: dict

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def image_size(self) -> int:
        return self.manifest["image"]["height"]

    @property
    def model_uri(self) -> str:
        return storage.resolve(self.uri).join(MODEL_FILE).uri


def open_export(uri: str) -> Export:
    """Check and read an export folder, or fail in one line."""
    location = storage.resolve(uri)
    storage.check_bucket(location)
    if storage.file_info(location.join(MODEL_FILE)).type != storage.pafs.FileType.File:
        raise UserError(f"{location.uri}: no exported model ({MODEL_FILE}); pass the model/ folder of a "
                        f"finished training run")
    manifest = read_manifest(location.uri)
    training_location = location.join(TRAINING_FILE)
    training = (storage.read_json(training_location)
                if storage.file_info(training_location).type == storage.pafs.FileType.File else {})
    return Export(uri=location.uri, manifest=manifest, training=training)


def preprocess_config(manifest: dict, **overrides) -> PreprocessConfig:
    """The preprocessing settings an output was made with, from its manifest."""
    settings = dict(manifest["config"])
    # How the training images were fetched is not how these are: only the image work carries over.
    settings.pop("download", None)
    nested = {"clahe": ClaheConfig, "markings": MarkingConfig, "split": SplitConfig, "synthetic": SyntheticConfig}
    for name, cls in nested.items():
        settings[name] = cls(**settings[name])
    if settings.get("classes") is not None:
        settings["classes"] = tuple(settings["classes"])
    return PreprocessConfig(**{**settings, **overrides})


def check_compatible(export: Export, manifest: dict, uri: str) -> None:
    """Shards to score must have the model's classes, in its order, and its image size."""
    if manifest["class_names"] != export.class_names:
        raise UserError(f"{uri}: classes {manifest['class_names']} do not match the model's {export.class_names}")
    if manifest["image"]["height"] != export.image_size:
        raise UserError(f"{uri}: {manifest['image']['height']} px images do not match the model's "
                        f"{export.image_size} px")


def load_export_model(export: Export):
    """The exported model, loaded in this process (from local storage or S3)."""
    from cxr.keras_lib import configure_environment

    configure_environment()
    from cxr.models import load_model

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, MODEL_FILE)
        with open(path, "wb") as handle:
            handle.write(storage.read_bytes(storage.resolve(export.model_uri)))
        return load_model(path)


class Predictor:
    """Ray Data actor: the model, loaded once, scoring batches of decoded images.

    Adds one column of class probabilities per shortcut variant (`probs_full`, ...) and
    drops the decoded pixels, which nothing downstream needs.
    """

    def __init__(self, export: Export, variants: tuple[str, ...] = ("full",), threads: int | None = None,
                 tally=None):
        if threads:
            import tensorflow as tf

            # Before TensorFlow starts its thread pools; Ray pins OMP_NUM_THREADS to 1, and
            # several actors on one node must share its cores rather than each take them all.
            tf.config.threading.set_intra_op_parallelism_threads(min(threads, os.cpu_count() or 1))
        self.model = load_export_model(export)
        self.variants = variants
        self.tally = tally  # cxr.progress: each scored batch is counted there
        self.forward = _compiled_forward(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch.pop("image")
        ok = np.isin(batch["status"], SCORED) if "status" in batch else np.ones(len(images), dtype=bool)
        num_classes = self.model.output_shape[-1]
        for variant in self.variants:
            probs = np.full((len(images), num_classes), np.nan, dtype=np.float32)
            if ok.any():
                probs[ok] = self.forward(apply_variant(images[ok].astype(np.float32), variant)).numpy()
            batch[f"probs_{variant}"] = probs
        progress.count(self.tally, len(images))
        return batch


def _compiled_forward(model):
    """The model's inference pass as one graph for every batch size.

    `predict_on_batch` pays a per-call overhead that left a core idle: 155 vs. 205 images/s
    on 2 threads at 128 px (docs/benchmarks.md, predict).
    """
    import tensorflow as tf

    signature = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda images: model(images, training=False), input_signature=[signature])


def score(dataset, export: Export, variants: tuple[str, ...] = ("full",), gpu: bool = False,
          actors: int | None = None, tally=None):
    """`dataset` (with an `image` column of uint8 (H, W, 1)) plus probabilities, lazily;
    scored images are counted into `tally` (cxr.progress)."""
    import ray
    from ray.data import ActorPoolStrategy

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpu and gpus < (actors or 1):
        raise UserError(f"--gpu needs {actors or 1} GPU(s) for the model actors; the cluster has {gpus}")
    if actors is None:
        actors = gpus if gpu else max(1, min(4, cpus // 2))
    threads = max(1, cpus // actors)
    # On CPUs, the actors leave one CPU to the read and decode tasks that feed them: actors
    # holding every CPU would wait forever for their input.
    actor_cpus = 1.0 if gpu or actors < cpus else max(0.1, (cpus - 1) / actors) if cpus > 1 else 0.5
    # No actor restarts (Ray Data's default: without limit). Ray Data passes each actor of a
    # pool its transformer and context by reference, which Ray Core reports as an error for
    # every restartable actor, on every run ("has constructor arguments in the object store
    # and max_restarts > 0", ray-project/ray#57733; Ray Data names max_restarts=0 as the
    # way out, actor_pool_map_operator.py). Restarts would buy little here: the clusters'
    # nodes are not spot instances, and a scoring run that loses an actor fails with Ray's
    # error and is run again. Ray 2.60 deprecates passing Ray options this way (removal in
    # 2.64) and offers no other: its warning about our own call is silenced here, and the
    # call will fail loudly on the Ray that removes it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        return dataset.map_batches(Predictor, fn_constructor_kwargs={"export": export, "variants": variants,
                                                                     "threads": threads, "tally": tally},
                                   batch_size=PREDICT_BATCH, batch_format="numpy",
                                   compute=ActorPoolStrategy(size=actors), max_restarts=0,
                                   num_cpus=actor_cpus, num_gpus=1 if gpu else 0)


def preprocessed_images(items: list[dict], config: PreprocessConfig):
    """Ray Data rows of listed raw images, preprocessed as the model's training data, lazily."""
    import ray

    from cxr.preprocess import block_count

    blocks = block_count(len(items), int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        preprocess_for_model, batch_format="pyarrow", batch_size=None, fn_kwargs={"config": config})


def preprocess_for_model(batch: pa.Table, config: PreprocessConfig) -> dict[str, np.ndarray]:
    """Ray Data stage: read listed raw images and preprocess them as the model's training data.

    Every image gets a row: `status` "ok", "marking" (scored, but it carries burned-in
    markings of a kind the training data excluded) or why it could not be read.
    """
    from cxr import sources
    from cxr.preprocess import process_image
    from cxr.transforms import ImageRejected, decode_png_gray

    size = config.image_size
    # Training dropped marked images; scoring still scores them, flagged.
    scoring = dataclasses.replace(config, markings=dataclasses.replace(
        config.markings, policy="keep" if config.markings.policy == "drop" else config.markings.policy))
    rows = batch.to_pylist()
    images = np.zeros((len(rows), size, size, 1), dtype=np.uint8)
    status, detail, marking = [], [], np.full(len(rows), np.nan, dtype=np.float32)
    with sources.BatchReader(config.synthetic) as reader:
        for i, item in enumerate(rows):
            stage = "read_error"
            try:
                data, _ = reader.read(item)
                stage = "processing_error"
                result = process_image(data, scoring)
                images[i, ..., 0] = decode_png_gray(result["image_png"])
                marking[i] = result["marking_score"]
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
            "label": np.array([r["label"] for r in rows], dtype=np.int64),
            "image": images, "marking_score": marking,
            "status": np.array(status, dtype=object), "detail": np.array(detail, dtype=object)}
