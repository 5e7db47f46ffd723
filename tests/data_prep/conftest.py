"""Shared fixtures for the data_prep tests: tiny raw datasets generated on the fly.

These tests need the ``data`` extra (TensorFlow, TFDS, librosa, PyAV, soundfile); without it
they fail at collection with an install hint rather than being skipped.
"""

import pytest

# data_prep/ is importable: pyproject sets pytest pythonpath = ["."] (the repository root)

try:
    import av  # noqa: F401
    import librosa  # noqa: F401
    import soundfile  # noqa: F401
    import tensorflow_datasets  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"tests/data_prep need the data extra: pip install -e '.[data]' ({e})") from e

from data_prep import testing  # noqa: E402
from data_prep.testing import AVE_CLASSES, AVE_ENTRIES, CORRUPT_ID, VGG_ROWS  # noqa: E402


@pytest.fixture(scope="session")
def crema_d_raw(tmp_path_factory):
    """Tiny CREMA-D with planted problems: a corrupt .flv, a malformed name, an unknown emotion,
    a .wav without its .flv."""
    root = tmp_path_factory.mktemp("crema_d_raw")
    testing.make_crema_d(root, corrupt=[CORRUPT_ID], extra_files={
        "AudioWAV/not_a_crema_name.wav": b"RIFF",
        "AudioWAV/1007_DFA_XYZ_XX.wav": b"RIFF",
    })
    testing.write_wav(root / "AudioWAV" / "1008_DFA_NEU_XX.wav", seconds=0.5)  # no .flv
    return root


@pytest.fixture(scope="session")
def crema_d_clean_raw(tmp_path_factory):
    """Tiny CREMA-D without problems (9 clips, 6 actors)."""
    return testing.make_crema_d(tmp_path_factory.mktemp("crema_d_clean"))


@pytest.fixture(scope="session")
def ravdess_raw(tmp_path_factory):
    return testing.make_ravdess(tmp_path_factory.mktemp("ravdess_raw"))


@pytest.fixture(scope="session")
def ave_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ave_raw")
    testing.make_ave(root, AVE_ENTRIES, classes=AVE_CLASSES, missing=["vidMissing"])
    with open(root / "testSet.txt", "a") as fh:  # a malformed row and an unknown category
        fh.write("Class10&vidBroken&good&zero&3\nNotAClass&vidA2&good&0&3\n")
    return root


@pytest.fixture(scope="session")
def vggsound_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("vggsound_raw")
    testing.make_vggsound(root, VGG_ROWS, missing=["kkkkkkkkkkk_000007"])
    return root
