"""TFDS builders, one per dataset, writing TFRecord shards to ``<out>/<name>/<config>/<version>/``.

Feature spec (``ucmkd_jax.data.spec``: its ``SPEC_VERSION``, names and shapes; all four datasets)::

    clip_id      Text        raw clip name (CREMA-D "1001_DFA_ANG_XX", AVE video id, ...)
    speaker      Text        actor / speaker id, "" where the dataset has none (AVE, VGGSound)
    label        ClassLabel  the dataset's class names (CREMA-D: ANG DIS FEA HAP NEU SAD)
    spectrogram  Tensor (257, 1004) float16   standardised log power spectrogram (data_prep.audio), raw bytes
    frames       Sequence(Image jpeg)         kept frames, 1 per second (data_prep.video), >= 3
                                              (AVE, VGGSound: >= 10); shorter side 256 by default
    frame_times  Tensor (None,) float32       their times in seconds from the first frame

Splits: train, val, test. The builders do not walk raw directories themselves: they are given an
``Index`` (data_prep.datasets) — the configs here name the split scheme — and read each clip's
features from the per-clip cache that ``prepare.py`` fills in parallel (a clip missing from the
cache is processed inline). Examples whose media turn out bad are left out and listed in
``builder.failures``. Nothing here is registered in the global TFDS catalogue (TFDS ships an
audio-only ``crema_d`` of its own); read the output with ``tfds.builder_from_directory``.

Byte-identical shards across processes: TFDS serialises each ``tf.train.Example`` with a plain
``SerializeToString()``, and the protobuf runtime (upb) writes the ``features`` map in the order of
a hash table seeded per process (not by PYTHONHASHSEED), so two runs on the same clips decoded to
the same records but differed in their bytes. The builders hand TFDS a ``DeterministicExampleWriter``
through its documented hook (``_example_writer``) that re-serialises each record with
``deterministic=True`` (map entries sorted by key) before it goes to disk: same bytes, resumed or
not, whatever the process.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import tensorflow_datasets as tfds

from data_prep import clips as clips_lib
from data_prep.datasets import SPLITS, Index
from ucmkd_jax.data import spec

__all__ = ["CremaD", "Ravdess", "Ave", "Vggsound", "BUILDERS", "DeterministicExampleWriter", "canonical_example"]


def canonical_example(serialized: bytes) -> bytes:
    """The same ``tf.train.Example``, serialised deterministically (map entries in key order)."""
    from tensorflow_datasets.proto import tf_example_pb2  # the message class TFDS serialises

    example = tf_example_pb2.Example()
    example.ParseFromString(serialized)
    return example.SerializeToString(deterministic=True)


class DeterministicExampleWriter(tfds.core.ExampleWriter):
    """TFDS's example writer, each record re-serialised by ``canonical_example`` on its way out."""

    def write(self, path, examples):
        return super().write(path, ((key, canonical_example(ex)) for key, ex in examples))


class _ClipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(spec.SPEC_VERSION)
    RELEASE_NOTES = {"1.0.0": "Log power spectrogram 257x1004 float16 (stored as a float32 list) + 1 fps JPEG frames.",
                     "1.1.0": "The spectrogram stored as raw float16 bytes: half the disk of 1.0.0."}
    DESCRIPTION = ""
    HOMEPAGE = ""

    def __init__(self, *, index: Index, cache_dir: Optional[str] = None,
                 short_side: Optional[int] = spec.STORED_SHORT_SIDE, **kwargs):
        if index.dataset != self.name:
            raise ValueError(f"{type(self).__name__} given an index of {index.dataset!r}")
        self._index = index
        self._cache_dir = cache_dir
        self._short_side = short_side
        self.failures: List[clips_lib.ClipFailure] = []
        super().__init__(**kwargs)

    def _example_writer(self) -> tfds.core.ExampleWriter:
        # TFDS's hook for a custom writer: same file format, deterministic bytes (module docstring)
        return DeterministicExampleWriter(file_format=self.info.file_format)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict({
                spec.CLIP_ID: tfds.features.Text(),
                spec.SPEAKER: tfds.features.Text(),
                spec.LABEL: tfds.features.ClassLabel(names=list(self._index.class_names)),
                # BYTES: the raw float16 buffer; the default encoding would widen it to a float32
                # float_list on disk (twice the size, and twice the bytes to parse on reading)
                spec.SPECTROGRAM: tfds.features.Tensor(shape=spec.SPECTROGRAM_SHAPE, dtype=spec.SPECTROGRAM_DTYPE,
                                                       encoding=tfds.features.Encoding.BYTES),
                spec.FRAMES: tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3),
                                                                        encoding_format="jpeg")),
                spec.FRAME_TIMES: tfds.features.Tensor(shape=(None,), dtype=np.float32),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager) -> Dict[str, object]:
        by_split = {s: [t for t in self._index.tasks if t.split == s] for s in SPLITS}
        return {s: self._generate_examples(tasks) for s, tasks in by_split.items() if tasks}

    def _generate_examples(self, tasks):
        for task in tasks:
            feats = clips_lib.load_cached(self._cache_dir, task.key) if self._cache_dir else None
            if feats is None:
                try:
                    feats = clips_lib.process_clip(task, self._short_side)
                except clips_lib.MEDIA_ERRORS as e:
                    self.failures.append(clips_lib.failure_from_error(task, e))
                    continue
            yield task.key, {
                spec.CLIP_ID: task.clip_id,
                spec.SPEAKER: task.speaker,
                spec.LABEL: task.label,
                spec.SPECTROGRAM: feats.spectrogram,
                spec.FRAMES: list(feats.frames),
                spec.FRAME_TIMES: feats.frame_times.astype(np.float32),
            }


class CremaD(_ClipBuilder, skip_registration=True):
    """CREMA-D (Cao et al., 2014): 7442 clips of 91 actors, 6 emotions."""
    name = "crema_d"
    DESCRIPTION = "CREMA-D audio-visual emotion clips (AudioWAV + VideoFlash), UCMKD protocol."
    HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=spec.DEFAULT_CONFIGS["crema_d"], description="actors held out 70/10/20 (seed 0)"),
        tfds.core.BuilderConfig(name="authors", description="the authors' 6698/744 lists, val 10% of train (seed 0)"),
    ]


class Ravdess(_ClipBuilder, skip_registration=True):
    """RAVDESS (Livingstone & Russo, 2018): 24 actors, 8 emotions; audio-video speech clips."""
    name = "ravdess"
    DESCRIPTION = "RAVDESS audio-video speech clips, split by actor 70/10/20, UCMKD protocol."
    HOMEPAGE = "https://zenodo.org/record/1188976"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=spec.DEFAULT_CONFIGS["ravdess"],
                                               description="speech channel, actors 70/10/20 (seed 0)")]


class Ave(_ClipBuilder, skip_registration=True):
    """AVE (Tian et al., 2018): 4143 videos, 28 event classes; cropped to the annotated event."""
    name = "ave"
    DESCRIPTION = "AVE audio-visual events, audio and frames cropped to the event, official splits."
    HOMEPAGE = "https://github.com/YapengTian/AVE-ECCV18"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=spec.DEFAULT_CONFIGS["ave"],
                                               description="trainSet/valSet/testSet.txt")]


class Vggsound(_ClipBuilder, skip_registration=True):
    """VGGSound (Chen et al., 2020): 10 s YouTube clips, 309 classes (or a subset)."""
    name = "vggsound"
    DESCRIPTION = "VGGSound clips (a class subset), val 10% of train, UCMKD protocol."
    HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/vggsound/"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=spec.DEFAULT_CONFIGS["vggsound"],
                                               description="all classes in vggsound.csv")]


BUILDERS = {b.name: b for b in (CremaD, Ravdess, Ave, Vggsound)}
