"""Training input: Parquet shards to Ray Data datasets of decoded images, and their tf.data side.

The driver builds one Ray Data dataset per split; Ray Train streams a shard of each to
every worker, where PNG decoding has already happened in parallel Ray Data tasks. The
TensorFlow half (`worker_dataset`) runs inside the training workers only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import ray

from cxr import seeds, storage
from cxr.artifacts import UNKNOWN_SOURCE, Manifest, check_shard_files, ordered_sources
from cxr.config import AugmentConfig
from cxr.preprocess.transforms import decode_png_gray
from cxr.train import appearance, geometric

FEATURE = "image"
LABEL = "label"
# The training split's rows carry their source as an index into `training_sources` (an
# integer for tf.data; every run of a shard set reads the same split, weighted or not).
SOURCE_INDEX = "source_index"
# Images mixed across batches as they stream in: several batches' worth, a few MB at 299 px.
SHUFFLE_BUFFER = 512


def decode_batch(batch: dict[str, np.ndarray], sources: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Shard rows to model inputs: uint8 (n, H, W, 1) images and integer labels, and with
    `sources` (the training split's, `training_sources`) each row's index among them.

    Images stay uint8 until the worker: a quarter of float32's object-store footprint.
    """
    images = np.stack([decode_png_gray(png) for png in batch["image_png"]])
    decoded = {FEATURE: images[..., None], LABEL: np.asarray(batch["label"], dtype=np.int64)}
    if sources is not None:
        index = {name: i for i, name in enumerate(sources)}
        # Shards without a source column (written before sources) hold images of unknown source only.
        names = batch["source"] if "source" in batch else [None] * len(images)
        decoded[SOURCE_INDEX] = np.array([index[name or UNKNOWN_SOURCE] for name in names], dtype=np.int64)
    return decoded


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

    The training split's rows also say their source (SOURCE_INDEX), whether or not this
    run balances sources: a sweep reads the split once for trials of either kind.
    """
    check_shard_files(data, manifest, split)  # on the driver: a damaged shard is one line, not a task's traceback
    dataset = ray.data.read_parquet(manifest.split_paths(data, split), filesystem=data.fs)
    sources = training_sources(manifest) if split == "train" else None
    with_source = sources is not None and manifest.has_column("source")
    dataset = dataset.select_columns(["image_png", "label"] + (["source"] if with_source else []))
    if split == "train":
        dataset = dataset.random_shuffle(seed=seeds.split_shuffle(seed))
    dataset = dataset.map_batches(decode_batch, batch_format="numpy", fn_kwargs={"sources": sources})
    dataset.context.execution_options.preserve_order = True
    return dataset


def class_weights(manifest: Manifest) -> dict[int, float]:
    """Inverse-frequency weights from the manifest's training counts (mean weight 1 per image),
    by label, as Keras's `class_weight` takes them.

    The real database is 2.8 : 1 Normal to COVID; unweighted, a model can score 74% by
    answering Normal.
    """
    weights = inverse_frequency(manifest.splits["train"].per_class, manifest.class_names)
    return {label: weights[name] for label, name in enumerate(manifest.class_names)}


def inverse_frequency(per_class: Mapping[str, int], class_names: Sequence[str]) -> dict[str, float]:
    """Per class, the weight that gives every class the same total weight, images weighing 1
    on average."""
    total = sum(per_class.get(name, 0) for name in class_names)
    return {name: total / (len(class_names) * max(per_class.get(name, 0), 1)) for name in class_names}


def balanced_cell_weights(cells: Mapping[str, Mapping[str, int]], class_names: Sequence[str],
                          class_weighted: bool) -> dict[str, dict[str, float]]:
    """Per source, per class: the loss weight of each training image of that (source, class)
    cell, from the cells' image counts (--balance-sources). Empty cells get none.

    A class's total weight is split equally among the sources that hold it, so a source
    with ten times the images of a class counts as much for it as any other: one
    hospital's look cannot stand for the class. The class's total is its own image count,
    or with `class_weighted` the same for every class (as `inverse_frequency` gives it).
    Either way an image weighs 1 on average, so the loss keeps its scale.
    """
    per_class = {name: sum(counts.get(name, 0) for counts in cells.values()) for name in class_names}
    factor = inverse_frequency(per_class, class_names) if class_weighted else dict.fromkeys(class_names, 1.0)
    holders = {name: sum(1 for counts in cells.values() if counts.get(name, 0) > 0) for name in class_names}
    return {source: {name: per_class[name] * factor[name] / (holders[name] * counts[name])
                     for name in class_names if counts.get(name, 0) > 0}
            for source, counts in cells.items()}


def training_cells(manifest: Manifest) -> dict[str, dict[str, int]]:
    """The training split's images per source, per class (UNKNOWN_SOURCE for images without
    one), from the manifest; one unknown source when no image's source is known."""
    per_source = manifest.sources.get("train") or {UNKNOWN_SOURCE: manifest.splits["train"]}
    return {source: dict(per_source[source].per_class) for source in ordered_sources(per_source)}


def training_sources(manifest: Manifest) -> tuple[str, ...]:
    """The training split's sources, in the order of the rows' SOURCE_INDEX."""
    return tuple(training_cells(manifest))



@dataclass(frozen=True)
class CellWeights:
    """Each training image's loss weight by its (source, class) cell: --balance-sources."""

    sources: tuple[str, ...]  # in the order of the rows' SOURCE_INDEX
    class_names: tuple[str, ...]  # in label order
    counts: tuple[tuple[int, ...], ...]  # [source][label]: training images
    weights: tuple[tuple[float, ...], ...]  # [source][label]: each image's weight; 0 for an empty cell

    @classmethod
    def of(cls, manifest: Manifest, class_weighted: bool) -> CellWeights:
        cells = training_cells(manifest)
        weights = balanced_cell_weights(cells, manifest.class_names, class_weighted)
        return cls(sources=tuple(cells), class_names=manifest.class_names,
                   counts=tuple(tuple(cells[s].get(c, 0) for c in manifest.class_names) for s in cells),
                   weights=tuple(tuple(weights[s].get(c, 0.0) for c in manifest.class_names) for s in cells))

    def line(self) -> str:
        """'balancing sources, weight per training image (images) by source and class: site-a:
        COVID 2.10 (12), Normal 0.64 (40); site-b: Normal 1.52 (17)' (empty cells left out)."""
        cells = "; ".join(
            f"{source}: " + ", ".join(f"{name} {weight:.2f} ({count})"
                                      for name, count, weight in zip(self.class_names, counts, weights) if count)
            for source, counts, weights in zip(self.sources, self.counts, self.weights))
        return f"balancing sources, weight per training image (images) by source and class: {cells}"

    def one_source_warning(self) -> str | None:
        """What to tell a user whose training split has nothing to balance: one source only."""
        if len(self.sources) > 1:
            return None
        return (f"--balance-sources: every training image comes from one source ({self.sources[0]}), so it "
                "changes nothing beyond --class-weights")


def worker_dataset(shard, batch_size: int, num_classes: int, seed: int, training: bool,
                   augment: AugmentConfig | None = None, cache: bool = False, rank: int = 0,
                   cell_weights: CellWeights | None = None):
    """This worker's tf.data pipeline over its Ray Data shard; its shuffle and augmentation
    draw from the run's `seed` and the worker's `rank` (cxr.seeds). Batches are (images,
    one-hot labels), and with `cell_weights` (the training split only) each image's weight
    by its source and class third, which Keras multiplies into the loss.

    `batch_size` is the global batch: under MultiWorkerMirroredStrategy each replica takes
    batch_size / workers of it. Autosharding is off because Ray already gave each worker
    its own part of the data. With `cache`, the first epoch streams from Ray Data and
    keeps this worker's decoded uint8 images in memory; later epochs read them from there
    and never wait for a new stream to start.
    """
    import tensorflow as tf  # heavy (seconds, hundreds of MB): training workers only

    if cell_weights is None:
        dataset = shard.to_tf(feature_columns=FEATURE, label_columns=LABEL, batch_size=batch_size)
    else:
        table = tf.constant(cell_weights.weights, dtype=tf.float32)
        dataset = shard.to_tf(feature_columns=FEATURE, label_columns=LABEL, additional_columns=SOURCE_INDEX,
                              batch_size=batch_size)
        dataset = dataset.map(lambda x, y, source: (x, y, tf.gather_nd(table, tf.stack([source, y], axis=1))),
                              num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.unbatch()
    if cache:
        dataset = dataset.cache()
    if training:
        # The stream is already in a random order (split_dataset), but from the cache every
        # epoch would see the same batches: tf.data reshuffles locally each epoch (Ray's local
        # shuffle, with a fixed seed, repeats one order); the seed keeps runs reproducible.
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seeds.shuffle(seed, rank), reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    # `weight`: the sample weight, when there is one.
    dataset = dataset.map(lambda x, y, *weight: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes), *weight),
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
            lambda batch, key: (augment_batch(batch[0], key), *batch[1:]), num_parallel_calls=tf.data.AUTOTUNE)
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
