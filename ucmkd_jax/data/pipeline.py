"""Streaming training batches from prepared shards: tf.data reads and augments, numpy comes out.

    stream = ShardStream("crema_d", "OUT", student="video", teacher="audio", seed=0)
    fit(student, variables, stream, val, method="ucmkd", teacher=..., teacher_variables=...,
        pairing=stream.pairing, seed=0)               # ``stream`` is fit's TrainStream

What it yields (``epoch_batches``): numpy dicts {"x_s" float32, "y_s" int32[, "x_t", "y_t"]} of
exactly ``batch_size`` rows; the last incomplete batch of an epoch is dropped (kept, with its
``num_samples % batch_size`` rows, when ``keep_last``: ``train.last_batch=keep``). ``fit`` copies
them to the device two steps ahead (``parallel.prefetch_to_device``); tf.data prefetches on its
side too, so decoding overlaps the step. TensorFlow is imported inside the functions only: the
compiled path never imports it (and TensorFlow is kept off the GPUs).

Per clip, as in the protocol (``load_shards`` gives the evaluation view: the middle 2 frames):
  "audio": the stored float16 spectrogram -> float32 (257, 1004, 1).
  "video": T (2) frames drawn at random among the clip's kept frames, in time order, afresh
           every epoch (a clip with fewer than T repeats its last one); one random horizontal
           flip per clip (the same for its T frames; ``video_flip="frame"``: a coin per frame,
           the release); each frame's shorter side resized to round(S * 256 / 224), centre crop
           S x S (224) (``video_crop="center_crop"``: the centre S x S of the frame as stored, no
           resize, the release), ImageNet normalisation (``shards.decode_frame``).

Two streams per step: the student pool (``student_indices``) and the teacher pool
(``teacher_indices``), positions in the train split (shard order, the order of ``load_shards``).
"unpaired": each pool has its own permutation every epoch; a smaller teacher pool cycles, with a
fresh permutation every cycle (as ``streams.train_batches`` does in memory). "paired": the two
pools are the same clips and x_t[i] is the partner of x_s[i] (one record read gives both).
``regimes.protocol_indices`` gives the pools of ``--subsample`` and ``--unpaired`` from the
train labels (``train_labels``); ``protocol_streams`` does all of it.

Determinism: every random choice is a function of (seed, epoch, clip), never of the order or
the parallelism in which clips are decoded, so the same (seed, epoch) gives byte-identical
batches whatever tf.data's thread count:
  - student order of epoch e: ``np.random.default_rng([seed, 0, e]).permutation`` of the pool;
    teacher order: cycle c of epoch e, ``default_rng([seed, 1, e, c])`` (its own shuffle seed);
  - augmentation: a key ``SeedSequence([seed, 2 + role, e])`` (role 0 student, 1 teacher)
    folded with the clip index (``tf.random.experimental.stateless_fold_in``) and split in two:
    one for the frame draw (stateless uniform scores, the top T kept in time order), one for
    the flip (stateless uniform < 0.5: one number per clip, or T per clip with
    ``video_flip="frame"``, frame t flipped by the t-th);
  - the hard regime's teacher noise: Gaussian from ``SeedSequence([seed, 4])`` folded with the
    clip index, the SAME every epoch (the in-memory path corrupts the pool once, too), std =
    ``teacher_noise`` x the pool's input std. The stream never holds the pool, so that std is
    estimated on a seeded sample of up to ``noise_sample`` (128) pool clips
    (``default_rng([seed, 5])``, decoded without augmentation: middle frames, no flip), over all
    their elements; ``noise_std`` and ``info`` report it.
  ``start_step=k`` starts an epoch at its k-th batch (the same batches as the tail of a full
  epoch): a resumable position without decoding the skipped clips.

Reading: a clip is read by position, ``TFRecordDataset(shard, buffer_size=0).skip(k).take(1)``
inside a parallel, deterministic ``interleave`` (skip only reads the records' length headers,
so a permutation costs no more I/O than a sequential pass); TFDS parses only the features the
stream needs (``tfds.decode.PartialDecoding``).
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from ucmkd_jax.data.shards import VIDEO_CROPS, check_frame_size, decode_frame, find_shard_dir, import_tf
from ucmkd_jax.data.spec import FRAMES, LABEL, SPECTROGRAM, SPECTROGRAM_SHAPE
from ucmkd_jax.data.streams import steps_per_epoch

__all__ = ["ShardStream", "train_labels", "protocol_streams", "MODALITY_SHAPES"]

_STUDENT, _TEACHER = 0, 1
MODALITY_SHAPES = {"audio": lambda frames, size: SPECTROGRAM_SHAPE + (1,),
                   "video": lambda frames, size: (frames, size, size, 3)}
_PAIRINGS = ("unpaired", "paired")
VIDEO_FLIPS = ("clip", "frame")  # one flip coin per clip, or per frame (the release)


def _open(dataset: str, data_dir, config, version):
    tf, tfds = import_tf()
    path = find_shard_dir(dataset, data_dir, config, version)
    builder = tfds.builder_from_directory(os.fspath(path))
    if "train" not in builder.info.splits:
        raise ValueError(f"{path}: no 'train' split (has {sorted(builder.info.splits)})")
    return tf, tfds, path, builder


def train_labels(dataset: str, data_dir: Union[str, os.PathLike], *, config: Optional[str] = None,
                 version: Optional[str] = None) -> np.ndarray:
    """int32 labels of the train split in shard order (the positions the pools index). Reads
    the records but parses only their label."""
    tf, tfds, _, builder = _open(dataset, data_dir, config, version)
    ds = builder.as_dataset(split="train", shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({LABEL: True}))
    ds = ds.map(lambda ex: ex[LABEL]).batch(4096)
    return np.concatenate([b for b in ds.as_numpy_iterator()]).astype(np.int32)


def _key(*entropy) -> np.ndarray:
    """An int64 (2,) key for TensorFlow's stateless random ops, from integers."""
    return np.random.SeedSequence(list(entropy)).generate_state(2, np.uint32).astype(np.int64)


class ShardStream:
    """Training batches of prepared shards (``fit``'s ``TrainStream``). See the module docstring.

    Args:
      dataset, data_dir, config, version: the prepared shards (as ``shards.load_shards``).
      student: the student modality, "audio" or "video".
      teacher: the teacher modality, or None (a single stream: teacher pre-training, "ce").
      student_indices, teacher_indices: the pools, positions in the train split (default: all
        of it). Paired: the teacher pool must be the student pool (or None).
      pairing: "unpaired" (independent teacher stream) or "paired" (partner clips).
      seed: the run seed; every shuffle, augmentation and noise draw derives from it.
      teacher_noise: the hard regime's noise, relative to the teacher pool's input std (0: none).
      image_size, frames: S and T of the video (224, 2).
      flip: random horizontal flips of the video (the protocol's; False for checks).
      video_crop: "resize_crop" or "center_crop" (``shards.decode_frame``); "center_crop" checks
        the first train clip's stored frame size here (a ValueError naming the shard folder, the
        clip and ``--short-side 0``).
      video_flip: "clip" (one flip for the clip's T frames) or "frame" (a coin per frame).
      noise_sample: clips of the seeded sample that estimates the pool's input std.
      parallel: tf.data parallelism (reads and decodes); None: AUTOTUNE. The batches do not
        depend on it.
      prefetch: batches tf.data prepares ahead.
    """

    def __init__(self, dataset: str, data_dir: Union[str, os.PathLike], *, student: str,
                 teacher: Optional[str] = None, student_indices: Optional[Sequence[int]] = None,
                 teacher_indices: Optional[Sequence[int]] = None, pairing: str = "unpaired", seed: int = 0,
                 teacher_noise: float = 0.0, image_size: int = 224, frames: int = 2, flip: bool = True,
                 config: Optional[str] = None, version: Optional[str] = None, noise_sample: int = 128,
                 parallel: Optional[int] = None, prefetch: int = 2, video_crop: str = "resize_crop",
                 video_flip: str = "clip"):
        for role, mod in (("student", student), ("teacher", teacher)):
            if mod is not None and mod not in MODALITY_SHAPES:
                raise ValueError(f"{role} modality must be one of {sorted(MODALITY_SHAPES)}, got {mod!r}")
        if pairing not in _PAIRINGS:
            raise ValueError(f"pairing must be one of {_PAIRINGS}, got {pairing!r}")
        if teacher_noise < 0 or (teacher_noise > 0 and teacher is None):
            raise ValueError(f"teacher_noise must be >= 0 and needs a teacher modality, got {teacher_noise}")
        if video_crop not in VIDEO_CROPS:
            raise ValueError(f"video_crop must be one of {VIDEO_CROPS}, got {video_crop!r}")
        if video_flip not in VIDEO_FLIPS:
            raise ValueError(f"video_flip must be one of {VIDEO_FLIPS}, got {video_flip!r}")
        self._tf, self._tfds, self.path, builder = _open(dataset, data_dir, config, version)
        if "video" in (student, teacher):  # a clear error now, not a failed assertion mid-epoch
            check_frame_size(self._tf, self._tfds, builder, self.path, "train", int(image_size), video_crop)
        self.dataset = dataset
        self.features = builder.info.features
        self.class_names = list(self.features[LABEL].names)
        self.num_classes = len(self.class_names)
        split = builder.info.splits["train"]
        self._files = np.asarray([os.fspath(p) for p in split.filepaths])
        lengths = np.asarray(split.shard_lengths, np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.train_size = int(lengths.sum())
        self.student, self.teacher, self.pairing, self.seed = student, teacher, pairing, int(seed)
        self.image_size, self.frames, self.flip = int(image_size), int(frames), bool(flip)
        self.video_crop, self.video_flip = video_crop, video_flip
        self.parallel = parallel
        self.prefetch = int(prefetch)
        self.student_indices = self._check_indices(student_indices, "student_indices")
        if teacher is None:
            if teacher_indices is not None:
                raise ValueError("teacher_indices given without a teacher modality")
            self.teacher_indices = None
        else:
            self.teacher_indices = self._check_indices(
                self.student_indices if (teacher_indices is None and pairing == "paired") else teacher_indices,
                "teacher_indices")
            if pairing == "paired" and not np.array_equal(self.teacher_indices, self.student_indices):
                raise ValueError("paired streams need the same clips on both sides: teacher_indices must equal "
                                 "student_indices (or be None)")
        self.teacher_noise = float(teacher_noise)
        self.noise_sample = int(noise_sample)
        self.noise_std = self._estimate_noise_std() if self.teacher_noise > 0 else 0.0
        self.info = {"shards": str(self.path), "student": student, "teacher": teacher, "pairing": pairing,
                     "student_pool": self.num_samples,
                     "teacher_pool": None if teacher is None else len(self.teacher_indices),
                     "noise_std": self.noise_std if self.teacher_noise > 0 else None,
                     "noise_std_estimated_on": (min(self.noise_sample, len(self.teacher_indices))
                                                if self.teacher_noise > 0 else None)}

    # ---- the TrainStream protocol -------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """Student samples per epoch (the student pool)."""
        return int(len(self.student_indices))

    def __len__(self) -> int:
        return self.num_samples

    def steps_per_epoch(self, batch_size: int, keep_last: bool = False) -> int:
        if self.num_samples < batch_size:
            raise ValueError(f"the student pool has {self.num_samples} clips, fewer than one batch of "
                             f"{batch_size}: lower --batch-size")
        return steps_per_epoch(self.num_samples, batch_size, keep_last)

    def epoch_batches(self, epoch: int, batch_size: int, with_teacher: bool = True,
                      start_step: int = 0, rows: Optional[np.ndarray] = None,
                      keep_last: bool = False) -> Iterator[dict]:
        """Epoch ``epoch``'s batches from its ``start_step``-th on (see the module docstring).
        ``rows``: decode only these rows of each batch (a process of a multi-host run takes the
        rows of its own devices, ``parallel.local_rows``); a clip's augmentation depends on the
        clip alone, so they are the rows a single process would decode. ``keep_last``: end with
        the partial batch of the ``num_samples % batch_size`` clips left over (not with ``rows``)."""
        s_order, t_order = self.epoch_order(epoch, batch_size, with_teacher, keep_last)
        steps = -(-len(s_order) // batch_size)
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step must be in [0, {steps}], got {start_step}")
        lo = start_step * batch_size
        s_order, t_order = s_order[lo:], None if t_order is None else t_order[lo:]
        if rows is not None and len(s_order) % batch_size:
            raise ValueError(f"a partial last batch ({len(s_order) % batch_size} of {batch_size} clips) cannot be "
                             f"split over processes: drop it (keep_last=False)")
        if rows is not None:  # the same global order, each batch cut to this process's rows
            s_order = s_order.reshape(-1, batch_size)[:, rows].ravel()
            t_order = None if t_order is None else t_order.reshape(-1, batch_size)[:, rows].ravel()
            batch_size = len(rows)
        return self._iterate(epoch, batch_size, s_order, t_order)

    # ---- orders and shapes --------------------------------------------------------------------

    def epoch_order(self, epoch: int, batch_size: int, with_teacher: bool = True, keep_last: bool = False):
        """(student clips, teacher clips or None) of epoch ``epoch``, train positions, one per row
        of its steps * batch_size rows (all ``num_samples`` with ``keep_last``)."""
        n = self.num_samples if keep_last else self.steps_per_epoch(batch_size) * batch_size
        perm = np.random.default_rng([self.seed, _STUDENT, epoch]).permutation(self.num_samples)
        s_order = self.student_indices[perm][:n]
        if not with_teacher:
            return s_order, None
        if self.teacher is None:
            raise ValueError("this stream has no teacher modality: build it with teacher=... for a method "
                             "that uses the teacher")
        if self.pairing == "paired":
            return s_order, s_order
        m = len(self.teacher_indices)
        cycles = -(-n // m)
        perms = [np.random.default_rng([self.seed, _TEACHER, epoch, c]).permutation(m) for c in range(cycles)]
        t_order = self.teacher_indices[np.concatenate(perms)]  # a fresh permutation per cycle
        return s_order, t_order[:n]

    def sample_shape(self, modality: str) -> tuple:
        return MODALITY_SHAPES[modality](self.frames, self.image_size)

    @property
    def student_shape(self) -> tuple:
        return self.sample_shape(self.student)

    @property
    def teacher_shape(self) -> Optional[tuple]:
        return None if self.teacher is None else self.sample_shape(self.teacher)

    # ---- tf.data ------------------------------------------------------------------------------

    def _check_indices(self, idx, what) -> np.ndarray:
        idx = np.arange(self.train_size) if idx is None else np.asarray(idx)
        if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{what} must be a non-empty 1-d array of integer train positions")
        if idx.min() < 0 or idx.max() >= self.train_size:
            raise ValueError(f"{what}: positions must be in [0, {self.train_size}) (the train split of {self.path})")
        return idx.astype(np.int64)

    def _records(self, clips: np.ndarray):
        """tf.data of (serialized example, clip) for train positions ``clips``, in that order."""
        tf = self._tf
        par = tf.data.AUTOTUNE if self.parallel is None else self.parallel
        shard = np.searchsorted(self._starts, clips, side="right") - 1
        local = clips - self._starts[shard]
        ds = tf.data.Dataset.from_tensor_slices((self._files[shard], local.astype(np.int64), clips.astype(np.int64)))

        def read(path, k, clip):
            rec = tf.data.TFRecordDataset(path, buffer_size=0).skip(k).take(1)
            return rec.map(lambda s: (s, clip))

        return ds.interleave(read, cycle_length=par, block_length=1, num_parallel_calls=par, deterministic=True)

    def _decoder(self, modalities):
        tfds = self._tfds
        wanted = {LABEL: True}
        if "audio" in modalities:
            wanted[SPECTROGRAM] = True
        if "video" in modalities:
            wanted[FRAMES] = True
        partial = tfds.decode.PartialDecoding(
            wanted, decoders={FRAMES: tfds.decode.SkipDecoding()} if FRAMES in wanted else None)
        return partial.extract_features(self.features), partial.decoders

    def _input(self, ex, clip, modality: str, aug_key, noise_key, noise_std: float, augment: bool):
        """One clip's input of ``modality`` from its parsed example."""
        tf = self._tf
        if modality == "audio":
            x = tf.cast(ex[SPECTROGRAM], tf.float32)[..., None]
        else:
            jpegs, t_len = ex[FRAMES], self.frames
            n = tf.shape(jpegs)[0]
            if augment:
                key = tf.random.experimental.stateless_fold_in(tf.constant(aug_key, tf.int64), clip)
                k_pos, k_flip = tf.unstack(tf.random.experimental.stateless_split(key, 2))
                scores = tf.random.stateless_uniform([n], seed=k_pos)
                k = tf.minimum(n, t_len)
                pos = tf.sort(tf.math.top_k(scores, k=k).indices)
                pos = tf.concat([pos, tf.fill([t_len - k], n - 1)], axis=0)
                # "frame": a coin per frame (the release's RandomHorizontalFlip in each frame's transform)
                flip = tf.random.stateless_uniform([t_len] if self.video_flip == "frame" else [], seed=k_flip) < 0.5
            else:  # the middle T, as at evaluation
                pos = tf.maximum(0, (n - t_len) // 2) + tf.range(t_len)
                flip = tf.constant(False)
            pos = tf.minimum(pos, n - 1)
            x = tf.stack([decode_frame(tf, jpegs[pos[t]], self.image_size, crop=self.video_crop, where=str(self.path))
                          for t in range(t_len)])
            if self.flip and augment and self.video_flip == "frame":  # x (T, S, S, 3): axis 2 is the width
                x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
            elif self.flip and augment:
                x = tf.cond(flip, lambda: tf.reverse(x, axis=[2]), lambda: x)
        if noise_std > 0:
            key = tf.random.experimental.stateless_fold_in(tf.constant(noise_key, tf.int64), clip)
            x = x + noise_std * tf.random.stateless_normal(tf.shape(x), seed=key)
        return tf.ensure_shape(x, self.sample_shape(modality))

    def _decoded(self, clips: np.ndarray, roles, epoch: int, augment: bool = True):
        """tf.data of one tuple (x, y) per role in ``roles`` ((modality, role id, noise std)...)
        for each clip of ``clips``: all roles from the same record (paired)."""
        tf = self._tf
        par = tf.data.AUTOTUNE if self.parallel is None else self.parallel
        features, decoders = self._decoder({m for m, _, _ in roles})
        keys = [(_key(self.seed, 2 + r, epoch), _key(self.seed, 4)) for _, r, _ in roles]

        def convert(serialized, clip):
            ex = features.deserialize_example(serialized, decoders=decoders)
            y = tf.cast(ex[LABEL], tf.int32)
            return tuple((self._input(ex, clip, m, ak, nk, ns, augment), y)
                         for (m, _, ns), (ak, nk) in zip(roles, keys))

        return self._records(clips).map(convert, num_parallel_calls=par, deterministic=True)

    def _iterate(self, epoch, batch_size, s_order, t_order) -> Iterator[dict]:
        tf = self._tf
        n_rows = len(s_order)
        if n_rows == 0:
            return iter(())
        student = (self.student, _STUDENT, 0.0)
        teacher = None if t_order is None else (self.teacher, _TEACHER, self.noise_std)
        if teacher is not None and self.pairing == "paired":
            ds = self._decoded(s_order, (student, teacher), epoch)
            ds = ds.map(lambda s, t: {"x_s": s[0], "y_s": s[1], "x_t": t[0], "y_t": t[1]})
        elif teacher is not None:
            ds = tf.data.Dataset.zip((self._decoded(s_order, (student,), epoch),
                                      self._decoded(t_order, (teacher,), epoch)))
            ds = ds.map(lambda s, t: {"x_s": s[0][0], "y_s": s[0][1], "x_t": t[0][0], "y_t": t[0][1]})
        else:
            ds = self._decoded(s_order, (student,), epoch).map(lambda s: {"x_s": s[0], "y_s": s[1]})
        # drop_remainder: the rows given are whole batches, or end with the partial one on purpose
        ds = ds.batch(batch_size, drop_remainder=False).prefetch(self.prefetch)
        opts = tf.data.Options()
        opts.deterministic = True
        ds = ds.with_options(opts)
        return ds.as_numpy_iterator()

    def _estimate_noise_std(self) -> float:
        pool = self.teacher_indices
        k = min(self.noise_sample, len(pool))
        sample = np.sort(np.random.default_rng([self.seed, 5]).choice(pool, size=k, replace=False))
        total = total_sq = 0.0
        count = 0
        ds = self._decoded(sample, ((self.teacher, _TEACHER, 0.0),), epoch=0, augment=False).batch(16)
        for ((x, _),) in ds.as_numpy_iterator():
            x = x.astype(np.float64)
            total, total_sq, count = total + x.sum(), total_sq + np.square(x).sum(), count + x.size
        mean = total / count
        return self.teacher_noise * float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def protocol_streams(dataset: str, data_dir: Union[str, os.PathLike], direction: str, *, seed: int = 0,
                     regime: str = "easy", subsample: float = 1.0, noise: float = 0.5, imbalance: float = 10.0,
                     labels: Optional[np.ndarray] = None, **stream_kwargs):
    """The two streams of one seed of the protocol, from the shards (the streaming counterpart
    of ``experiment.run_experiment``'s ``subsample`` + ``distillation_pools``; same choices).

    Args:
      direction: "a2v" (teacher audio, student video) or "v2a".
      seed, regime, subsample, noise, imbalance: as ``ExperimentConfig`` (seed, unpaired,
        subsample, regime_noise, regime_imbalance).
      labels: the train labels (``train_labels``), if already read.
      stream_kwargs: ``ShardStream`` options (image_size, frames, video_crop, video_flip, config,
        version, parallel...).
    Returns:
      (teacher_stream: the teacher modality's subsampled train split alone, for its
       pre-training with "ce" (its order seeded by ``seeds.teacher_seed(seed)``, as the in-memory
       protocol seeds that fit); student_stream: the student pool, with the teacher pool as its teacher
       stream, pairing "paired" for the paired regime (every method of the seed, "ce"
       included, trains on it); info: the regimes' info plus the estimated noise std).
    """
    from ucmkd_jax import seeds
    from ucmkd_jax.data.base import DIRECTIONS
    from ucmkd_jax.data.regimes import protocol_indices

    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    t_mod, s_mod = DIRECTIONS[direction]
    y = train_labels(dataset, data_dir, config=stream_kwargs.get("config"),
                     version=stream_kwargs.get("version")) if labels is None else np.asarray(labels)
    idx = protocol_indices(y, y, ratio=subsample, regime=regime, seed=seed, paired=True, imbalance=imbalance)
    teacher_stream = ShardStream(dataset, data_dir, student=t_mod, student_indices=idx["teacher_train"],
                                 seed=seeds.teacher_seed(seed), **stream_kwargs)
    pairing = "paired" if regime == "paired" else "unpaired"
    student_stream = ShardStream(dataset, data_dir, student=s_mod, teacher=t_mod,
                                 student_indices=idx["student_pool"], teacher_indices=idx["teacher_pool"],
                                 pairing=pairing, seed=seed, teacher_noise=noise if regime == "hard" else 0.0,
                                 **stream_kwargs)
    info = dict(idx["info"])
    if regime == "hard":
        info["noise_std"] = student_stream.noise_std
        info["noise_std_estimated_on"] = student_stream.info["noise_std_estimated_on"]
    return teacher_stream, student_stream, info
