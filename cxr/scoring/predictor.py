"""Scoring in Ray Data: the exported model in actors, each loading it once, on a GPU when asked.

`score` adds class probabilities to a dataset of decoded images (cxr.scoring.datasets
builds them from shards or raw files). Each image can be scored under several named
variants of itself (evaluation's shortcut checks black out the lungs, or all but them):
one probability column each.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from cxr import progress
from cxr.resources import actor_plan
from cxr.scoring.export import Export, load_export_model

# Images per model call: large enough to keep a CPU busy, small enough for any GPU at 299 px.
PREDICT_BATCH = 64
# Image statuses that get probabilities; any other is why an image could not be scored.
SCORED = ("ok", "marking")


def as_is(images: np.ndarray) -> np.ndarray:
    return images


# The default variant: the images as they are, in the column `probs_full`.
FULL = {"full": as_is}


class Predictor:
    """Ray Data actor: the model, loaded once, scoring batches of decoded images.

    Adds one column of class probabilities per variant (`probs_full`, ...) and drops the
    decoded pixels, which nothing downstream needs.
    """

    def __init__(self, export: Export, variants: Mapping[str, Callable] = FULL, threads: int | None = None,
                 tally=None):
        if threads:
            import tensorflow as tf  # heavy (seconds, hundreds of MB): in the actors only

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
        for name, variant in self.variants.items():
            probs = np.full((len(images), num_classes), np.nan, dtype=np.float32)
            if ok.any():
                probs[ok] = self.forward(variant(images[ok].astype(np.float32))).numpy()
            batch[f"probs_{name}"] = probs
        progress.count(self.tally, len(images))
        return batch


def _compiled_forward(model):
    """The model's inference pass as one graph for every batch size.

    `predict_on_batch` pays a per-call overhead that left a core idle: 155 vs. 205 images/s
    on 2 threads at 128 px (docs/benchmarks.md, predict).
    """
    import tensorflow as tf  # heavy: in the actors only

    signature = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda images: model(images, training=False), input_signature=[signature])


def score(dataset, export: Export, variants: Mapping[str, Callable] = FULL, gpu: bool = False,
          actors: int | None = None, tally=None):
    """`dataset` (with an `image` column of uint8 (H, W, 1)) plus probabilities, lazily.

    `variants` maps a column's name to a function of the float32 (n, H, W, 1) images that
    gives the model's input; scored images are counted into `tally` (cxr.progress).
    """
    # How many actors, and what each reserves (a job waits for them first: cxr.resources).
    plan = actor_plan(ray.cluster_resources(), gpu, actors)
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
                                                                     "threads": plan.threads, "tally": tally},
                                   batch_size=PREDICT_BATCH, batch_format="numpy",
                                   compute=ActorPoolStrategy(size=plan.actors), max_restarts=0,
                                   num_cpus=plan.cpus, num_gpus=plan.gpus)
