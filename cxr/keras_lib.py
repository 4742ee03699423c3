"""The one place that imports Keras: this project trains with Keras 2 (the `tf_keras` package).

Why not Keras 3: with `MultiWorkerMirroredStrategy` and two or more workers, Keras 3's
`model.fit` fails with "Attempt to convert a value (PerReplica...)" (keras-team/keras#20585,
ray-project/ray#47464). Keras 2 runs it correctly. Two rules follow:

- `TF_USE_LEGACY_KERAS=1` must be set before TensorFlow first resolves `tf.keras`, so that
  `tf.keras` (which Ray's Keras callbacks use) is the same Keras 2 as ours. `keras()` sets it
  and checks that it took effect; call it before touching `tf.keras` in any other way.
- Under `MultiWorkerMirroredStrategy`, `save` and `save_weights` are collective operations:
  every rank must call them (non-chief ranks to a throwaway path), or the run hangs.

Model code gets Keras from `keras()` only, never from `import keras` or `tf.keras`, and
saves models with `save_model()` (tf_keras's own `model.save` writes HDF5 into `.keras`
files when called from a thread, as Ray Train's workers do; see there).

What TensorFlow prints is set here too (`tf_environment`, `quiet_tensorflow_import`): the
jobs show its C++ notices only with `--verbose`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# What every process that may touch TensorFlow needs in its environment, whatever the job
# prints: the jobs put it in every Ray worker's environment (cxr.runtime), and
# configure_environment() in this process.
TF_ENVIRONMENT = {"TF_USE_LEGACY_KERAS": "1"}

# Lines TensorFlow's shared libraries write while they load, before TF_CPP_MIN_LOG_LEVEL is
# read: absl's "All log messages before absl::InitializeLog() ..." banner and info-severity
# lines such as "I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine,
# GPU will not be used." (twice: libtensorflow_framework.so.2 and the profiler plugin each
# carry their own copy of absl and of the CUDA stub). And absl's raw mutex-event lines, such
# as "[mutex.cc : 452] RAW: Lock blocking 0x55b1... @ 0x7fa1...": now and then, while
# TensorFlow loads in a process that already holds another library's copy of absl (a Ray
# worker that has imported pyarrow), a mutex looks traced to one copy and logs its wait
# (tensorflow/tensorflow#99464). It reached a CI run's output once in many runs.
_LOAD_NOTICE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
                          r"STDERR|I\d{4} \d\d:\d\d:\S+ +\d+ \S+:\d+\] .*|\[mutex\.cc : \d+\] RAW: .*)$")


def tf_environment(verbose: bool = False, gpu: bool = False) -> dict[str, str]:
    """TF_ENVIRONMENT plus how much TensorFlow's C++ side logs, for every process of a job.

    With `verbose`, TensorFlow's own default (everything). Otherwise errors only on a GPU
    job: there "failed call to cuInit" or a cuDNN error is the one sign that TensorFlow fell
    back to the CPU. On CPUs, nothing below fatal: the only errors a working CPU run logs
    are that cuInit found no CUDA driver (every process that lists devices, even with
    CUDA_VISIBLE_DEVICES empty: the probe itself fails), and a real failure reaches Python
    as an exception with the same message. TF_ENABLE_ONEDNN_OPTS is left alone: oneDNN's
    faster CPU kernels stay on, and their "oneDNN custom operations are on" notice is
    info-level.
    """
    if verbose:
        return dict(TF_ENVIRONMENT)
    return {**TF_ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": "2" if gpu else "3"}


def configure_environment() -> None:
    """Set TF_ENVIRONMENT in this process, before anything imports TensorFlow or `tf.keras`
    (Ray's TensorFlow trainer does, on import)."""
    for name, value in TF_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def quiet_tensorflow_import() -> None:
    """Drop the notices TensorFlow's libraries print while loading, in this process.

    They come from static initializers, when `import tensorflow` loads the shared
    libraries: before TF_CPP_MIN_LOG_LEVEL is read, and absl (their logger) has no
    environment setting of its own. Nothing configures them away, so they are filtered
    (here only): the first `import tensorflow`, wherever it happens (our code, or Ray
    Train's controller and workers, which import TensorFlow before any of ours runs),
    writes its native stderr to a file, and everything but those notices is written back
    once it is loaded. Idempotent.
    """
    if not any(isinstance(finder, _QuietImport) for finder in sys.meta_path) and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, and loads it under `_load_notices_dropped`; once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # TensorFlow sees its real loader, as in a plain import.
        module.__loader__ = module.__spec__.loader = self.loader
        with _load_notices_dropped():
            self.loader.exec_module(module)


@contextlib.contextmanager
def _load_notices_dropped():
    """Native stderr (fd 2) to a file for the block, then back, without the load notices.
    Other threads' output of those seconds is delayed, not lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not _LOAD_NOTICE.match(line.rstrip("\n"))]
            if kept:
                os.write(2, "".join(kept).encode())


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
            "(or call cxr.keras_lib.keras()) before anything uses tf.keras")
    return tf_keras


def save_model(model, path: str) -> None:
    """`model.save(path)` to a `.keras` file, in the native format from any thread.

    tf_keras decides the format from a thread-local flag that its first save in a thread
    leaves False (tf_keras/src/saving/saving_lib.py, `_SAVING_V3_ENABLED`, restored to
    `getattr(..., False)` after saving): in any thread but the one that imported tf_keras,
    the second and later `model.save("x.keras")` write legacy HDF5 under that name, with a
    "You are saving your model as an HDF5 file" warning. Ray Train runs the training loop
    in such a thread, so every checkpoint after the first was HDF5. "keras_v3" names the
    native format without consulting the flag.
    """
    model.save(path, save_format="keras_v3")
