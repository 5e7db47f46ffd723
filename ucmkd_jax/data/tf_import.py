"""How this project imports TensorFlow: once, where shards are read or written, never on the
compiled path. Shared by ``ucmkd_jax.data`` (reading) and ``data_prep`` (writing, through TFDS)."""
from __future__ import annotations

__all__ = ["import_tf"]


def _import_tensorflow_without_keras():
    """``import tensorflow``, minus the Keras 3 import that TensorFlow 2.21 makes eagerly at import
    (with scikit-learn behind it, where installed): 3 of its 8.5 s of CPU on this project's 2-core
    machine (`/usr/bin/time python -c "import tensorflow"`), and nothing here uses Keras. TensorFlow
    skips that import when it raises ImportError; the block is lifted right after, so ``tf.keras``
    or a later ``import keras`` still load it."""
    import sys

    if "tensorflow" in sys.modules or "keras" in sys.modules:
        import tensorflow as tf

        return tf
    sys.modules["keras"] = None  # `import keras...` raises ImportError while this stands
    try:
        import tensorflow as tf
    finally:
        if sys.modules.get("keras", 0) is None:
            del sys.modules["keras"]
    return tf


def import_tf():
    """(tensorflow, tensorflow_datasets), imported on first use with TensorFlow kept off the GPUs
    (the host runs the input pipeline; the accelerators are JAX's) and without Keras; an
    ImportError says which extra to install."""
    try:
        tf = _import_tensorflow_without_keras()
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"prepared shards (reading or writing) need TensorFlow and TFDS: pip install -e '.[data]' ({e})") from e
    try:  # the input pipeline runs on the host: keep TensorFlow off the accelerators JAX uses
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # pragma: no cover - TensorFlow's devices were initialised already
        pass
    return tf, tfds
