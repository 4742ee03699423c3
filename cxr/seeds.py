"""Every random stream of a run, derived from its one `--seed`.

The run's `numpy.random.SeedSequence(seed)` is spawned into one child per stream, and each
per-worker stream again into one child per rank: the same tree `SeedSequence(seed).spawn`
builds, named here by fixed keys (`spawn_key`) so that adding a stream never moves another.
Children of a SeedSequence are statistically independent, unlike the `seed * 1000 + rank`
and `seed + 1` they replace, whose streams overlapped (rank 0's shifts drew from the seed of
rank 1's rotations). cxr.ingest.synthetic derives each image's streams the same way.

A stream's key is part of what a recorded seed means: renumbering one changes every run.
"""

from __future__ import annotations

import numpy as np

# The first level of the run's tree. Never renumber; a new stream takes a new key.
SPLIT_SHUFFLE = 0  # Ray Data: the training split's order, once, on the driver
MODEL = 1  # a worker's TensorFlow, Python and NumPy global seeds: initial weights, dropout
SHUFFLE = 2  # a worker's tf.data shuffle buffer, every epoch
AUGMENTATION = 3  # a worker's augmentation: a key per batch, every epoch
# (4: kept free; the searcher takes --seed itself, see search())


def _sequence(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def _integer(sequence: np.random.SeedSequence) -> int:
    # 31 bits, as --seed itself (cxr.config.MAX_SEED): every consumer takes that, NumPy's legacy
    # seeding (below 2**32) and a signed int32 included.
    return int(sequence.generate_state(1, np.uint32)[0] >> 1)


def split_shuffle(seed: int) -> int:
    """The Ray Data shuffle of the training split (cxr.train.data.split_dataset)."""
    return _integer(_sequence(seed, SPLIT_SHUFFLE))


def model(seed: int, rank: int) -> int:
    """A worker's global seeds (tf.keras.utils.set_random_seed): the initial weights (under
    MultiWorkerMirroredStrategy, rank 0's are broadcast to all) and the dropout masks."""
    return _integer(_sequence(seed, MODEL, rank))


def shuffle(seed: int, rank: int) -> int:
    """A worker's tf.data shuffle of its training images (cxr.train.data.worker_dataset)."""
    return _integer(_sequence(seed, SHUFFLE, rank))


def augmentation(seed: int, rank: int) -> int:
    """A worker's augmentation keys, one per training batch (cxr.train.data.worker_dataset)."""
    return _integer(_sequence(seed, AUGMENTATION, rank))


def search(seed: int) -> int:
    """Ray Tune's searcher (cxr.tune.search): which settings a sweep's trials sample.

    --seed as it is, not a derived stream: the searcher is the only consumer of it, so no
    other stream can overlap it, and the sweeps recorded in docs/benchmarks.md name their
    trials by the settings this seed sampled (a rerun samples the same ones)."""
    return seed
