"""ucmkd_jax.data.spec: the one data spec, and the import arrows around it.

``import ucmkd_jax.data`` stays free of JAX and TensorFlow (data_prep imports the spec through
it), and data_prep imports nothing from ucmkd_jax but the spec, the seeded splitter and the
CLIs' error handling (plain Python all three)."""
import ast
import subprocess
import sys
from pathlib import Path

from ucmkd_jax.data import spec

ROOT = Path(__file__).resolve().parents[2]


def test_import_ucmkd_jax_data_imports_neither_jax_nor_tensorflow():
    code = ("import sys, ucmkd_jax.data, ucmkd_jax.data.spec, ucmkd_jax.data.stratify; "
            "print(sorted(m for m in ('jax', 'jaxlib', 'flax', 'tensorflow', 'tensorflow_datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _ucmkd_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = ([f"{node.module}.{a.name}" for a in node.names] if node.module in ("ucmkd_jax", "ucmkd_jax.data")
                     else [node.module])
            yield from (n for n in names if n.split(".")[0] == "ucmkd_jax")
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "ucmkd_jax")


def test_data_prep_imports_only_the_spec_and_the_splitter():
    used = {p.name: sorted(set(_ucmkd_imports(p))) for p in sorted((ROOT / "data_prep").glob("*.py"))}
    # cli: its error lines; tf_import: TensorFlow imported as the readers import it
    allowed = {"ucmkd_jax.data.spec", "ucmkd_jax.data.stratify", "ucmkd_jax.cli", "ucmkd_jax.data.tf_import"}
    assert {m for ms in used.values() for m in ms} <= allowed, used
    assert any(used.values())  # the arrow exists: the spec is read, not copied


def test_the_spectrogram_shape_follows_from_the_protocol():
    # 10 s at 16 kHz, nperseg 512, noverlap 353: 257 bins x 1 + (160000 - 512) // 159 frames
    assert spec.SPECTROGRAM_SHAPE == (spec.N_FREQ, spec.N_FRAMES) == (257, 1004)
    assert spec.HOP_LENGTH == 159 and spec.SPEC_VERSION == "1.1.0"
    assert spec.FEATURES == ("clip_id", "speaker", "label", "spectrogram", "frames", "frame_times")
    assert spec.SHARD_DATASETS == ("crema_d", "ravdess", "ave", "vggsound")
