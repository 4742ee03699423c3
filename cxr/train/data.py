"""Training input: Parquet shards to Ray Data datasets of decoded images, and their tf.data side.

The driver builds one Ray Data dataset per split; Ray Train streams a shard of each to
every worker, where PNG decoding has already happened in parallel Ray Data tasks. The
TensorFlow half (`worker_dataset`) runs inside the training workers only.
"""

from __future__ import annotations

import numpy as np
import ray

from cxr import storage
from cxr.artifacts import Manifest, check_shard_files
from cxr.config import AugmentConfig
from cxr.preprocess.transforms import decode_png_gray
from cxr.keras_lib import keras
from cxr.train.appearance import appearance_layer

FEATURE = "image"
LABEL = "label"
# Images mixed across batches as they stream in: several batches' worth, a few MB at 299 px.
SHUFFLE_BUFFER = 512


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Shard rows to model inputs: uint8 (n, H, W, 1) images and integer labels.

    Images stay uint8 until the worker: a quarter of float32's object-store footprint.
    """
    images = np.stack([decode_png_gray(png) for png in batch["image_png"]])
    return {FEATURE: images[..., None], LABEL: np.asarray(batch["label"], dtype=np.int64)}


def split_dataset(data: storage.Location, manifest: Manifest, split: str, seed: int):
    """A lazily read, decoded Ray Data dataset of one split; the training split's rows in a
    random order seeded by `seed` (the workers' tf.data shuffle then varies each epoch's batches).

    Training must shuffle the whole split: its shard files are not mixed by class. They
    follow the order the inputs were listed in (a class-per-folder tree lists one class,
    then the other) and are sorted by content hash only within each file. Read in file
    order, the real sample's training split streamed about 900 mostly-COVID images and then
    2,100 Normal ones, and a shuffle buffer of a few hundred cannot mix runs that long: the
    model swung from one class to the other through every epoch (docs/benchmarks.md, "tune").
    The shuffle runs on the encoded rows, before decoding, so it moves the least data.
    """
    check_shard_files(data, manifest, split)  # on the driver: a damaged shard is one line, not a task's traceback
    dataset = ray.data.read_parquet(manifest.split_paths(data, split), filesystem=data.fs)
    dataset = dataset.select_columns(["image_png", "label"])
    if split == "train":
        dataset = dataset.random_shuffle(seed=seed)
    return dataset.map_batches(decode_batch, batch_format="numpy")


def class_weights(manifest: Manifest) -> dict[int, float]:
    """Inverse-frequency weights from the manifest's training counts (mean weight 1 per image).

    The real database is 2.8 : 1 Normal to COVID; unweighted, a model can score 74% by
    answering Normal.
    """
    counts = manifest.splits["train"].per_class
    names = manifest.class_names
    total = sum(counts[name] for name in names)
    return {label: total / (len(names) * max(counts[name], 1)) for label, name in enumerate(names)}


def worker_dataset(shard, batch_size: int, num_classes: int, seed: int, training: bool,
                   augment: AugmentConfig | None = None, cache: bool = False):
    """This worker's tf.data pipeline over its Ray Data shard.

    `batch_size` is the global batch: under MultiWorkerMirroredStrategy each replica takes
    batch_size / workers of it. Autosharding is off because Ray already gave each worker
    its own part of the data. With `cache`, the first epoch streams from Ray Data and
    keeps this worker's decoded uint8 images in memory; later epochs read them from there
    and never wait for a new stream to start.
    """
    import tensorflow as tf  # heavy (seconds, hundreds of MB): training workers only

    dataset = shard.to_tf(feature_columns=FEATURE, label_columns=LABEL, batch_size=batch_size).unbatch()
    if cache:
        dataset = dataset.cache()
    if training:
        # The stream is already in a random order (split_dataset), but from the cache every
        # epoch would see the same batches: tf.data reshuffles locally each epoch (Ray's local
        # shuffle, with a fixed seed, repeats one order); the seed keeps runs reproducible.
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None and augment.enabled:
        augmenter = augmentation(augment, seed)
        # In parallel: the layers draw from one seeded generator, so a run's sequence of
        # augmentations is seeded but which batch gets which draw follows the order the
        # parallel calls run in. One batch at a time would make it exact, at a measured
        # 8 s more per 694-image epoch at 96 px on 2 cores (about 25%); the seeded layers
        # themselves are exact (tests/test_training_safety.py).
        dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def augmentation(augment: AugmentConfig, seed: int):
    """The Keras model that augments a float32 (n, H, W, 1) batch when called with training=True.

    The paper's image generator: small rotations, shifts and zooms, each seeded (a worker
    with the same seed augments the same way), filled with the nearest edge pixels and
    sampled at the nearest pixel (as torchvision's RandomAffine does by default): three
    bilinear resamplings in a row blurred a 96 px X-ray to 45% of its Laplacian energy, so
    the model trained on blurred images and was scored on sharp ones; then,
    when asked for, appearance (cxr.train.appearance: gamma, contrast, brightness, blur,
    noise, resolution loss), seeded too. A strength of zero adds no layer (worker_dataset
    skips augmentation when all are zero).
    """
    layers = keras().layers
    nearest = {"fill_mode": "nearest", "interpolation": "nearest"}
    chosen = []
    if augment.rotation:
        chosen.append(layers.RandomRotation(augment.rotation, seed=seed, **nearest))
    if augment.shift:
        chosen.append(layers.RandomTranslation(augment.shift, augment.shift, seed=seed + 1, **nearest))
    if augment.zoom:
        chosen.append(layers.RandomZoom(augment.zoom, seed=seed + 2, **nearest))
    if augment.appearance:
        chosen.append(appearance_layer(augment, seed + 3))
    return keras().Sequential(chosen)


def cached_bytes_per_worker(manifest: Manifest, workers: int) -> int:
    """Memory each worker needs to keep its part of the train and validation splits decoded."""
    images = -(-(manifest.splits["train"].total + manifest.splits["val"].total) // workers)
    return images * manifest.image_size * manifest.image_size
