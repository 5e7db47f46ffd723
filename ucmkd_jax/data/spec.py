"""The data spec: what ``data_prep`` writes into the shards and what ``ucmkd_jax.data`` reads back.

One place for the numbers and names both sides must agree on, so that the writer
(``data_prep/``) and the readers (``shards.py``, ``pipeline.py``) cannot drift apart:

  - ``SPEC_VERSION``: the version directory of the prepared shards (``<dataset>/<config>/<version>``);
  - the audio protocol's parameters and the spectrogram they give: 10 s at 16 kHz,
    ``scipy.signal.spectrogram(y, 16000, nperseg=512, noverlap=353)`` -> (257, 1004), stored float16;
  - the feature names of one stored example;
  - the prepared datasets and the config each one is read with by default;
  - how frames are stored (shorter side 256) and normalised when read (ImageNet mean and std).

The arrow goes one way: ``data_prep`` imports this module, nothing here imports ``data_prep``.
Plain constants (NumPy only), so importing it pulls in neither JAX nor TensorFlow.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "SPEC_VERSION", "SAMPLE_RATE", "CLIP_SECONDS", "N_FFT", "NOVERLAP", "HOP_LENGTH", "N_FREQ", "N_FRAMES",
    "SPECTROGRAM_SHAPE", "SPECTROGRAM_DTYPE", "CLIP_ID", "SPEAKER", "LABEL", "SPECTROGRAM", "FRAMES",
    "FRAME_TIMES", "FEATURES", "SHARD_DATASETS", "DEFAULT_CONFIGS", "STORED_SHORT_SIDE", "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# Version of the stored features; 1.1.0 stores the spectrogram as raw float16 bytes (1.0.0: a float32
# list). A change of what is written, or of how, needs a new version: readers pick the newest.
SPEC_VERSION = "1.1.0"

# ---- audio: the authors' protocol, tile to 10 s at 16 kHz, then a one-sided power spectral density
SAMPLE_RATE = 16_000
CLIP_SECONDS = 10
N_FFT = 512  # nperseg
NOVERLAP = 353
HOP_LENGTH = N_FFT - NOVERLAP  # 159
N_FREQ = N_FFT // 2 + 1  # 257
N_FRAMES = 1 + (SAMPLE_RATE * CLIP_SECONDS - N_FFT) // HOP_LENGTH  # 1004
SPECTROGRAM_SHAPE = (N_FREQ, N_FRAMES)
# float16 halves the disk (257 x 1004 x 2 B = 516 KB a clip); the values are standardised
# (|x| < ~10), so it keeps ~3 significant digits. Readers cast to float32.
SPECTROGRAM_DTYPE = np.float16

# ---- the features of one stored example (data_prep/builders.py writes them)
CLIP_ID = "clip_id"  # Text: the raw clip name
SPEAKER = "speaker"  # Text: actor / speaker id, "" where the dataset has none
LABEL = "label"  # ClassLabel: the dataset's class names
SPECTROGRAM = "spectrogram"  # Tensor SPECTROGRAM_SHAPE of SPECTROGRAM_DTYPE, raw bytes
FRAMES = "frames"  # Sequence of JPEG images, 1 per second
FRAME_TIMES = "frame_times"  # float32 seconds from the first frame
FEATURES = (CLIP_ID, SPEAKER, LABEL, SPECTROGRAM, FRAMES, FRAME_TIMES)

# ---- datasets and configs: dataset -> the config read when several are prepared (and the one
# data_prep writes without options): CREMA-D speaker-held-out split, RAVDESS speech channel,
# AVE official split, VGGSound all classes.
DEFAULT_CONFIGS = {"crema_d": "speaker", "ravdess": "speech", "ave": "official", "vggsound": "all"}
SHARD_DATASETS = tuple(DEFAULT_CONFIGS)

# ---- frames: stored with this shorter side; read as a centre crop of S after resizing the shorter
# side to round(S * 256 / 224) (so S = 224 crops a stored frame without resizing), normalised with:
STORED_SHORT_SIDE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
