"""One --seed defines every random stream of a run (cxr.seeds), and a single-worker run
trained twice with it ends with the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from cxr import seeds, storage
from cxr.artifacts import RunLayout


def every_stream(seed: int, rank: int) -> list[int]:
    return [seeds.split_shuffle(seed), seeds.model(seed, rank), seeds.shuffle(seed, rank),
            seeds.augmentation(seed, rank), seeds.search(seed)]


def test_streams_are_the_same_every_time_they_are_asked_for():
    assert every_stream(7, 1) == every_stream(7, 1)


def test_every_stream_of_a_seed_is_its_own():
    streams = every_stream(0, 0)
    assert len(set(streams)) == len(streams)


def test_each_rank_draws_its_own_worker_streams_and_shares_the_run_ones():
    rank0, rank1 = every_stream(3, 0), every_stream(3, 1)
    shared = {0, len(rank0) - 1}  # the split's shuffle and the searcher: one per run, not per worker
    for index, (first, second) in enumerate(zip(rank0, rank1)):
        assert (first == second) == (index in shared), index


def test_neighbouring_seeds_and_ranks_do_not_overlap():
    # What `seed * 1000 + rank` and `seed + 1` allowed: rank 0's shifts drew rank 1's rotations.
    drawn = [stream for seed in range(4) for rank in range(4) for stream in every_stream(seed, rank)[1:-1]]
    assert len(set(drawn)) == len(drawn)


PINNED_STREAMS_OF_SEED_0 = [1878776328, 1976665982, 980756183, 1188727675, 0]


def test_the_streams_are_pinned():
    # A recorded --seed means these numbers: changing the derivation changes every run.
    assert every_stream(0, 0) == PINNED_STREAMS_OF_SEED_0


def test_streams_fit_every_consumer():
    for seed in (0, 1, 2**31 - 1):
        assert all(0 <= stream < 2**31 for stream in every_stream(seed, 5))


def weights_digest(storage_root, name: str) -> str:
    return storage.read_json(RunLayout.at(str(storage_root / name)).worker_record(0))["weights_sha256"]


@pytest.mark.slow
def test_a_single_worker_run_is_reproduced_exactly_by_its_seed(tiny_shards, tmp_path):
    from cxr.cli.train import JOB
    from cxr.train.job import run_training

    def train(*flags: str) -> str:
        config = JOB.build_config(JOB.parse_args(list(flags)))
        run_training(config)
        return weights_digest(tmp_path, config.run_name)

    # Default augmentation (geometric and appearance) on: its streams are part of the run.
    first = train("--data", tiny_shards, "--storage", str(tmp_path), "--name", "first", "--epochs", "2",
                  "--batch-size", "16", "--seed", "3")
    # The run's own record, replayed under another name, is the same run.
    recorded = RunLayout.at(str(tmp_path / "first")).settings.uri
    assert train("--config", recorded, "--name", "again") == first
    assert train("--config", recorded, "--name", "other", "--seed", "4") != first


def test_the_training_split_streams_in_one_order_per_seed(ray_session, tmp_path):
    # Read from several files, Ray Data handed the shuffle its blocks in the order its read
    # tasks finished: one seed, another order each time.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr.preprocess.transforms import encode_png
    from cxr.train.data import FEATURE, split_dataset
    from tests.manifests import as_manifest

    files, rows = 8, 12
    shards = []
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        pngs = [encode_png(np.full((4, 4), i, dtype=np.uint8)) for i in ids]
        pq.write_table(pa.table({"image_png": pngs, "label": [i % 2 for i in ids]}), tmp_path / f"part-{f}.parquet")
        shards.append({"path": f"part-{f}.parquet", "rows": rows})
    manifest = as_manifest({"shards": {"train": shards},
                            "counts": {"splits": {"train": {"COVID": 48, "Normal": 48, "total": 96}}}})

    def order(seed: int) -> list[int]:
        dataset = split_dataset(storage.resolve(str(tmp_path)), manifest, "train", seed)
        return [int(image[0, 0, 0]) for batch in dataset.iter_batches(batch_size=None) for image in batch[FEATURE]]

    first = order(0)
    assert sorted(first) == list(range(files * rows))
    assert all(order(0) == first for _ in range(3))
    assert order(1) != first


def test_a_workers_batches_repeat_exactly_with_its_seed_and_change_every_epoch(ray_session):
    from cxr.keras_lib import keras

    keras()
    from cxr.config import default_augmentation
    from cxr.train.data import worker_dataset

    rng = np.random.default_rng(0)
    rows = [{"image": rng.integers(0, 256, (24, 24, 1), dtype=np.uint8), "label": i % 2} for i in range(40)]
    shard = ray_session.data.from_items(rows)

    def epochs(seed: int, rank: int = 0) -> list[np.ndarray]:
        # Shuffled and augmented (the defaults: geometric and appearance), in parallel calls.
        dataset = worker_dataset(shard, 4, 2, seed=seed, training=True, augment=default_augmentation(), rank=rank)
        return [np.concatenate([x.numpy() for x, _ in dataset]) for _ in range(2)]

    first = epochs(seed=3)
    for again, epoch in zip(epochs(seed=3), first):
        np.testing.assert_array_equal(again, epoch)
    assert not np.array_equal(first[0], first[1])  # each epoch its own order and draws
    assert not np.array_equal(epochs(seed=4)[0], first[0])
    assert not np.array_equal(epochs(seed=3, rank=1)[0], first[0])


@pytest.mark.parametrize("step", ["rotated", "shifted", "zoomed"])
def test_keyed_geometric_steps_move_pixels_as_the_keras_layers_they_replace(step):
    # Keras's layers with a range of one value draw that value: the same transform, fixed.
    import tensorflow as tf

    from cxr.keras_lib import keras
    from cxr.train import geometric

    layers, nearest = keras().layers, {"fill_mode": "nearest", "interpolation": "nearest"}
    images = np.random.default_rng(1).uniform(0, 255, (3, 20, 28, 1)).astype(np.float32)
    one = tf.ones([3])
    ours, theirs = {
        "rotated": (geometric.rotated(tf, images, 0.3 * one),
                    layers.RandomRotation((0.3 / (2 * np.pi), 0.3 / (2 * np.pi)), **nearest)),
        "shifted": (geometric.shifted(tf, images, 0.1 * one, -0.2 * one),
                    layers.RandomTranslation((0.1, 0.1), (-0.2, -0.2), **nearest)),
        "zoomed": (geometric.zoomed(tf, images, 1.15 * one), layers.RandomZoom((0.15, 0.15), **nearest)),
    }[step]
    np.testing.assert_array_equal(ours.numpy(), theirs(images, training=True).numpy())
    assert not np.array_equal(ours.numpy(), images)
