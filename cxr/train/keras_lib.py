"""The one place that imports Keras: this project trains with Keras 2 (the `tf_keras` package).

Why not Keras 3: with `MultiWorkerMirroredStrategy` and two or more workers, Keras 3's
`model.fit` fails with "Attempt to convert a value (PerReplica...)" (keras-team/keras#20585,
ray-project/ray#47464). Keras 2 runs it correctly. Two rules follow:

- `TF_USE_LEGACY_KERAS=1` must be set before TensorFlow first resolves `tf.keras`, so that
  `tf.keras` (which Ray's Keras callbacks use) is the same Keras 2 as ours. `keras()` sets it
  and checks that it took effect; call it before touching `tf.keras` in any other way.
- Under `MultiWorkerMirroredStrategy`, `save` and `save_weights` are collective operations:
  every rank must call them (non-chief ranks to a throwaway path), or the run hangs.

Model code gets Keras from `keras()` only, never from `import keras` or `tf.keras`.
"""

from __future__ import annotations

import os


# What every process that may touch TensorFlow needs in its environment; training workers
# get it through Ray's runtime environment, the driver from configure_environment().
TF_ENVIRONMENT = {
    "TF_USE_LEGACY_KERAS": "1",
    # Level 2 keeps warnings and errors but drops TF's C++ info lines. (TF 2.21 still prints
    # its oneDNN and "no CUDA drivers" notes: they are logged before this setting is read.)
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def configure_environment() -> None:
    """Set TF_ENVIRONMENT in this process, before anything imports TensorFlow or `tf.keras`
    (Ray's TensorFlow trainer does, on import)."""
    for name, value in TF_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def keras():
    """The `tf_keras` module, with TensorFlow configured for it (see the module docstring)."""
    configure_environment()
    import tensorflow as tf
    import tf_keras

    # TF resolves `tf.keras` lazily from TF_USE_LEGACY_KERAS, once per process. If something
    # had already resolved it to Keras 3 (or the variable was set to another value), Ray's
    # callbacks and our models would belong to two different Kerases: fail loudly now.
    if tf.keras.layers.Layer is not tf_keras.layers.Layer:
        raise RuntimeError(
            "tf.keras is Keras 3 in this process, not tf_keras: set TF_USE_LEGACY_KERAS=1 "
            "(or call cxr.train.keras_lib.keras()) before anything uses tf.keras")
    return tf_keras
