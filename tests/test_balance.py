"""Source balance in training (--balance-sources): each (source, class) cell of the training
split weighs the same in the loss; the weights, the rows' sources in Ray Data, the workers'
(images, labels, weights) batches, and one short run on two training sources."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cxr import storage
from cxr.artifacts import UNKNOWN_SOURCE
from cxr.errors import UserError
from cxr.preprocess.transforms import encode_png
from cxr.train.data import (SOURCE_INDEX, CellWeights, balanced_cell_weights, class_weights, decode_batch,
                            inverse_frequency, training_cells)
from tests.manifests import as_manifest

CLASSES = ("COVID", "Normal")


def class_totals(cells: dict, weights: dict) -> dict[str, float]:
    """Each class's total weight: its images times their weight, over the sources."""
    return {name: sum(counts.get(name, 0) * weights[source].get(name, 0.0) for source, counts in cells.items())
            for name in CLASSES}


def cell_totals(cells: dict, weights: dict, name: str) -> list[float]:
    """One class's total weight in each source that holds it."""
    return [counts[name] * weights[source][name] for source, counts in cells.items() if counts.get(name, 0)]


def mean_weight(cells: dict, weights: dict) -> float:
    images = sum(sum(counts.values()) for counts in cells.values())
    return sum(class_totals(cells, weights).values()) / images


@pytest.mark.parametrize("class_weighted", [True, False])
def test_one_source_gets_the_class_weights_or_none(class_weighted):
    cells = {"hospital": {"COVID": 100, "Normal": 280}}
    weights = balanced_cell_weights(cells, CLASSES, class_weighted)
    expected = inverse_frequency(cells["hospital"], CLASSES) if class_weighted else {"COVID": 1.0, "Normal": 1.0}
    assert weights["hospital"] == pytest.approx(expected)


def test_with_class_weights_every_class_and_within_it_every_source_weighs_the_same():
    cells = {"north": {"COVID": 90, "Normal": 10}, "south": {"COVID": 10, "Normal": 190}}
    weights = balanced_cell_weights(cells, CLASSES, class_weighted=True)
    totals = class_totals(cells, weights)
    assert totals["COVID"] == pytest.approx(totals["Normal"])
    for name in CLASSES:
        first, second = cell_totals(cells, weights, name)
        assert first == pytest.approx(second)
    assert mean_weight(cells, weights) == pytest.approx(1.0)
    # The rare cells weigh most: south's ten COVID images count as much as north's ninety.
    assert weights["south"]["COVID"] == pytest.approx(9 * weights["north"]["COVID"])


def test_without_class_weights_classes_keep_their_share_split_equally_among_sources():
    cells = {"north": {"COVID": 90, "Normal": 10}, "south": {"COVID": 10, "Normal": 190}}
    weights = balanced_cell_weights(cells, CLASSES, class_weighted=False)
    assert class_totals(cells, weights) == pytest.approx({"COVID": 100, "Normal": 200})
    assert cell_totals(cells, weights, "COVID") == pytest.approx([50, 50])
    assert cell_totals(cells, weights, "Normal") == pytest.approx([100, 100])
    assert mean_weight(cells, weights) == pytest.approx(1.0)


@pytest.mark.parametrize("class_weighted", [True, False])
def test_a_source_with_one_class_shares_only_that_class(class_weighted):
    # The database's shape: a COVID-only collection beside one that holds both classes.
    cells = {"covid-only": {"COVID": 30, "Normal": 0}, "mixed": {"COVID": 10, "Normal": 60}}
    weights = balanced_cell_weights(cells, CLASSES, class_weighted)
    assert set(weights["covid-only"]) == {"COVID"}  # no weight for an empty cell
    covid_cells = cell_totals(cells, weights, "COVID")
    assert covid_cells[0] == pytest.approx(covid_cells[1])
    # Normal has one source: its images share the class's whole weight.
    assert cell_totals(cells, weights, "Normal") == pytest.approx([class_totals(cells, weights)["Normal"]])
    assert mean_weight(cells, weights) == pytest.approx(1.0)
    if class_weighted:
        totals = class_totals(cells, weights)
        assert totals["COVID"] == pytest.approx(totals["Normal"]) == pytest.approx(50)


def test_images_of_unknown_source_are_one_cell_listed_last():
    sources = {"train": {UNKNOWN_SOURCE: {"COVID": 4, "Normal": 6, "total": 10},
                         "south": {"COVID": 2, "Normal": 20, "total": 22},
                         "north": {"COVID": 6, "Normal": 2, "total": 8}}}
    manifest = as_manifest({"counts": {"splits": {"train": {"COVID": 12, "Normal": 28, "total": 40}},
                                       "sources": sources}})
    balance = CellWeights.of(manifest, class_weighted=True)
    assert balance.sources == ("north", "south", UNKNOWN_SOURCE)
    assert balance.counts == ((6, 2), (2, 20), (4, 6))
    cells = training_cells(manifest)
    expected = balanced_cell_weights(cells, CLASSES, class_weighted=True)
    np.testing.assert_allclose(balance.weights, [[expected[s]["COVID"], expected[s]["Normal"]] for s in cells])
    # Each class's 20 units of weight, a third to each of its three sources.
    assert balance.weights[2][0] * 4 == pytest.approx(20 / 3)
    assert balance.one_source_warning() is None
    line = balance.line()
    assert line.startswith("balancing sources, weight per training image (images) by source and class: north: ")
    assert f"{UNKNOWN_SOURCE}: COVID {20 / 3 / 4:.2f} (4), Normal {20 / 3 / 6:.2f} (6)" in line


def test_a_manifest_without_sources_balances_classes_only():
    # No image's source known: one unknown source, so the weights are the class weights.
    manifest = as_manifest({"counts": {"splits": {"train": {"COVID": 100, "Normal": 280, "total": 380}}}})
    balance = CellWeights.of(manifest, class_weighted=True)
    assert balance.sources == (UNKNOWN_SOURCE,) and balance.counts == ((100, 280),)
    np.testing.assert_allclose(balance.weights[0], list(class_weights(manifest).values()))
    assert CellWeights.of(manifest, class_weighted=False).weights == ((1.0, 1.0),)
    assert balance.one_source_warning() == ("--balance-sources: every training image comes from one source "
                                            f"({UNKNOWN_SOURCE}), so it changes nothing beyond --class-weights")


def test_decode_batch_gives_each_row_its_sources_index():
    pngs = np.array([encode_png(np.full((8, 8), v, dtype=np.uint8)) for v in (0, 1, 2)], dtype=object)
    batch = {"image_png": pngs, "label": np.array([0, 1, 1]),
             "source": np.array(["south", None, "north"], dtype=object)}
    decoded = decode_batch(batch, sources=("north", "south", UNKNOWN_SOURCE))
    np.testing.assert_array_equal(decoded[SOURCE_INDEX], [1, 2, 0])
    # Shards written before sources: every row of unknown source.
    del batch["source"]
    np.testing.assert_array_equal(decode_batch(batch, sources=(UNKNOWN_SOURCE,))[SOURCE_INDEX], [0, 0, 0])
    assert SOURCE_INDEX not in decode_batch(batch)


def test_a_workers_training_batches_carry_each_images_cell_weight(ray_session):
    from cxr.keras_lib import keras

    keras()
    from cxr.config import AugmentConfig
    from cxr.train.data import worker_dataset

    balance = CellWeights(sources=("north", "south"), class_names=CLASSES, counts=((3, 1), (1, 3)),
                          weights=((0.5, 2.0), (3.0, 0.25)))
    # Each image's pixels say its source and label, so the weight it should get is known;
    # geometric augmentation (nearest edge fill) keeps a constant image constant.
    rows = [{"image": np.full((16, 16, 1), 10 * source + label, dtype=np.uint8), "label": label,
             SOURCE_INDEX: source} for source in (0, 1) for label in (0, 1) for _ in range(5)]
    shard = ray_session.data.from_items(rows)
    dataset = worker_dataset(shard, 4, 2, seed=0, training=True, augment=AugmentConfig(), cache=True,
                             cell_weights=balance)
    for _ in range(2):  # streamed, then from the cache
        seen = []
        for images, labels, weights in dataset:
            assert images.dtype.name == "float32" and labels.shape == (len(weights), 2)
            for label, weight, image in zip(np.argmax(labels, axis=1), weights.numpy(), images.numpy()):
                source, pixel_label = divmod(int(image.max()), 10)
                assert image.min() == image.max() and pixel_label == label
                seen.append(weight)
                assert weight == pytest.approx(balance.weights[source][label])
        assert sorted(seen) == sorted(w for cell in balance.weights for w in cell for _ in range(5))
    # Validation (and a run without balance) stays (images, labels).
    assert len(next(iter(worker_dataset(shard, 4, 2, seed=0, training=False)))) == 2


@pytest.mark.slow
def test_a_run_balancing_two_training_sources_records_it_and_trains(ray_session, tmp_path, caplog):
    from cxr.artifacts import RunLayout
    from cxr.config import AugmentConfig, PreprocessConfig, SplitConfig, SyntheticConfig, TrainConfig
    from cxr.preprocess.pipeline import run_preprocess
    from cxr.train.job import run_training

    shards = str(tmp_path / "shards")
    # Three sites, the last held out for test; confound 1: the first site has no COVID image,
    # so one training source holds one class only.
    manifest = run_preprocess(PreprocessConfig(
        output=shards, image_size=48, split=SplitConfig(test_sources=("site-c",)),
        synthetic=SyntheticConfig(images=90, size=64, sources=3, confound=1.0)))
    train_sources = manifest["counts"]["sources"]["train"]
    assert set(train_sources) == {"site-a", "site-b"} and train_sources["site-a"]["COVID"] == 0
    caplog.set_level(logging.INFO, logger="cxr")
    summary = run_training(TrainConfig(data=shards, storage=str(tmp_path / "runs"), name="balanced", epochs=1,
                                       batch_size=16, augment=AugmentConfig(0, 0, 0), balance_sources=True))
    run = RunLayout.at(str(tmp_path / "runs" / "balanced"))
    assert storage.read_json(run.settings)["config"]["balance_sources"] is True
    assert summary["epochs_trained"] == 1 and np.isfinite(summary["best"]["loss"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("balancing sources")]
    assert len(lines) == 1
    counts = {source: train_sources[source] for source in ("site-a", "site-b")}
    assert "site-a: Normal " in lines[0] and f"({counts['site-a']['Normal']})" in lines[0]
    assert "site-b: COVID " in lines[0] and "site-a: COVID" not in lines[0] and "site-c" not in lines[0]
    # The same run without balance would be another run: refused before anything trains.
    with pytest.raises(UserError, match="the run was started with --balance-sources on, not off"):
        run_training(TrainConfig(data=shards, storage=str(tmp_path / "runs"), name="balanced", epochs=1,
                                 batch_size=16, augment=AugmentConfig(0, 0, 0)))
