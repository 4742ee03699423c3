"""Training that cannot silently go wrong, part by part: the run's recorded settings and the
resume check, the non-finite-loss guard, and seeded augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr import storage
from cxr.artifacts import RunLayout
from cxr.config import AugmentConfig, TrainConfig
from cxr.errors import UserError
from cxr.train import settings
from tests.manifests import as_manifest

MANIFEST = as_manifest()


def record(**overrides) -> dict:
    config = TrainConfig(**{"data": "shards", "storage": "runs", "name": "exp1", **overrides})
    return settings.run_record(config, MANIFEST, config.data, None)


def started(tmp_path, **overrides) -> RunLayout:
    """A run whose first start recorded `overrides`."""
    run = RunLayout.at(str(tmp_path / "exp1"))
    storage.write_json(run.settings, record(**overrides))
    return run


def test_the_record_holds_the_config_the_data_and_the_versions():
    written = record(learning_rate=1e-3, node_labels=(("cxr-pool", "gpu"),))
    assert written == json.loads(json.dumps(written))  # as it reads back
    assert written["config"]["learning_rate"] == 1e-3 and written["config"]["augment"]["zoom"] == 0.1
    assert written["data"]["manifest_sha256"] == settings.manifest_digest(MANIFEST)
    assert written["data"]["image_size"] == 64 and written["data"]["class_names"] == ["COVID", "Normal"]
    assert written["versions"]["ray"] and written["versions"]["python"]
    assert len(written["starts"]) == 1


def test_the_same_settings_resume_and_the_start_is_added(tmp_path):
    run = started(tmp_path)
    merged, changed = settings.check_resume(run, record())
    assert changed == []
    assert len(merged["starts"]) == 2 and merged["config"] == record()["config"]


@pytest.mark.parametrize("overrides, flag, old, new", [
    ({"learning_rate": 1e-3}, "--learning-rate", "0.0003", "0.001"),
    ({"model": "vgg19_head"}, "--model", "scratch_cnn", "vgg19_head"),
    ({"batch_size": 64}, "--batch-size", "32", "64"),
    ({"epochs": 10}, "--epochs", "5", "10"),
    ({"dropout": 0.5}, "--dropout", "0.2", "0.5"),
    ({"seed": 1}, "--seed", "0", "1"),
    ({"class_weights": False}, "--class-weights", "on", "off"),
    ({"augment": AugmentConfig(0, 0, 0).with_appearance(1.0)}, "--augment-rotation", "0.03", "0"),  # --no-augment
])
def test_a_setting_that_changes_what_is_trained_is_refused_in_one_line(tmp_path, overrides, flag, old, new):
    run = started(tmp_path)
    with pytest.raises(UserError) as refused:
        settings.check_resume(run, record(**overrides))
    message = str(refused.value)
    assert "\n" not in message
    assert f"started with {flag} {old}, not {new}" in message
    assert f"resume it with {flag} {old}" in message and "another --name" in message
    if flag == "--epochs":
        assert "cosine" in message


def test_other_shards_are_refused_by_their_manifest_not_their_place(tmp_path):
    run = started(tmp_path)
    other = as_manifest({"created_at": "2026-02-02T00:00:00+00:00"})
    config = TrainConfig(data="s3://bucket/shards", storage="runs", name="exp1")
    moved = settings.run_record(config, MANIFEST, config.data, None)
    merged, changed = settings.check_resume(run, moved)  # the same shards, copied elsewhere
    assert changed == ["--data shards -> s3://bucket/shards"]
    with pytest.raises(UserError, match=r"other shards .* than --data shards .*resume it with --data shards"):
        settings.check_resume(run, settings.run_record(TrainConfig(data="shards", name="exp1"), other,
                                                       "shards", None))


def test_execution_settings_may_change_and_are_named(tmp_path):
    run = started(tmp_path)
    merged, changed = settings.check_resume(run, record(workers=2, gpu=True, cache_mib=0, max_failures=5))
    assert changed == ["--workers 1 -> 2", "--gpu off -> on", "--max-failures 2 -> 5", "--cache-mib 2048 -> 0"]
    storage.write_json(run.settings, merged)
    # Compared with the last start: the same again changes nothing.
    assert settings.check_resume(run, record(workers=2, gpu=True, cache_mib=0, max_failures=5))[1] == []


def test_epochs_may_change_under_a_constant_rate_only(tmp_path):
    run = started(tmp_path, lr_schedule="constant")
    assert settings.check_resume(run, record(lr_schedule="constant", epochs=20))[1] == ["--epochs 5 -> 20"]
    with pytest.raises(UserError, match="--lr-schedule constant, not cosine"):
        settings.check_resume(run, record(lr_schedule="cosine"))


def test_another_weights_file_is_refused(tmp_path):
    run = RunLayout.at(str(tmp_path / "exp1"))
    config = TrainConfig(data="shards", name="exp1", weights="w.h5")
    storage.write_json(run.settings, settings.run_record(config, MANIFEST, "shards", "aaaa"))
    with pytest.raises(UserError, match=r"--weights \(file content\) aaaa, not bbbb"):
        settings.check_resume(run, settings.run_record(config, MANIFEST, "shards", "bbbb"))


# ---------------------------------------------------------------- the non-finite guard


def fit_with_guard(nan_at_batch: int | None, val_nan: bool = False, epochs: int = 2):
    """A tiny Keras model fit on 6 batches per epoch, whose `nan_at_batch` (0-based) holds a NaN."""
    from cxr.keras_lib import keras
    from cxr.train.loop import non_finite_guard

    k = keras()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = k.utils.to_categorical(rng.integers(0, 2, 48), 2)
    if nan_at_batch is not None:
        x[nan_at_batch * 8] = np.nan
    val_x = x[:8].copy()
    if val_nan:
        val_x[0] = np.nan
    model = k.Sequential([k.layers.Dense(2, activation="softmax", input_shape=(4,))])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    seen = []

    class Steps(k.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    guard = non_finite_guard()
    history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
                        validation_data=(val_x if val_nan else x[8:16], y[:8]), callbacks=[guard, Steps()])
    return guard, seen, history


def test_a_nan_loss_stops_fit_at_its_step():
    guard, seen, history = fit_with_guard(nan_at_batch=2)
    assert guard.found.startswith("epoch 1, step 3 (loss nan")
    assert seen == [0, 1, 2] and len(history.epoch) == 1


def test_finite_training_runs_every_epoch():
    guard, seen, history = fit_with_guard(nan_at_batch=None)
    assert guard.found is None and len(seen) == 12 and len(history.epoch) == 2


def test_a_nan_validation_loss_stops_after_its_epoch():
    guard, seen, history = fit_with_guard(nan_at_batch=None, val_nan=True)
    assert guard.found == "epoch 1 (val_loss nan)" and len(history.epoch) == 1


# ---------------------------------------------------------------- seeded augmentation


def images(n: int = 8, side: int = 32) -> np.ndarray:
    """Batches with structure (a bright square off centre), so every transform shows."""
    batch = np.zeros((n, side, side, 1), dtype=np.float32)
    for i in range(n):
        batch[i, 4 + i % 4:14 + i % 4, 6:20] = 200.0 + i
    return batch


def key(seed: int):
    """A batch's augmentation key (cxr.train.data.worker_dataset draws one per batch)."""
    import tensorflow as tf

    return tf.constant([seed, 0], tf.int64)


def augmented(augment: AugmentConfig, seed: int) -> np.ndarray:
    from cxr.train.data import augmentation

    return augmentation(augment)(images(), key(seed)).numpy()


def test_the_same_seed_gives_the_same_augmented_batch():
    first = augmented(AugmentConfig(), seed=5)
    assert not np.array_equal(first, images())
    np.testing.assert_array_equal(first, augmented(AugmentConfig(), seed=5))


def test_another_seed_gives_another_batch():
    assert not np.array_equal(augmented(AugmentConfig(), seed=5), augmented(AugmentConfig(), seed=6))


@pytest.mark.parametrize("augment", [AugmentConfig(0.2, 0, 0), AugmentConfig(0, 0.2, 0), AugmentConfig(0, 0, 0.2)])
def test_each_strength_moves_pixels_alone(augment):
    assert not np.array_equal(augmented(augment, seed=5), images())


def test_geometric_augmentation_copies_pixels_so_training_images_stay_as_sharp_as_scored_ones():
    # Three bilinear resamplings in a row (rotation, shift, zoom) took 55% of a real 96 px
    # X-ray's Laplacian energy: the model trained on blurred images and was scored on sharp ones.
    # Nearest-neighbour sampling only moves pixels: every value stays one of the image's own.
    batch, out = images(), augmented(AugmentConfig(0.2, 0.2, 0.2), seed=5)
    assert not np.array_equal(out, batch)
    for before, after in zip(batch, out):
        assert set(np.unique(after)) <= set(np.unique(before))


def epochs_of(dataset, count: int = 2) -> list[np.ndarray]:
    return [np.concatenate([x.numpy() for x, _ in dataset]) for _ in range(count)]


def test_zero_strengths_are_the_identity_and_evaluation_images_are_never_augmented(ray_session):
    from cxr.keras_lib import keras

    keras()
    from cxr.train.data import worker_dataset

    rows = [{"image": image.astype(np.uint8), "label": i % 2} for i, image in enumerate(images(20))]
    shard = ray_session.data.from_items(rows)
    as_stored = np.stack([r["image"] for r in rows]).astype(np.float32)
    # Zero strengths: exactly the unaugmented training stream (same shuffle, same pixels).
    zero = epochs_of(worker_dataset(shard, 5, 2, seed=3, training=True, augment=AugmentConfig(0, 0, 0)))
    plain = epochs_of(worker_dataset(shard, 5, 2, seed=3, training=True, augment=None))
    for a, b in zip(zero, plain):
        np.testing.assert_array_equal(a, b)
    assert sorted(map(bytes, zero[0])) == sorted(map(bytes, as_stored))
    # Augmented training differs (and repeats exactly: tests/test_seeds.py).
    strong = AugmentConfig(0.2, 0.2, 0.2)
    once = epochs_of(worker_dataset(shard, 5, 2, seed=3, training=True, augment=strong))
    assert not np.array_equal(once[0], plain[0])
    # Validation with augmentation asked for: the stored pixels, in order, every epoch.
    for epoch in epochs_of(worker_dataset(shard, 5, 2, seed=3, training=False, augment=strong)):
        np.testing.assert_array_equal(epoch, as_stored)


# ---------------------------------------------------------------- appearance augmentation

APPEARANCE = AugmentConfig(0, 0, 0).with_appearance(1.0)


def textured(n: int = 8, side: int = 32) -> np.ndarray:
    """Batches with gradients and edges, so that gamma, blur and resolution loss all show."""
    ramp = np.linspace(20.0, 230.0, side, dtype=np.float32)
    batch = np.broadcast_to(ramp[None, None, :, None], (n, side, side, 1)).copy()
    batch[:, 8:20, 10:14] = 250.0
    return batch


def appearance_of(augment: AugmentConfig, seed: int, batch: np.ndarray | None = None) -> np.ndarray:
    from cxr.train.data import augmentation

    return augmentation(augment)(textured() if batch is None else batch, key(seed)).numpy()


def test_appearance_is_seeded_same_seed_same_batch_other_seed_other_batch():
    first = appearance_of(APPEARANCE, seed=5)
    assert not np.allclose(first, textured(), atol=1.0)
    np.testing.assert_array_equal(first, appearance_of(APPEARANCE, seed=5))
    assert not np.array_equal(first, appearance_of(APPEARANCE, seed=6))
    assert first.min() >= 0 and first.max() <= 255  # still the model's input range


@pytest.mark.parametrize("name", ["gamma", "contrast", "brightness", "blur", "noise", "resolution"])
def test_each_appearance_strength_changes_pixels_alone_and_keeps_the_geometry(name):
    import dataclasses

    one = dataclasses.replace(AugmentConfig(0, 0, 0), **{name: getattr(APPEARANCE, name)})
    assert one.enabled and one.appearance
    # Blur and resolution loss are drawn once per batch, and one batch may draw next to
    # nothing (key 5 draws a blur of sigma 0.02): the second of two batches shows it.
    out = np.concatenate([appearance_of(one, seed=5), appearance_of(one, seed=6)])
    assert not np.allclose(out, np.concatenate([textured()] * 2), atol=0.5)
    # Nothing moves: the bright bar's column stays the brightest region's column in every image.
    assert out.shape == (2 * len(textured()),) + textured().shape[1:]
    assert np.all(np.abs(out[:, 8:20, 10:14].mean(axis=(1, 2, 3)) - out[:, 8:20, 20:24].mean(axis=(1, 2, 3))) > 5)


def test_zero_appearance_adds_nothing_to_the_geometric_augmentation():
    assert not AugmentConfig(0, 0, 0).with_appearance(0.0).enabled
    np.testing.assert_array_equal(appearance_of(AugmentConfig().with_appearance(0.0), seed=1),
                                  appearance_of(AugmentConfig(), seed=1))


def test_the_job_augments_appearance_by_default_and_it_scales_with_the_tune_strength():
    from cxr.cli.train import JOB
    from cxr.config import TrainConfig, TuneConfig

    assert not AugmentConfig().appearance  # the geometric part alone
    assert TrainConfig().augment == AugmentConfig().with_appearance(1.0) == JOB.build_config(JOB.parse_args([])).augment
    assert JOB.build_config(JOB.parse_args(["--appearance-augment", "0"])).augment == AugmentConfig()
    trial = TuneConfig().trial_config({"augment": 0.5})
    assert trial.augment.gamma == APPEARANCE.gamma / 2 and trial.augment.zoom == AugmentConfig().zoom / 2


def test_a_run_recorded_before_appearance_augmentation_resumes_without_it(tmp_path):
    run = started(tmp_path, augment=AugmentConfig())
    old = storage.read_json(run.settings)
    for name in ("gamma", "contrast", "brightness", "blur", "noise", "resolution"):
        del old["config"]["augment"][name]
    storage.write_json(run.settings, old)
    assert settings.check_resume(run, record(augment=AugmentConfig()))[1] == []
    # Today's default adds it: that would be another run.
    with pytest.raises(UserError, match="--augment-gamma"):
        settings.check_resume(run, record())


def test_training_with_appearance_augments_and_validation_never_is(ray_session):
    from cxr.keras_lib import keras

    keras()
    from cxr.train.data import worker_dataset

    rows = [{"image": image.astype(np.uint8), "label": i % 2} for i, image in enumerate(textured(20))]
    shard = ray_session.data.from_items(rows)
    as_stored = np.stack([r["image"] for r in rows]).astype(np.float32)
    plain = epochs_of(worker_dataset(shard, 5, 2, seed=3, training=True, augment=None))
    once = epochs_of(worker_dataset(shard, 5, 2, seed=3, training=True, augment=APPEARANCE))
    assert not np.array_equal(once[0], plain[0])
    for epoch in epochs_of(worker_dataset(shard, 5, 2, seed=3, training=False, augment=APPEARANCE)):
        np.testing.assert_array_equal(epoch, as_stored)
