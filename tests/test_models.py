"""The two classifiers: exact sizes, preprocessing inside the model, saving, and `--weights`.

Every model is built with random weights: nothing here downloads (the "imagenet" tests
cut the network off themselves) and nothing trains.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cxr.errors import UserError
from cxr import keras_lib
from cxr.train import models

SMALL = 64  # px: the tests' image size (vgg19_head resizes it to 224 itself)


@pytest.fixture(scope="module")
def keras():
    return keras_lib.keras()


def gray_batch(n: int, size: int = SMALL, seed: int = 0) -> np.ndarray:
    """What the shards hold: gray 0-255 values as float32, shape (n, size, size, 1)."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1)).astype(np.float32)


def trainable_count(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache and no name resolution, so an "imagenet" download fails at once."""
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (network cut by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home" / "models"


def test_keras_is_keras_2_and_tf_keras_routes_to_it(keras):
    import tensorflow as tf

    assert keras.__name__ == "tf_keras" and keras.__version__.startswith("2.")
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.Model is keras.Model  # Ray's Keras callbacks use tf.keras


def test_scratch_cnn_has_the_papers_parameter_count():
    model = models.build_model("scratch_cnn", 299, 2)
    assert model.input_shape == (None, 299, 299, 1)
    assert model.count_params() == 18_129_890


@pytest.mark.parametrize("image_size", [224, 299])
def test_vgg19_head_has_the_papers_parameter_counts(image_size):
    model = models.build_model("vgg19_head", image_size, 2)
    assert model.input_shape == (None, image_size, image_size, 1)
    assert model.count_params() == 20_090_306
    assert trainable_count(model) == 65_922
    assert not model.get_layer("vgg19").trainable
    assert ("resize" in [layer.name for layer in model.layers]) == (image_size != models.VGG_INPUT_SIZE)


@pytest.mark.parametrize("model_name", models.MODEL_NAMES)
def test_small_images_give_one_probability_row_per_image(model_name):
    model = models.build_model(model_name, SMALL, 3)
    assert models.model_input_shape(model_name, SMALL) == (SMALL, SMALL, 1) == model.input_shape[1:]
    probabilities = model.predict(gray_batch(4), verbose=0)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_vgg_preprocessing_matches_keras_preprocess_input(keras):
    gray = gray_batch(2, models.VGG_INPUT_SIZE)
    expected = keras.applications.vgg19.preprocess_input(np.repeat(gray, 3, axis=-1))  # on a copy
    # Inside the model: the gray-to-RGB repeat and the registered layer, as they are wired.
    model = models.build_model("vgg19_head", models.VGG_INPUT_SIZE, 2)
    upto = keras.Model(model.input, model.get_layer("vgg19_preprocess").output)
    np.testing.assert_allclose(upto.predict(gray, verbose=0), expected, atol=1e-4)
    # Eagerly, on real RGB, where the BGR channel swap shows.
    rgb = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    layer = model.get_layer("vgg19_preprocess")
    np.testing.assert_allclose(layer(rgb).numpy(), keras.applications.vgg19.preprocess_input(rgb.copy()),
                               atol=1e-4)


@pytest.fixture(scope="module", params=models.MODEL_NAMES)
def saved_model(request, tmp_path_factory):
    """(model, its `.keras` file, images): saved once, as a VGG19 file weighs 80 MB."""
    model = models.build_model(request.param, SMALL, 2)
    path = tmp_path_factory.mktemp(request.param) / "model.keras"
    model.save(path)
    return model, path, gray_batch(3)


def test_saved_model_loads_with_identical_predictions(saved_model, keras):
    model, path, images = saved_model
    loaded = keras.models.load_model(path)  # safe mode on: no Lambda, only registered layers
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


@pytest.mark.parametrize("saved_model", ["vgg19_head"], indirect=True)  # the one with a custom layer
def test_saved_model_loads_in_a_fresh_process(saved_model, tmp_path):
    """The evaluator loads what the trainer saved, in another process: cxr.train.models.load_model
    must make the custom layer known there before Keras looks it up."""
    model, path, images = saved_model
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, numpy as np; from cxr.train.models import load_model; model, images, out = sys.argv[1:]; "
            "np.save(out, load_model(model).predict(np.load(images), verbose=0))")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
                   check=True, capture_output=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), model.predict(images, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("model_name", models.MODEL_NAMES)
def test_weights_file_round_trip_and_class_count_mismatch(model_name, tmp_path):
    model = models.build_model(model_name, SMALL, 2)
    path = str(tmp_path / "weights.h5")
    model.save_weights(path)
    images = gray_batch(3)
    restored = models.build_model(model_name, SMALL, 2, weights=path)
    np.testing.assert_array_equal(restored.predict(images, verbose=0), model.predict(images, verbose=0))
    with pytest.raises(UserError, match=r"weights\.h5 has 2 output classes .* with 3 classes"):
        models.build_model(model_name, SMALL, 3, weights=path)


def test_vgg19_no_top_weights_file_goes_into_the_base(tmp_path):
    """A file shaped like Keras's ImageNet one fills the frozen base and leaves the head alone."""
    source = models.build_model("vgg19_head", SMALL, 2)
    path = str(tmp_path / "vgg19_notop.h5")
    source.get_layer("vgg19").save_weights(path)
    model = models.build_model("vgg19_head", models.VGG_INPUT_SIZE, 3, weights=path)
    for loaded, saved in zip(model.get_layer("vgg19").get_weights(), source.get_layer("vgg19").get_weights()):
        np.testing.assert_array_equal(loaded, saved)


def test_weights_that_do_not_fit_or_do_not_exist_are_user_errors(tmp_path):
    vgg_weights = str(tmp_path / "vgg.h5")
    models.build_model("vgg19_head", SMALL, 2).get_layer("vgg19").save_weights(vgg_weights)
    with pytest.raises(UserError, match="does not fit a scratch_cnn at 64 px with 2 classes"):
        models.build_model("scratch_cnn", SMALL, 2, weights=vgg_weights)
    not_weights = tmp_path / "notes.h5"
    not_weights.write_text("not HDF5")
    with pytest.raises(UserError, match="notes.h5 does not fit"):
        models.build_model("scratch_cnn", SMALL, 2, weights=str(not_weights))
    with pytest.raises(UserError, match="missing.h5 does not exist"):
        models.build_model("vgg19_head", SMALL, 2, weights=str(tmp_path / "missing.h5"))


def test_imagenet_without_cache_or_network_names_the_file_to_provide(offline):
    with pytest.raises(UserError) as caught:
        models.build_model("vgg19_head", SMALL, 2, weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert models.VGG19_NOTOP_FILE in message and models.VGG19_NOTOP_MD5 in message
    assert f"into {offline}/" in message and "--weights PATH" in message


def test_imagenet_uses_the_cached_file_without_network(offline, monkeypatch):
    # A stand-in for Keras's file: the real one is 80 MB and cannot be downloaded here.
    source = models.build_model("vgg19_head", SMALL, 2)
    offline.mkdir(parents=True)
    cached = offline / models.VGG19_NOTOP_FILE
    source.get_layer("vgg19").save_weights(str(cached))
    monkeypatch.setattr(models, "VGG19_NOTOP_MD5", models._md5(cached))
    model = models.build_model("vgg19_head", SMALL, 2, weights="imagenet")
    np.testing.assert_array_equal(model.get_layer("vgg19").get_weights()[-2],
                                  source.get_layer("vgg19").get_weights()[-2])


def test_bad_model_arguments_are_user_errors():
    with pytest.raises(UserError, match="imagenet weights exist only for vgg19_head"):
        models.build_model("scratch_cnn", SMALL, 2, weights="imagenet")
    with pytest.raises(UserError, match="imagenet weights exist only for vgg19_head"):
        models.resolve_weights("scratch_cnn", "imagenet")
    with pytest.raises(UserError, match="--model must be one of scratch_cnn, vgg19_head"):
        models.model_input_shape("resnet", SMALL)
    with pytest.raises(UserError, match="at least 2 classes"):
        models.build_model("scratch_cnn", SMALL, 1)
    with pytest.raises(UserError, match="at least 36"):
        models.build_model("scratch_cnn", 32, 2)
