"""Grad-CAM: shapes and range, trained models that look where the class evidence is, and
vgg19_head's nested base checked against a second, independent computation.

Everything is 64 px and built here; each of the two training runs is a few seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr.evaluate import gradcam
from cxr import keras_lib
from cxr.train import models

SIZE = 64


@pytest.fixture(scope="module")
def keras():
    return keras_lib.keras()


@pytest.fixture(scope="module")
def scratch(keras):
    keras.utils.set_random_seed(1)
    return models.build_model("scratch_cnn", SIZE, 2)


@pytest.fixture(scope="module")
def vgg(keras):
    keras.utils.set_random_seed(2)
    return models.build_model("vgg19_head", SIZE, 2, weights="none")


def gray_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.float32)


def blob_images(n: int, rng: np.random.Generator, class_0_blob: bool) -> tuple[np.ndarray, np.ndarray]:
    """Noise; class 1 has a bright blob in the top-left quadrant, class 0 in another one
    (`class_0_blob`: where the blob is decides the class) or none (whether there is one does).
    """
    labels = np.arange(n) % 2
    images = rng.normal(70, 20, (n, SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    half = SIZE // 2
    for image, label in zip(images, labels):
        if not (label or class_0_blob):
            continue
        quadrant = 0 if label else rng.integers(1, 4)
        cy = half * (quadrant // 2) + rng.integers(8, half - 8)
        cx = half * (quadrant % 2) + rng.integers(8, half - 8)
        image += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2))
    return np.clip(images, 0, 255)[..., None].astype(np.float32), labels


def trained_on_blobs(keras, class_0_blob: bool):
    """A scratch_cnn trained on `blob_images` (accuracy checked), and held-out class-1 images."""
    rng = np.random.default_rng(7)
    train_images, train_labels = blob_images(320, rng, class_0_blob)
    test_images, test_labels = blob_images(40, rng, class_0_blob)
    keras.utils.set_random_seed(3)
    # No dropout: 4 epochs must suffice to learn the blobs; this tests Grad-CAM, not training.
    model = models.build_model("scratch_cnn", SIZE, 2, dropout=0)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(train_images, train_labels, batch_size=32, epochs=4, verbose=0)
    accuracy = (model.predict(test_images, verbose=0).argmax(-1) == test_labels).mean()
    assert accuracy >= 0.9, f"the model did not learn the blobs (accuracy {accuracy})"
    return model, test_images[test_labels == 1]


def assert_top_left(maps: np.ndarray) -> None:
    """Most of the heat in the top-left quadrant, where the class-1 evidence is."""
    half = SIZE // 2
    inside = maps[:, :half, :half].mean()
    outside = (maps.sum() - maps[:, :half, :half].sum()) / (maps.size * 3 / 4)
    assert inside > 3 * outside, (inside, outside)
    assert (maps.max(axis=(1, 2)) > 0).mean() >= 0.8  # most images have a map at all


def reference_vgg_maps(keras, model, images: np.ndarray, class_indices: np.ndarray) -> dict[str, np.ndarray]:
    """{method: maps}, computed the textbook way on a flat copy of vgg19_head: its VGG19
    layers re-applied one by one in the outer graph (sharing their weights), the logits
    from a linear copy of the last layer. No nested model, no cutting."""
    import tensorflow as tf

    base = model.get_layer("vgg19")
    inputs = keras.Input((SIZE, SIZE, 1))
    x = model.get_layer("resize")(inputs)
    x = model.get_layer("gray_to_rgb")([x, x, x])
    x = model.get_layer("vgg19_preprocess")(x)
    for layer in base.layers[1:]:
        x = layer(x)
        if layer.name == "block5_conv4":
            conv = x
    x = model.get_layer("fc")(model.get_layer("global_max_pool")(x))
    last = model.get_layer("probabilities")
    linear = keras.layers.Dense(last.units, name="logits")
    logits = linear(x)
    linear.set_weights(last.get_weights())
    flat = keras.Model(inputs, [conv, logits])

    with tf.GradientTape() as tape:
        features, scores = flat(images, training=False)
        chosen = tf.gather(scores, class_indices, axis=1, batch_dims=1)
    gradients = tape.gradient(chosen, features).numpy()
    features = features.numpy()
    return {"gradcam": _textbook_maps(gradients.mean(axis=(1, 2), keepdims=True), features),
            "hirescam": _textbook_maps(gradients, features)}


def _textbook_maps(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    cams = np.maximum((weights * features).sum(-1), 0)
    cams = tf.image.resize(cams[..., None], (SIZE, SIZE), method="bilinear").numpy()[..., 0]
    peaks = cams.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, cams / np.where(peaks > 0, peaks, 1), 0)


def assert_heatmaps(maps: np.ndarray, n: int) -> None:
    assert maps.shape == (n, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    peaks = maps.max(axis=(1, 2))
    assert np.all((peaks == 0) | np.isclose(peaks, 1)), peaks  # each map divided by its own max


def test_last_conv_layer_finds_the_nested_one(scratch, vgg):
    assert gradcam.last_conv_layer(scratch) == ("block3_conv2",)
    assert gradcam.last_conv_layer(vgg) == ("vgg19", "block5_conv4")
    assert gradcam.find_layer(vgg, "block5_conv4") == ("vgg19", "block5_conv4")
    assert gradcam.find_layer(vgg, "vgg19/block3_conv1") == ("vgg19", "block3_conv1")
    for bad in ("no_such_layer", "vgg19/no_such_layer", "fc/block1_conv1"):
        with pytest.raises(ValueError):
            gradcam.find_layer(vgg, bad)


def test_scratch_cnn_maps_have_the_image_shape_and_unit_range(scratch):
    images = gray_batch(5)
    maps = gradcam.grad_cam(scratch, images, np.array([0, 1, 0, 1, 1]))
    assert_heatmaps(maps, 5)
    assert (maps.max(axis=(1, 2)) == 1).any()
    # Batching does not change the result: each image's map is its own.
    one_by_one = gradcam.grad_cam(scratch, images, np.array([0, 1, 0, 1, 1]), batch_size=1)
    np.testing.assert_allclose(maps, one_by_one, atol=1e-5)


def test_grad_cam_leaves_the_model_as_it_was(scratch):
    images = gray_batch(3, seed=1)
    before, config = scratch.predict(images, verbose=0), scratch.get_config()
    gradcam.grad_cam(scratch, images, np.array([1, 1, 0]))
    gradcam.grad_cam(scratch, images, np.array([1, 1, 0]), layer_name="block2_conv2")
    np.testing.assert_array_equal(scratch.predict(images, verbose=0), before)
    assert scratch.get_config() == config


def test_layer_override_and_bad_inputs(scratch):
    images = gray_batch(2, seed=2)
    default = gradcam.grad_cam(scratch, images, np.array([0, 1]))
    named = gradcam.grad_cam(scratch, images, np.array([0, 1]), layer_name="block3_conv2")
    earlier = gradcam.grad_cam(scratch, images, np.array([0, 1]), layer_name="block1_conv2")
    np.testing.assert_array_equal(default, named)
    assert_heatmaps(earlier, 2)
    assert not np.allclose(default, earlier)
    with pytest.raises(ValueError, match="class_indices"):
        gradcam.grad_cam(scratch, images, np.array([0, 2]))
    with pytest.raises(ValueError, match="class_indices"):
        gradcam.grad_cam(scratch, images, np.array([0]))
    with pytest.raises(ValueError, match="images"):
        gradcam.grad_cam(scratch, images[..., 0], np.array([0, 1]))
    with pytest.raises(ValueError, match="method"):
        gradcam.grad_cam(scratch, images, np.array([0, 1]), method="saliency")
    with pytest.raises(ValueError, match="no_such_layer"):
        gradcam.grad_cam(scratch, images, np.array([0, 1]), layer_name="no_such_layer")


def test_a_map_without_positive_evidence_stays_zero(keras):
    # All-zero features (zero kernel and bias): nothing for the map to show, and no 0/0.
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer="zeros", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    maps = gradcam.grad_cam(model, np.ones((2, 16, 16, 1), np.float32), np.array([0, 2]))
    assert maps.shape == (2, 16, 16)
    np.testing.assert_array_equal(maps, 0)


def test_vgg19_head_reaches_into_its_nested_base(keras, vgg):
    images = np.concatenate([gray_batch(2, seed=3)] * 2)
    classes = np.array([0, 0, 1, 1])  # both classes for each image
    reference = reference_vgg_maps(keras, vgg, images, classes)
    for method in gradcam.METHODS:
        maps = gradcam.grad_cam(vgg, images, classes, method=method)
        assert_heatmaps(maps, 4)
        np.testing.assert_allclose(maps, reference[method], atol=1e-4, err_msg=method)
        assert max(m.std() for m in maps) > 0.05, method  # random weights, yet a map with structure


def test_trained_scratch_cnn_grad_cam_finds_the_blob(keras):
    model, positives = trained_on_blobs(keras, class_0_blob=False)
    maps = gradcam.grad_cam(model, positives, np.ones(len(positives), int))
    assert_heatmaps(maps, len(positives))
    assert_top_left(maps)


def test_trained_scratch_cnn_hirescam_finds_where_the_blob_is(keras):
    # Here both classes have a blob and only its position tells them apart. scratch_cnn's
    # Flatten-Dense head then weighs positions against each other, and Grad-CAM's spatial
    # mean of the gradients cancels out: its maps came out all zero (see cxr.evaluate.gradcam).
    model, positives = trained_on_blobs(keras, class_0_blob=True)
    maps = gradcam.grad_cam(model, positives, np.ones(len(positives), int), method="hirescam")
    assert_heatmaps(maps, len(positives))
    assert_top_left(maps)


def test_overlay_blends_gray_and_jet():
    image = np.full((8, 10), 100, np.uint8)
    heat = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)
    blended = gradcam.overlay(image, heat)
    assert blended.shape == (8, 10, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(gradcam.overlay(image, heat, alpha=0.0), np.full((8, 10, 3), 100))
    pure = gradcam.overlay(image[..., None], heat, alpha=1.0)
    assert pure[0, 0, 2] > 100 > pure[0, 0, 0]  # jet: blue at 0
    assert pure[-1, -1, 0] > 100 > pure[-1, -1, 2]  # red at 1
    with pytest.raises(ValueError):
        gradcam.overlay(image, heat[:4])
    with pytest.raises(ValueError):
        gradcam.overlay(image, heat, alpha=1.5)
