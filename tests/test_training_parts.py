"""The training job's parts that need no training: state, weights, inputs, resources, history."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr.artifacts import positive_label
from cxr.config import TrainConfig, parse_node_labels
from cxr.errors import UserError
from cxr.preprocess.transforms import encode_png
from cxr.train.data import class_weights, decode_batch
from cxr.train.history import history_csv, learning_curve_png
from cxr.train.job import _cpus_per_worker, worker_cpus
from cxr.train.loop import TrainingState, _compute_threads
from tests.manifests import as_manifest


def row(epoch: int, val_loss: float) -> dict:
    return {"epoch": epoch, "loss": 1.0, "val_loss": val_loss, "accuracy": 0.5, "val_accuracy": 0.5}


def test_early_stopping_counts_epochs_without_improvement():
    state = TrainingState()
    for epoch, val_loss in enumerate([0.9, 0.8, 0.85, 0.8, 0.81]):
        state = state.after_epoch(row(epoch, val_loss), patience=3)
    assert state.best_epoch == 1 and state.best_val_loss == 0.8
    assert state.epochs_without_improvement == 3 and state.stopped_early
    assert state.finished(epochs=10) and state.next_epoch == 5
    assert [r["epoch"] for r in state.history] == [0, 1, 2, 3, 4]


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    state = TrainingState().after_epoch(row(0, 0.7), patience=2).after_epoch(row(1, 0.9), patience=2)
    state.save(str(tmp_path))
    loaded = TrainingState.load(str(tmp_path))
    assert loaded == state
    assert not loaded.stopped_early and loaded.epochs_without_improvement == 1
    assert loaded.after_epoch(row(2, 0.95), patience=2).stopped_early


def test_class_weights_balance_the_training_counts():
    manifest = as_manifest({"class_names": ["COVID", "Normal"],
                            "counts": {"splits": {"train": {"COVID": 100, "Normal": 280, "total": 380}}}})
    weights = class_weights(manifest)
    assert weights[0] * 100 == pytest.approx(weights[1] * 280)
    assert (weights[0] * 100 + weights[1] * 280) / 380 == pytest.approx(1.0)
    assert positive_label(["COVID", "Normal"]) == 0 and positive_label(["Normal", "Pneumonia"]) == 1


def test_decode_batch_directly_and_inside_ray_data(ray_session):
    pixels = [np.full((16, 16), v, dtype=np.uint8) for v in (0, 128, 255)]
    batch = {"image_png": np.array([encode_png(p) for p in pixels], dtype=object), "label": np.array([0, 1, 1])}
    direct = decode_batch(batch)
    assert direct["image"].shape == (3, 16, 16, 1) and direct["image"].dtype == np.uint8
    np.testing.assert_array_equal(direct["image"][:, 0, 0, 0], [0, 128, 255])
    rows = [{"image_png": encode_png(p), "label": i % 2} for i, p in enumerate(pixels)]
    in_ray = ray_session.data.from_items(rows).map_batches(decode_batch, batch_format="numpy").take_all()
    assert sorted(int(r["image"][0, 0, 0]) for r in in_ray) == [0, 128, 255]


@pytest.mark.parametrize("workers, cpus, expected", [(1, 2, 1.0), (2, 2, 0.5), (2, 8, 1.0), (3, 4, 1.0)])
def test_workers_leave_a_cpu_for_the_data(workers, cpus, expected):
    assert _cpus_per_worker(TrainConfig(workers=workers), {"CPU": cpus}) == pytest.approx(expected)


def test_workers_split_the_nodes_cores_unless_other_runs_share_them(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert _compute_threads(1) == 8  # alone: the core reserved for Ray Data too
    assert _compute_threads(3) == 2
    assert _compute_threads(16) == 1
    # A sweep's concurrent trials on one node: each keeps to what it reserved.
    assert _compute_threads(1, reserved_cpus=1.0) == 1
    assert _compute_threads(1, reserved_cpus=2.5) == 2
    assert _compute_threads(1, reserved_cpus=0.5) == 1


def test_more_workers_than_the_cluster_holds_is_a_user_error():
    with pytest.raises(UserError, match="needs 4 GPUs, found 1 on the cluster"):
        _cpus_per_worker(TrainConfig(workers=4, gpu=True), {"CPU": 16, "GPU": 1})
    with pytest.raises(UserError, match="found 2 on the cluster"):
        _cpus_per_worker(TrainConfig(workers=3, cpus_per_worker=1), {"CPU": 2})
    with pytest.raises(UserError, match="found 0 on the cluster"):
        _cpus_per_worker(TrainConfig(workers=1), {"CPU": 0})


def _node(cpus: int, gpus: int = 0, alive: bool = True, **labels: str) -> dict:
    return {"Alive": alive, "Labels": {"ray.io/node-id": "x", **labels},
            "Resources": {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}}


def test_node_labels_pick_the_nodes_that_may_hold_workers(ray_session):
    gpu_pool = TrainConfig(workers=4, gpu=True, node_labels=(("cxr-pool", "gpu"),))
    head, cpu_node = _node(0), _node(16, **{"cxr-pool": "cpu"})
    gpu_node, dead_gpu_node = _node(48, 4, **{"cxr-pool": "gpu"}), _node(48, 4, alive=False, **{"cxr-pool": "gpu"})
    # Only the labelled, live nodes count: 48 CPUs for 4 workers.
    assert worker_cpus(gpu_pool, False, nodes=lambda: [head, cpu_node, gpu_node, dead_gpu_node]) == 1.0
    # A Ray the job started itself never grows, nor does a cluster whose nodes no launcher
    # started (no node group): a shortage is an error at once (waiting: tests/test_resources.py).
    with pytest.raises(UserError, match="found 0 on the nodes labelled cxr-pool=gpu$"):
        worker_cpus(gpu_pool, True, nodes=lambda: [_node(8)])
    with pytest.raises(UserError, match="found 0 on the nodes labelled cxr-pool=gpu$"):
        worker_cpus(gpu_pool, False, nodes=lambda: [head, cpu_node, dead_gpu_node])
    with pytest.raises(UserError, match="found 0 on the cluster"):
        worker_cpus(TrainConfig(workers=4, gpu=True), False, nodes=lambda: [head, cpu_node])


def test_node_labels_are_key_value_pairs():
    assert parse_node_labels(["cxr-pool=gpu", " zone = a "]) == (("cxr-pool", "gpu"), ("zone", "a"))
    assert parse_node_labels([]) == ()
    for bad in ("cxr-pool", "=gpu", "cxr-pool="):
        with pytest.raises(UserError, match="--node-label must be KEY=VALUE"):
            TrainConfig(node_labels=parse_node_labels([bad]))


def test_config_rejects_impossible_settings():
    with pytest.raises(UserError, match="--fail-at-epoch"):
        TrainConfig(epochs=3, fail_at_epoch=0)
    with pytest.raises(UserError, match="--model"):
        TrainConfig(model="resnet")
    with pytest.raises(UserError, match="--name"):
        TrainConfig(name="../elsewhere")
    assert TrainConfig(model="vgg19_head").weights_spec == "imagenet"
    assert TrainConfig().weights_spec == "none" and TrainConfig().run_name == "scratch_cnn"


def test_history_csv_and_learning_curve():
    rows = [row(0, 0.7), {**row(1, 0.6), "auc": 0.8, "val_auc": 0.7}]
    text = history_csv(rows).decode()
    assert text.splitlines()[0].split(",") == ["epoch", "loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc"]
    assert len(text.splitlines()) == 3
    image = Image.open(io.BytesIO(learning_curve_png(rows, "test")))
    assert image.format == "PNG" and image.width > 600


@pytest.mark.parametrize("cache", [True, False])
def test_worker_dataset_reshuffles_training_epochs_and_keeps_every_image(ray_session, cache):
    from cxr.keras_lib import keras

    keras()
    from cxr.train.data import worker_dataset

    # Each image's pixels carry its index, so every epoch's order is visible.
    rows = [{"image": np.full((8, 8, 1), i, dtype=np.uint8), "label": i % 2} for i in range(100)]
    shard = ray_session.data.from_items(rows)

    def epoch_order(dataset) -> list[int]:
        return [int(v) for x, y in dataset for v in x.numpy()[:, 0, 0, 0]]

    train = worker_dataset(shard, 10, 2, seed=3, training=True, cache=cache)
    first, second = epoch_order(train), epoch_order(train)
    assert sorted(first) == sorted(second) == list(range(100))
    assert first != second
    val = worker_dataset(shard, 10, 2, seed=3, training=False, cache=cache)
    assert epoch_order(val) == epoch_order(val) == list(range(100))
    x, y = next(iter(val))
    assert x.dtype.name == "float32" and y.shape == (10, 2)
    np.testing.assert_array_equal(y.numpy().argmax(1), np.arange(10) % 2)


def test_cached_bytes_per_worker_counts_train_and_val_images():
    from cxr.train.data import cached_bytes_per_worker

    manifest = as_manifest({"image": {"height": 299, "width": 299},
                            "counts": {"splits": {"train": {"total": 1001}, "val": {"total": 100}}}})
    assert cached_bytes_per_worker(manifest, 1) == 1101 * 299 * 299
    assert cached_bytes_per_worker(manifest, 2) == 551 * 299 * 299


def test_the_training_stream_mixes_the_classes_of_shards_written_one_class_after_the_other(ray_session, tmp_path):
    from cxr import storage
    from cxr.artifacts import read_manifest
    from cxr.config import PreprocessConfig
    from cxr.preprocess.pipeline import run_preprocess
    import pyarrow.parquet as pq

    from cxr.train.data import LABEL, split_dataset
    from tests.trees import class_tree, write_tree

    tree = write_tree(tmp_path / "tree", class_tree(per_class=30, size=64, kaggle_layout=False))
    output = str(tmp_path / "shards")
    run_preprocess(PreprocessConfig(source=str(tree), output=output, image_size=32, rows_per_shard=8))
    manifest, data = read_manifest(output), storage.resolve(output)

    def stream(seed: int) -> list[int]:
        dataset = split_dataset(data, manifest, "train", seed)
        return [int(label) for batch in dataset.iter_batches(batch_size=None) for label in batch[LABEL]]

    def covid_share_of_first_half(labels: list[int]) -> float:
        half = labels[:len(labels) // 2]
        return half.count(manifest.class_names.index("COVID")) / len(half)

    in_file_order = [label for path in manifest.split_paths(data, "train")
                     for label in pq.read_table(path, columns=["label"])["label"].to_pylist()]
    shuffled = stream(0)
    # The hazard: a class-per-folder tree lists one class after the other, and so do its shards.
    assert covid_share_of_first_half(in_file_order) > 0.9
    assert sorted(shuffled) == sorted(in_file_order) and len(shuffled) == manifest.splits["train"].total
    assert 0.25 < covid_share_of_first_half(shuffled) < 0.75
    assert stream(0) == shuffled != stream(1)


def test_an_image_size_the_scratch_cnn_cannot_take_is_refused_on_the_driver(tmp_path):
    """Not in a worker, where the same error would be a traceback retried --max-failures times."""
    import json

    from cxr.train.job import check_data
    from tests.manifests import SAMPLE

    small = {**SAMPLE, "image": {**SAMPLE["image"], "height": 32, "width": 32},
             "config": {**SAMPLE["config"], "image_size": 32}}
    (tmp_path / "manifest.json").write_text(json.dumps(small))
    with pytest.raises(UserError, match=r"^scratch_cnn needs --image-size of at least 36, got 32$"):
        check_data(TrainConfig(data=str(tmp_path)))
    assert check_data(TrainConfig(data=str(tmp_path), model="vgg19_head"))[1].image_size == 32
