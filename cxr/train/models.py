"""The two classifiers of the source paper, in Keras 2 (`tf_keras`, see cxr.keras_lib).

Both take what the shards hold: gray images as float tensors of 0-255 values, shape
(size, size, 1), and end in a softmax over the classes. Each model carries its own input
scaling as layers, so a saved or exported model preprocesses exactly as in training.

- `scratch_cnn`: the paper's own network, three blocks of two valid 3x3 convolutions,
  batch normalization and 2x2 max pooling (32, 64, 128 filters), then Dense(128) and the
  softmax: 18,129,890 parameters at 299 px and 2 classes.
- `vgg19_head`: the paper's reference model, a frozen ImageNet VGG19 (no top) under global
  max pooling, Dense(128) and the softmax: 20,090,306 parameters, 65,922 of them trainable.

Weights (the CLI's `--weights`): "none" (random), "imagenet" (vgg19_head's base, from
Keras's cache or its download) or a local file, see `resolve_vgg_weights` and `build_model`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
import zlib
from pathlib import Path

from cxr.config import MODEL_NAMES, TrainConfig, check_model_name  # noqa: F401  (MODEL_NAMES: the models built here)
from cxr.errors import UserError, one_line
from cxr import keras_lib

VGG_INPUT_SIZE = 224
BN_MOMENTUM = 0.9
VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_MD5 = "253f8cb515780f3b799900260a226db6"

# Three blocks of two valid 3x3 convolutions and a 2x2 pooling: 36 px is the smallest
# input that still leaves one pixel at the end.
SCRATCH_MIN_SIZE = 36


def model_input_shape(model_name: str, image_size: int) -> tuple[int, int, int]:
    """The input shape of `model_name` fed with `image_size` shards: gray, any size.

    vgg19_head resizes to VGG's 224 px and repeats gray to RGB inside the model, so both
    models read the shards as they are.
    """
    check_model_name(model_name)
    return (image_size, image_size, 1)


def check_image_size(model_name: str, image_size: int) -> None:
    """The scratch CNN's three blocks of valid convolutions and pooling need 36 px or more."""
    if model_name == "scratch_cnn" and image_size < SCRATCH_MIN_SIZE:
        raise UserError(f"scratch_cnn needs --image-size of at least {SCRATCH_MIN_SIZE}, got {image_size}")


def build_model(model_name: str, image_size: int, num_classes: int, weights: str | None = None,
                dropout: float = TrainConfig.dropout):
    """A new, uncompiled `tf_keras.Model`; `weights` is "none"/None, "imagenet" or a file path.

    `dropout` is the rate of the dropout layers around the dense head (no parameters, so
    the paper's counts hold); 0 leaves them out.

    A file is loaded into the whole model, except that vgg19_head also takes a VGG19 no-top
    weights file (such as Keras's ImageNet one) for its base.
    """
    input_shape = model_input_shape(model_name, image_size)  # checks the name
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    check_image_size(model_name, image_size)
    # Resolve first: a missing file or a failed download should cost no model building.
    weights_path = resolve_weights(model_name, weights)

    keras = keras_lib.keras()
    if model_name == "scratch_cnn":
        model = _scratch_cnn(keras, input_shape, num_classes, dropout)
    else:
        model = _vgg19_head(keras, input_shape, num_classes, dropout)
    if weights_path is not None:
        if model_name == "vgg19_head" and _is_vgg19_notop_file(weights_path):
            _load_weights(model.get_layer("vgg19"), weights_path, "the VGG19 base")
        else:
            _check_output_units(weights_path, model_name, num_classes)
            _load_weights(model, weights_path, f"a {model_name} at {image_size} px with {num_classes} classes")
    return model


def load_model(path: str, name: str | None = None):
    """Load a model saved by `model.save` (".keras" or SavedModel), with our custom layers known.

    A file Keras cannot read is a one-line UserError naming it (`name`: where it came from,
    when `path` is a local copy); callers check files with `model_file_damage` first, where
    the error can still say what to do.
    """
    _vgg19_preprocess_class()  # registers it with Keras, which looks it up by name on loading
    try:
        return keras_lib.keras().models.load_model(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{name or path}: not a readable Keras model ({one_line(exc)})") from None


# The first bytes of an HDF5 file: tf_keras's legacy format, which checkpoints written
# before cxr.keras_lib.save_model may hold under the name model.keras.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"


def model_file_damage(handle) -> str | None:
    """Why a saved model file (a seekable binary file object) is not whole, or None.

    Reads it through without TensorFlow, a second per 100 MB or so: a `.keras` file is a
    zip archive, each member with its CRC, and its end holds the directory, which a cut
    file loses; a legacy HDF5 file records its own length, and every dataset is read.
    """
    try:
        if zipfile.is_zipfile(handle):
            with zipfile.ZipFile(handle) as archive:
                failed = archive.testzip()
            return f"{failed} in its archive fails its CRC check" if failed else None
        handle.seek(0)
        head = handle.read(8)
        if head.startswith(_ZIP_SIGNATURE):
            return "cut short: its .keras archive has no end"
        if head == _HDF5_SIGNATURE:
            return _hdf5_damage(handle)
        return "not a Keras model file" if head else "empty"
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:  # not OSError: storage's own failures
        return one_line(exc)


def _hdf5_damage(handle) -> str | None:
    import h5py  # TensorFlow's dependency: only for legacy files

    def read(_, item) -> None:
        if isinstance(item, h5py.Dataset):
            item[()]

    handle.seek(0)
    try:
        with h5py.File(handle, "r") as model_file:
            model_file.visititems(read)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        return f"unreadable HDF5 ({one_line(exc)})"
    return None


def _dense_head(layers, x, num_classes: int, dropout: float):
    """Dense(128) and the softmax, as in the paper, with dropout around the dense layer.

    scratch_cnn's Flatten feeds Dense(128) with 17,842,176 weights at 299 px (2.4 M at 128
    px): without dropout it memorises the training set within a few epochs
    (docs/benchmarks.md, quality section).
    """
    if dropout:
        x = layers.Dropout(dropout, name="dropout_features")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout_fc")(x)
    return layers.Dense(num_classes, activation="softmax", name="probabilities")(x)


def _scratch_cnn(keras, input_shape: tuple[int, int, int], num_classes: int, dropout: float):
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    for block, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"block{block}_conv1")(x)
        x = layers.Conv2D(filters, 3, activation="relu", name=f"block{block}_conv2")(x)
        # Momentum 0.9, not Keras's 0.99: a small data set gives a few dozen steps an epoch,
        # and at 0.99 the moving statistics that validation uses are still near their
        # initial values after the first epochs, so validation loss swings wildly.
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_bn")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, _dense_head(layers, x, num_classes, dropout), name="scratch_cnn")


def _vgg19_head(keras, input_shape: tuple[int, int, int], num_classes: int, dropout: float):
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="image")
    image_size = input_shape[0]
    x = inputs
    if image_size != VGG_INPUT_SIZE:
        # "area" averages when shrinking (plain bilinear would alias fine lung texture);
        # bilinear when enlarging, where area would give blocky nearest-like pixels.
        interpolation = "area" if image_size > VGG_INPUT_SIZE else "bilinear"
        x = layers.Resizing(VGG_INPUT_SIZE, VGG_INPUT_SIZE, interpolation=interpolation, name="resize")(x)
    x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = _vgg19_preprocess_class()(name="vgg19_preprocess")(x)
    # Always built without weights: loading them is ours to do (see build_model), so that
    # a missing file gives a one-line error and Keras never downloads behind our back.
    base = keras.applications.VGG19(include_top=False, weights=None,
                                    input_shape=(VGG_INPUT_SIZE, VGG_INPUT_SIZE, 3))
    base.trainable = False
    # training=False keeps the base in inference mode even if it is unfrozen for fine-tuning.
    x = base(x, training=False)
    x = layers.GlobalMaxPooling2D(name="global_max_pool")(x)
    return keras.Model(inputs, _dense_head(layers, x, num_classes, dropout), name="vgg19_head")


@functools.cache
def _vgg19_preprocess_class():
    """The `Vgg19Preprocess` layer class, defined on first use so importing cxr.train.models stays free.

    A registered Layer rather than a Lambda: a saved model then names it ("cxr>Vgg19Preprocess")
    instead of pickling Python bytecode, and loads without `safe_mode=False`.
    """
    keras = keras_lib.keras()

    @keras.saving.register_keras_serializable(package="cxr")
    class Vgg19Preprocess(keras.layers.Layer):
        """VGG19's own `preprocess_input`: RGB to BGR and ImageNet channel means subtracted,
        on the 0-255 scale (Caffe style, what the ImageNet weights were trained with)."""

        def call(self, inputs):
            return keras.applications.vgg19.preprocess_input(inputs)

    return Vgg19Preprocess


def resolve_weights(model_name: str, weights: str | None) -> str | None:
    """`resolve_vgg_weights`, refusing "imagenet" for a model that has no ImageNet weights."""
    check_model_name(model_name)
    if model_name != "vgg19_head" and weights == "imagenet":
        raise UserError(f"imagenet weights exist only for vgg19_head, not {model_name}: "
                        "use --weights none or a weights file")
    return resolve_vgg_weights(weights)


def resolve_vgg_weights(weights: str | None) -> str | None:
    """`--weights` as a local file path, or None for random initialization.

    "imagenet" means Keras's cached VGG19 no-top file, downloaded there if missing.
    """
    if weights is None or weights == "none":
        return None
    if weights == "imagenet":
        return _imagenet_weights_file()
    path = os.path.expanduser(weights)
    # A TensorFlow-format checkpoint is a prefix: "<path>.index" and "<path>.data-*".
    if not (os.path.isfile(path) or os.path.isfile(path + ".index")):
        raise UserError(f"--weights file {weights} does not exist")
    return path


def keras_models_dir() -> Path:
    """Keras's cache of application weights: `$KERAS_HOME/models`, by default `~/.keras/models`."""
    # tf_keras's get_file ignores KERAS_HOME (Keras 3's honours it): we pass it ourselves.
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _imagenet_weights_file() -> str:
    cached = keras_models_dir() / VGG19_NOTOP_FILE
    # Checked here first, not left to get_file: that one silently moves to /tmp/.keras
    # when the cache is read-only, and would then miss a file provided there.
    if cached.is_file() and _md5(cached) == VGG19_NOTOP_MD5:
        return str(cached)
    damaged = " (the one that was there was damaged)" if cached.exists() else ""
    utils = keras_lib.keras().utils
    from tf_keras.src.applications.vgg19 import WEIGHTS_PATH_NO_TOP  # where Keras itself fetches it

    try:
        return utils.get_file(VGG19_NOTOP_FILE, WEIGHTS_PATH_NO_TOP, cache_subdir="models",
                              file_hash=VGG19_NOTOP_MD5, cache_dir=str(cached.parent.parent))
    except Exception as error:  # noqa: BLE001 - narrowed just below
        if not _is_download_failure(error):
            raise
        raise UserError(f"cannot download the VGG19 ImageNet weights ({_download_reason(error)}): put "
                        f"{VGG19_NOTOP_FILE} (md5 {VGG19_NOTOP_MD5}) into {cached.parent}/{damaged} "
                        f"or pass --weights PATH") from error


def _is_download_failure(error: Exception) -> bool:
    # get_file wraps HTTP and URL errors into a bare Exception("URL fetch failure on ...");
    # sockets raise OSError (timeouts, resets, a cache it cannot write); a download that
    # does not match the md5 is a ValueError.
    return isinstance(error, (OSError, ValueError)) or str(error).startswith("URL fetch failure")


def _download_reason(error: Exception) -> str:
    # "URL fetch failure on <url>: None -- [Errno -2] Name or service not known": the URL
    # is noise in a one-line message, the part after " -- " is the cause.
    line = _first_line(error)
    return line.rsplit(" -- ", 1)[-1] if line.startswith("URL fetch failure") else line


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _h5_weights_group(file):
    """The group of a legacy Keras HDF5 weights file that lists its layers, or None.

    `save_weights("x.h5")` writes the layer list at the root, `save("x.h5")` under
    "model_weights"; other formats (".weights.h5", ".keras", checkpoints) have neither.
    """
    if "layer_names" in file.attrs:
        return file
    if "model_weights" in file and "layer_names" in file["model_weights"].attrs:
        return file["model_weights"]
    return None


def _read_h5_layers(path: str) -> list[tuple[str, list[tuple[int, ...]]]] | None:
    """[(layer name, [weight shapes])] of a legacy Keras HDF5 weights file, else None."""
    import h5py  # a tf_keras dependency; imported here to keep module import light

    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as file:
        group = _h5_weights_group(file)
        if group is None:
            return None
        layers = []
        for name in (_as_str(n) for n in group.attrs["layer_names"]):
            weight_names = [_as_str(w) for w in group[name].attrs.get("weight_names", [])]
            layers.append((name, [tuple(group[name][w].shape) for w in weight_names]))
        return layers


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _is_vgg19_notop_file(path: str) -> bool:
    """True for VGG19's own no-top weights (Keras's ImageNet file or one like it).

    Such a file lists VGG's layers themselves; a whole vgg19_head's weights list the base
    as one nested layer named "vgg19".
    """
    layers = _read_h5_layers(path)
    return layers is not None and any(name == "block1_conv1" for name, _ in layers)


def _check_output_units(path: str, model_name: str, num_classes: int) -> None:
    """Refuse, by name, a weights file whose last Dense layer has another number of classes."""
    layers = _read_h5_layers(path)
    shapes = [shapes for _, shapes in layers or () if shapes]
    if not shapes or len(shapes[-1][0]) != 2:
        return  # not a legacy HDF5 file, or not ending in a Dense: load_weights will judge
    saved_classes = shapes[-1][0][-1]
    if saved_classes != num_classes:
        raise UserError(f"--weights file {path} has {saved_classes} output classes and does not fit "
                        f"a {model_name} with {num_classes} classes")


def _load_weights(model, path: str, what: str) -> None:
    import tensorflow as tf  # already imported by keras_lib.keras(); here for its error types

    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError, tf.errors.OpError) as error:
        raise UserError(f"--weights file {path} does not fit {what}: {_first_line(error)}") from error


def _first_line(error: Exception, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
