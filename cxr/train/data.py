"""Training input: Parquet shards to Ray Data datasets of decoded images, and their tf.data side.

The driver builds one Ray Data dataset per split; Ray Train streams a shard of each to
every worker, where PNG decoding has already happened in parallel Ray Data tasks. The
TensorFlow half (`worker_dataset`) runs inside the training workers only.
"""

from __future__ import annotations

import numpy as np
import ray

from cxr import seeds, storage
from cxr.artifacts import Manifest, check_shard_files
from cxr.config import AugmentConfig
from cxr.preprocess.transforms import decode_png_gray
from cxr.train import appearance, geometric

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
    random order drawn from the run's `seed` (cxr.seeds.split_shuffle; the workers' tf.data
    shuffle then varies each epoch's batches).

    Training must shuffle the whole split: its shard files are not mixed by class. They
    follow the order the inputs were listed in (a class-per-folder tree lists one class,
    then the other) and are sorted by content hash only within each file. Read in file
    order, the real sample's training split streamed about 900 mostly-COVID images and then
    2,100 Normal ones, and a shuffle buffer of a few hundred cannot mix runs that long: the
    model swung from one class to the other through every epoch (docs/benchmarks.md, "tune").
    The shuffle runs on the encoded rows, before decoding, so it moves the least data.

    Every split keeps its order (Ray Data's `preserve_order`) wherever it is materialized:
    by default Ray Data hands blocks on as its tasks finish, and the shuffle then mixes its
    input blocks in another order each time: read from 8 files, 4 runs with one seed gave 4
    orders. Streamed to Ray Train, the trainer's DataConfig decides (cxr.train.job).
    """
    check_shard_files(data, manifest, split)  # on the driver: a damaged shard is one line, not a task's traceback
    dataset = ray.data.read_parquet(manifest.split_paths(data, split), filesystem=data.fs)
    dataset = dataset.select_columns(["image_png", "label"])
    if split == "train":
        dataset = dataset.random_shuffle(seed=seeds.split_shuffle(seed))
    dataset = dataset.map_batches(decode_batch, batch_format="numpy")
    dataset.context.execution_options.preserve_order = True
    return dataset


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
                   augment: AugmentConfig | None = None, cache: bool = False, rank: int = 0):
    """This worker's tf.data pipeline over its Ray Data shard; its shuffle and augmentation
    draw from the run's `seed` and the worker's `rank` (cxr.seeds).

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
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seeds.shuffle(seed, rank), reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment is not None and augment.enabled:
        # A key per batch, drawn in order from this worker's stream (a new sequence every
        # epoch): the augmentation's stateless draws then depend on the batch and the epoch
        # only, never on which of tf.data's parallel calls ran first. (Keras's random layers
        # draw from one stateful generator: a seed made their draws repeat but not which batch
        # got which, and one batch at a time cost 25 to 30% of a quickstart epoch's images/s.)
        keys = tf.data.Dataset.random(seed=seeds.augmentation(seed, rank), rerandomize_each_iteration=True).batch(2)
        augment_batch = augmentation(augment)
        dataset = tf.data.Dataset.zip((dataset, keys)).map(
            lambda batch, key: (augment_batch(batch[0], key), batch[1]), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def augmentation(augment: AugmentConfig):
    """The function that augments a float32 (n, H, W, 1) training batch, drawing from `key`
    (a shape-[2] integer tensor: the same key, the same augmentation).

    The paper's image generator: small rotations, shifts and zooms (cxr.train.geometric),
    filled with the nearest edge pixels and sampled at the nearest pixel (as torchvision's
    RandomAffine does by default): three bilinear resamplings in a row blurred a 96 px X-ray
    to 45% of its Laplacian energy, so the model trained on blurred images and was scored on
    sharp ones; then, when asked for, appearance (cxr.train.appearance: gamma, contrast,
    brightness, blur, noise, resolution loss). A strength of zero leaves its step out
    (worker_dataset skips augmentation when all are zero).
    """
    import tensorflow as tf  # heavy: training workers only

    def augment_batch(images, key):
        geometric_key, appearance_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        images = geometric.augmented(tf, images, geometric_key, augment)
        if augment.appearance:
            images = appearance.augmented(tf, images, appearance_key, augment)
        return images

    return augment_batch


def cached_bytes_per_worker(manifest: Manifest, workers: int) -> int:
    """Memory each worker needs to keep its part of the train and validation splits decoded."""
    images = -(-(manifest.splits["train"].total + manifest.splits["val"].total) // workers)
    return images * manifest.image_size * manifest.image_size
