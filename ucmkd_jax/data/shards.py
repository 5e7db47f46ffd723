"""Prepared TFRecord shards (``data_prep/prepare.py``) -> an in-memory ``CrossModalDataset``.

    ds = load_shards("crema_d", "OUT")           # OUT/crema_d/speaker/<version>/ written by prepare.py

Modalities (the same clips in the same order in both, so ``paired=True``; the stored features,
their shapes and the normalisation constants are ``ucmkd_jax.data.spec``):
  "audio": x (N, 257, 1004, 1) float32, the standardised log spectrogram (stored as float16).
  "video": x (N, T, S, S, 3) float32 with T = ``frames`` (2) and S = ``image_size`` (224): each
           kept JPEG frame is decoded, its shorter side resized (bilinear, antialiased) to
           round(S * 256 / 224), centre-cropped to S x S and normalised with the ImageNet mean
           (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). ``video_crop="center_crop"``
           (the release, docs/protocol.md row 11) crops S x S from the frame as stored, no resize:
           shards prepared with ``--short-side 0`` (CREMA-D: 480 x 360, the crop 62 % of the height).
Frames per clip: val and test take the middle T of the clip's kept frames. Train takes T frames
drawn at random per clip ONCE, at load time (seeded by ``seed`` and the clip's position), in
time order — a fixed choice, since the arrays are built once; the protocol's fresh draw every
epoch (and the random flip) needs the streaming pipeline. ``train_frames="middle"`` uses the
middle T for train as well. Clips with fewer than T frames repeat their last frame.

Training from the shards without holding train in memory (fresh frames and flips every epoch):
``ucmkd_jax.data.pipeline.ShardStream``, with ``load_shards(..., splits=("val", "test"))`` for
evaluation.

Memory: float32 arrays are large — CREMA-D (7442 clips) is ~7.7 GB of audio plus ~9 GB of video
at 224 x 224 x 2 frames; ``split_fraction`` keeps a seeded random fraction of every split.

TensorFlow and TFDS are imported inside the functions only (install ``.[data]``); nothing on the
compiled path imports this module.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ucmkd_jax.data.base import CrossModalDataset, ModalityData, Split
from ucmkd_jax.data.spec import (CLIP_ID, DEFAULT_CONFIGS, FRAMES, IMAGENET_MEAN, IMAGENET_STD, LABEL,
                                 SPECTROGRAM, STORED_SHORT_SIDE)
from ucmkd_jax.data.stratify import stratified_sample
from ucmkd_jax.data.tf_import import import_tf

__all__ = ["load_shards", "find_shard_dir", "import_tf", "decode_frame", "check_frame_size", "VIDEO_CROPS"]

_SPLITS = ("train", "val", "test")
# How a stored frame becomes S x S (``ExperimentConfig.video_crop``, docs/protocol.md row 11).
VIDEO_CROPS = ("resize_crop", "center_crop")


def _version_key(name: str):
    try:
        return tuple(int(p) for p in name.split("."))
    except ValueError:
        return (-1,)


def find_shard_dir(dataset: str, data_dir: Union[str, os.PathLike], config: Optional[str] = None,
                   version: Optional[str] = None) -> Path:
    """The ``<data_dir>/<dataset>/<config>/<version>`` directory holding ``dataset_info.json``.

    ``data_dir`` may also be the dataset directory or the version directory itself. Without
    ``config``: the only config present, else the default one (crema_d: speaker, ravdess: speech,
    ave: official, vggsound: all). Without ``version``: the newest complete one.
    """
    d = Path(data_dir)
    if (d / "dataset_info.json").is_file():
        return d
    base = d / dataset if (d / dataset).is_dir() else (d if d.name == dataset else None)
    hint = (f"prepare it with: python data_prep/prepare.py --dataset {dataset} --raw-dir RAW "
            f"--out-dir {d}")
    if base is None:
        raise FileNotFoundError(f"no prepared {dataset!r} shards under {d} (expected {d / dataset}/<config>/<version>/); {hint}")
    configs = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith((".", "incomplete.")))
    if config is None:
        if len(configs) == 1:
            config = configs[0]
        elif DEFAULT_CONFIGS.get(dataset) in configs:
            config = DEFAULT_CONFIGS[dataset]
        else:
            raise ValueError(f"{base} holds configs {configs}; pass config=... to choose one")
    if config not in configs:
        raise FileNotFoundError(f"no config {config!r} under {base} (found {configs}); {hint}")
    versions = sorted((p.name for p in (base / config).iterdir() if (p / "dataset_info.json").is_file()),
                      key=_version_key)
    if version is not None:
        versions = [v for v in versions if v == version]
    if not versions:
        raise FileNotFoundError(f"no complete version{' ' + version if version else ''} under {base / config}; {hint}")
    return base / config / versions[-1]


def _frame_positions(tf, n, frames: int, mode: str, seed: int, i):
    """int32 (frames,) positions in [0, n): middle T, or T random ones (stateless, sorted)."""
    if mode == "middle":
        start = tf.maximum(0, (n - frames) // 2)
        pos = start + tf.range(frames)
    else:
        noise = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(i, tf.int64)]))
        k = tf.minimum(n, frames)
        pos = tf.sort(tf.math.top_k(noise, k=k).indices)
        pos = tf.concat([pos, tf.fill([frames - k], n - 1)], axis=0)
    return tf.minimum(pos, n - 1)


def decode_frame(tf, jpeg, image_size: int, crop: str = "resize_crop", where: str = ""):
    """One JPEG frame -> (S, S, 3) float32, ImageNet-normalised, S = ``image_size`` pixels.

    crop: "resize_crop" (default): shorter side resized (bilinear, antialiased) to
      round(S * 256 / 224), centre crop S x S. A frame whose shorter side has that size already
      (stored at 256, S = 224) skips the resize: at scale 1 it is the identity, and it costs five
      JPEG decodes. "center_crop" (the release's ``CenterCrop(S)``): the centre S x S of the frame
      as stored, no resize; offsets round((H - S) / 2), round((W - S) / 2) half to even, as
      torchvision's ``center_crop``. A frame smaller than S on either side fails a
      ``tf.debugging`` assertion whose message names ``where`` (the shard folder) and the fix.
    """
    if crop not in VIDEO_CROPS:
        raise ValueError(f"crop must be one of {VIDEO_CROPS}, got {crop!r}")
    mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
    std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
    img = tf.io.decode_jpeg(jpeg, channels=3)
    shape = tf.shape(img)[:2]
    if crop == "center_crop":
        # without the check a small frame slices to a smaller tensor and fails in ensure_shape,
        # deep in tf.data, without saying which shards or why
        check = tf.debugging.assert_greater_equal(
            tf.reduce_min(shape), tf.constant(image_size, tf.int32),
            message=f"{where or 'a stored frame'}: a frame is smaller than the {image_size} x {image_size} "
                    f"centre crop of video_crop='center_crop' (no resize); prepare the shards with "
                    f"--short-side 0 (or a short side >= {image_size})")
        with tf.control_dependencies([check]):
            off = tf.cast(tf.round(tf.cast(shape - image_size, tf.float32) / 2.0), tf.int32)  # half to even
            img = img[off[0]:off[0] + image_size, off[1]:off[1] + image_size, :]
        img = tf.ensure_shape(tf.cast(img, tf.float32), (image_size, image_size, 3))
        return (img - mean) / std
    resize_to = int(round(image_size * 256 / 224))
    hw = tf.cast(shape, tf.float32)
    scale = resize_to / tf.reduce_min(hw)
    new_hw = tf.cast(tf.round(hw * scale), tf.int32)
    top = (new_hw[0] - image_size) // 2
    left = (new_hw[1] - image_size) // 2

    def crop(x):
        return tf.cast(x[top:top + image_size, left:left + image_size, :], tf.float32)

    img = tf.cond(tf.reduce_min(shape) == resize_to, lambda: crop(img),
                  lambda: crop(tf.image.resize(img, new_hw, method="bilinear", antialias=True)))
    img = tf.ensure_shape(img, (image_size, image_size, 3))
    return (img - mean) / std


def check_frame_size(tf, tfds, builder, path, split: str, image_size: int, crop: str) -> None:
    """Refuse, before any training, stored frames smaller than the S x S crop of ``crop``
    "center_crop" (no resize): looks at the first frame of ``split``'s first clip (all of a
    prepared set share one ``--short-side``). A ValueError names the shard folder, the clip and
    the fix; "resize_crop" accepts any size."""
    if crop != "center_crop":
        return
    partial = tfds.decode.PartialDecoding({CLIP_ID: True, FRAMES: True}, decoders={FRAMES: tfds.decode.SkipDecoding()})
    # no auto-cache: TFDS caches small splits in memory and warns when one record is taken
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=partial,
                            read_config=tfds.ReadConfig(try_autocache=False)).take(1)
    for ex in ds.as_numpy_iterator():
        if len(ex[FRAMES]) == 0:
            return
        h, w, _ = (int(v) for v in tf.io.extract_jpeg_shape(ex[FRAMES][0]).numpy())  # reads the header only
        if min(h, w) < image_size:
            clip = ex[CLIP_ID].decode() if isinstance(ex[CLIP_ID], bytes) else ex[CLIP_ID]
            raise ValueError(
                f"{path}: clip {clip} ({split}) has frames of {w} x {h} pixels, smaller than the {image_size} x "
                f"{image_size} crop of video_crop='center_crop' (a centre crop without resize); prepare the shards "
                f"with --short-side 0 (the decoded size, the release's frames) or a short side >= {image_size}, and "
                f"choose them with --set shard_config=<config>_raw (or use video_crop='resize_crop')")
        note = resized_frames_note(h, w, image_size)
        if note:
            warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)


def resized_frames_note(h: int, w: int, image_size: int) -> Optional[str]:
    """The warning for ``center_crop`` on frames whose shorter side is data_prep's default
    ``STORED_SHORT_SIDE`` (256): they were resized when prepared, so the S x S crop sees S / 256
    of the height (87.5 % at 224), not the release's share of a raw frame; None otherwise."""
    if min(h, w) != STORED_SHORT_SIDE:
        return None
    return (f"video_crop='center_crop' on frames of {w} x {h} pixels, resized to a shorter side of "
            f"{STORED_SHORT_SIDE} when prepared: the {image_size} crop covers {image_size / STORED_SHORT_SIDE:.1%} "
            f"of the height, not the share of a raw frame the release crops (CREMA-D 480 x 360: 62 %); "
            f"prepare with --short-side 0 and read them with --set shard_config=<config>_raw")


def _make_pipeline(tf, tfds, builder, split: str, *, keep, image_size: int, frames: int, mode: str,
                   seed: int, batch_size: int, crop: str = "resize_crop", where: str = ""):
    def convert(i, ex):
        n = tf.shape(ex[FRAMES])[0]
        pos = _frame_positions(tf, n, frames, mode, seed, i)
        video = tf.stack([decode_frame(tf, ex[FRAMES][pos[t]], image_size, crop=crop, where=where)
                          for t in range(frames)])
        audio = tf.cast(ex[SPECTROGRAM], tf.float32)[..., None]
        return audio, video, tf.cast(ex[LABEL], tf.int32)

    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={FRAMES: tfds.decode.SkipDecoding()})
    ds = ds.enumerate()
    if keep is not None:
        mask = tf.constant(keep)
        ds = ds.filter(lambda i, ex: tf.gather(mask, i))
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) \
             .batch(batch_size).prefetch(2)


def load_shards(dataset: str, data_dir: Union[str, os.PathLike], *, config: Optional[str] = None,
                version: Optional[str] = None, image_size: int = 224, frames: int = 2,
                split_fraction: Optional[float] = None, train_frames: str = "random", seed: int = 0,
                batch_size: int = 64, splits: Sequence[str] = _SPLITS,
                video_crop: str = "resize_crop") -> CrossModalDataset:
    """Read ``<data_dir>/<dataset>/<config>/<version>`` into a ``CrossModalDataset``.

    Args:
      dataset: "crema_d", "ravdess", "ave" or "vggsound".
      data_dir: the ``--out-dir`` given to data_prep/prepare.py (or the shard directory itself).
      config, version: which prepared variant (see ``find_shard_dir``).
      image_size: side of the square centre crop (224 in the protocol).
      video_crop: "resize_crop" (shorter side resized first) or "center_crop" (the frame as stored,
        the release): ``decode_frame``; "center_crop" checks each split's first frame size first.
      frames: frames per clip, T (2 in the protocol).
      split_fraction: keep a seeded random fraction (0, 1] of every split (None: all).
      train_frames: "random" (a fixed seeded draw per clip) or "middle".
      seed: seed of the train frame draw and of ``split_fraction``.
      batch_size: decode batch size (memory / speed only).
      splits: the splits to read; the others are None in the result (e.g. ("val", "test") when
        training streams from the shards with ``ucmkd_jax.data.pipeline.ShardStream``; then
        ``ModalityData.sample_shape``, which looks at train, is not available: use the stream's).

    Returns:
      CrossModalDataset(name=dataset, modalities {"audio", "video"}, paired=True, class_names).
    """
    splits = tuple(splits)
    if not splits or any(s not in _SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {_SPLITS}, got {splits}")
    if train_frames not in ("random", "middle"):
        raise ValueError(f"train_frames must be 'random' or 'middle', got {train_frames!r}")
    if split_fraction is not None and not 0 < split_fraction <= 1:
        raise ValueError(f"split_fraction must be in (0, 1], got {split_fraction}")
    if video_crop not in VIDEO_CROPS:
        raise ValueError(f"video_crop must be one of {VIDEO_CROPS}, got {video_crop!r}")
    tf, tfds = import_tf()
    path = find_shard_dir(dataset, data_dir, config, version)
    builder = tfds.builder_from_directory(os.fspath(path))
    class_names = list(builder.info.features[LABEL].names)
    parts = {}
    for s_i, split in enumerate(_SPLITS):
        if split not in splits:
            continue
        if split not in builder.info.splits:
            raise ValueError(f"{path}: no {split!r} split (has {sorted(builder.info.splits)})")
        n = int(builder.info.splits[split].num_examples)
        keep = None
        if split_fraction is not None and split_fraction < 1:
            # one stratum: a plain seeded fraction (at least one example)
            chosen = stratified_sample(np.zeros(n), split_fraction, np.random.default_rng([seed, s_i]),
                                       draw="permutation", min_per_class=1)
            keep = np.zeros(n, bool)
            keep[chosen] = True
            n = len(chosen)
        mode = train_frames if split == "train" else "middle"
        check_frame_size(tf, tfds, builder, path, split, image_size, video_crop)
        ds = _make_pipeline(tf, tfds, builder, split, keep=keep, image_size=image_size, frames=frames,
                            mode=mode, seed=seed, batch_size=batch_size, crop=video_crop, where=str(path))
        x_a = x_v = None
        y = np.empty(n, np.int32)
        at = 0
        for a, v, lab in ds.as_numpy_iterator():
            if x_a is None:  # allocate once: the arrays are big
                x_a = np.empty((n,) + a.shape[1:], np.float32)
                x_v = np.empty((n,) + v.shape[1:], np.float32)
            b = len(lab)
            x_a[at:at + b], x_v[at:at + b], y[at:at + b] = a, v, lab
            at += b
        if at != n:
            raise ValueError(f"{path}: split {split!r} yielded {at} examples, dataset_info says {n}")
        parts[split] = (x_a, x_v, y)
    mods = {
        "audio": ModalityData("audio", *(Split(parts[s][0], parts[s][2]) if s in parts else None for s in _SPLITS)),
        "video": ModalityData("video", *(Split(parts[s][1], parts[s][2]) if s in parts else None for s in _SPLITS)),
    }
    out = CrossModalDataset(name=dataset, num_classes=len(class_names), modalities=mods, paired=True,
                            class_names=class_names)
    out.validate()
    return out
