"""ucmkd_jax.data.tf_import: TensorFlow without the Keras import it makes by itself, in a fresh
interpreter (the test process may hold TensorFlow already)."""
import subprocess
import sys

SCRIPT = """
import sys
from ucmkd_jax.data.tf_import import import_tf
tf, tfds = import_tf()
assert "keras" not in sys.modules and "sklearn" not in sys.modules, "Keras was imported"
assert [int(x) for x in tf.data.Dataset.range(3).map(lambda x: 2 * x).as_numpy_iterator()] == [0, 2, 4]
assert tf.config.get_visible_devices("GPU") == []
import keras  # the block is lifted: Keras still loads for whoever asks
assert tf.keras.layers.Dense is keras.layers.Dense
print("ok")
"""


def test_tensorflow_without_keras_and_keras_still_loadable():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
