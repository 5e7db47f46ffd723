"""The per-seed protocol: what every method of one (direction, seed) shares, and one student.

For run seed s of a direction (teacher modality T, student modality S), in this order:

  1. subsample (``cfg.subsample``, Tables 3-5): a stratified fraction of each TRAIN split;
     validation and test stay whole;
  2. the teacher: pre-trained with cross-entropy on its subsampled train split, selected on its
     validation split (or restored from the teacher cache, or given by the caller), then frozen;
  3. the distillation pools of the regime ``cfg.unpaired`` (Appendix G): what the student trains
     on, and what the teacher-modality stream is drawn from;
  4. one student per method, all from the same init ``PRNGKey(s)``, on those pools
     (``train_student``).

``prepare_seed`` does 1-3 and returns a ``SeedData``; ``train_student`` does 4 for one method.
The in-memory path (``data.regimes``) and the streaming path for prepared shards
(``data.pipeline.protocol_streams``) make the same seeded choices. Every consumer (the CLI's
``run_experiment``, ``distill``, the bound report and the sweep, through ``run_experiment``)
goes through these two functions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, List, Optional

import jax
import numpy as np

from ucmkd_jax import seeds
from ucmkd_jax.checkpoint import RunCheckpointer, load_variables, on_primary, save_variables
from ucmkd_jax.config import ExperimentConfig, to_dict
from ucmkd_jax.data.base import ModalityData, Split
from ucmkd_jax.data.regimes import distillation_pools, subsample
from ucmkd_jax.fidelity import FROZEN_BN_BASELINES
from ucmkd_jax.methods.base import get_method
from ucmkd_jax.models.model import Model
from ucmkd_jax.models.pretrained import initial_variables
from ucmkd_jax.results import write_text
from ucmkd_jax.run_log import EpochLog
from ucmkd_jax.train import StepCache, TrainResult, evaluate, fit

__all__ = ["SeedData", "StudentRun", "check_batch_fits", "prepare_seed", "pretrain_teacher", "evaluate_teacher",
           "data_fingerprint", "teacher_cache_dir", "train_student"]


@dataclasses.dataclass
class SeedData:
    """What every method of one (direction, seed) shares.

    teacher: the teacher modality after subsampling (its ``train`` is the teacher's pre-training
      split, a ``Split`` or a stream); None without a teacher.
    teacher_model, teacher_variables, teacher_info: the frozen teacher; ``teacher_info`` holds
      ``teacher_val_acc`` and, with a test split, ``teacher_test_acc`` / ``teacher_test_ce``.
    student: the student modality with ``train`` = its distillation pool (a ``Split``, or a
      ``TrainStream`` that also carries the teacher stream); val and test whole.
    teacher_pool: the pool the teacher-modality batches are drawn from (None when the student
      stream carries it, or without a teacher).
    extra: record fields of the methods that use the teacher (the streamed pool size).
    """

    direction: str
    seed: int
    teacher: Optional[ModalityData]
    teacher_model: Optional[Model]
    teacher_variables: Any
    teacher_info: dict
    student: ModalityData
    teacher_pool: Optional[Split]
    extra: dict


@dataclasses.dataclass
class StudentRun:
    """One finished student: its record (the fields of ``results.json``), training result
    (best variables, history), model, and the seed data it was trained on. ``checkpoint``: its
    per-epoch checkpointer (None without an output folder); ``finish()`` it once the record is
    safely written."""

    record: dict
    result: TrainResult
    student: Model
    seed_data: SeedData
    checkpoint: Optional[RunCheckpointer] = None

    @property
    def history(self) -> List[dict]:
        return self.result.history


# ---------------------------------------------------------------------------------------- teacher
def teacher_cache_dir(root: str, cfg: ExperimentConfig, dataset_name: str, direction: str, teacher: Model,
                      data: ModalityData) -> str:
    """``<root>/<direction>/<key>``: the key hashes everything a pre-trained teacher depends on
    (dataset, modality and input shape, backbone, teacher epochs, batch size, optimiser,
    subsample, train split size, and the teacher's data themselves: ``data_fingerprint``), so
    runs with different student settings share teachers and a changed teacher setting or file
    never picks up a stale one. ``key.json`` beside it spells it out."""
    desc = {"dataset": dataset_name, "direction": direction, "modality": data.modality,
            "input_shape": list(teacher.input_shape), "latent_dim": teacher.latent_dim,
            "model": to_dict(cfg.model), "teacher_epochs": cfg.train.teacher_epochs,
            "batch_size": cfg.train.batch_size, "precise_bn": cfg.train.precise_bn, "optim": to_dict(cfg.optim),
            "teacher_recipe": cfg.train.teacher_recipe, "teacher_stop_acc": cfg.train.teacher_stop_acc,
            "model_selection": cfg.train.model_selection,
            "subsample": cfg.subsample, "n_train": len(data.train), "data": data_fingerprint(data)}
    text = json.dumps(desc, sort_keys=True)
    path = os.path.join(root, direction, hashlib.sha1(text.encode()).hexdigest()[:12])
    os.makedirs(path, exist_ok=True)
    write_text(os.path.join(path, "key.json"), json.dumps(desc, indent=1, sort_keys=True))
    return path


def data_fingerprint(data: ModalityData) -> str:
    """A SHA-1 of the teacher's training and selection data: the train split's inputs and labels
    (for a shard stream: its shard folder and clip positions, and for a video stream how frames
    are decoded: crop side, ``video_crop``, ``video_flip``) and the validation split's."""
    h = hashlib.sha1()
    for split in (data.train, data.val):
        if isinstance(split, Split):
            h.update(np.ascontiguousarray(split.y).tobytes())
            h.update(np.ascontiguousarray(split.x).tobytes())
        elif split is not None:  # a TrainStream: what it reads, not the decoded bytes
            h.update(str(getattr(split, "path", "")).encode())
            h.update(np.asarray(getattr(split, "student_indices", [])).tobytes())
            decode = tuple(getattr(split, k, None) for k in ("image_size", "video_crop", "video_flip"))
            # a teacher trained on one crop or flip is never reused for another; today's decoding
            # ("resize_crop", "clip") adds nothing, so teachers cached before these fields keep their key
            if getattr(split, "student", None) == "video" and decode[1:] != ("resize_crop", "clip"):
                h.update(json.dumps(decode).encode())
    return h.hexdigest()


def evaluate_teacher(cfg: ExperimentConfig, teacher: Model, variables, data: ModalityData,
                     cache: Optional[StepCache] = None, mesh=None) -> dict:
    """{"teacher_val_acc"[, "teacher_test_acc", "teacher_test_ce"]} on the teacher's own modality."""
    ev = (cache or StepCache()).evaluator(teacher)
    info = {"teacher_val_acc": evaluate(teacher, variables, data.val, cfg.train.eval_batch_size, ev, mesh)["acc"]}
    if data.test is not None:
        test = evaluate(teacher, variables, data.test, cfg.train.eval_batch_size, ev, mesh)
        info.update(teacher_test_acc=test["acc"], teacher_test_ce=test["ce"])
    return info


def pretrain_teacher(cfg: ExperimentConfig, teacher: Model, data: ModalityData, seed: int,
                     cache_dir: Optional[str] = None, progress: bool = True, desc: str = "teacher",
                     cache: Optional[StepCache] = None, mesh=None):
    """Train the teacher with CE on its own modality (or restore it from ``cache_dir``).

    With a ``cache_dir`` the pre-training checkpoints every epoch (``teacher_seed<k>.run/``)
    and an interrupted pre-training resumes there. Init and batch order come from
    ``seeds.teacher_seed(seed)``; the trunk starts from ``cfg.model.teacher_init`` when set
    (``models.pretrained.initial_variables``; the student likewise from ``student_init``).
    Returns (variables, info): ``evaluate_teacher``'s info plus "teacher_cached".
    """
    t_seed = seeds.teacher_seed(seed)
    t_optim = cfg.optim
    if cfg.train.teacher_recipe == "release":  # the release's pre_train_models: SGD, poly lr, no clip
        t_optim = dataclasses.replace(cfg.optim, optimizer="sgd", momentum=0.9, schedule="poly", clip_norm=0.0,
                                      weight_decay=0.0, warmup_epochs=0.0)
    select_on = data.test if cfg.train.model_selection == "test" else data.val
    if select_on is None:
        raise ValueError(f"train.model_selection={cfg.train.model_selection!r}, but the teacher has no "
                         f"{cfg.train.model_selection} split")
    init = initial_variables(teacher, jax.random.PRNGKey(t_seed), cfg.model.teacher_init)
    path = os.path.join(cache_dir, f"teacher_seed{seed}") if cache_dir else None
    cached = path is not None and os.path.isdir(path)
    if cached:
        variables = load_variables(path, init)
    else:
        ckpt = None
        if path is not None:
            ckpt = RunCheckpointer(path + ".run", {"teacher": teacher.name, "seed": seed, "n_train": len(data.train),
                                                   "model": to_dict(cfg.model), "train": to_dict(cfg.train),
                                                   "optim": to_dict(cfg.optim)})
        # the students' selection rule and the release's baseline BatchNorm accident are not the
        # teacher's (its pre-training recipe is docs/protocol.md row 8)
        result = fit(teacher, init, data.train, select_on, method="ce", optim=t_optim, stop_acc=cfg.train.teacher_stop_acc,
                     train_config=dataclasses.replace(cfg.train, selection_ties="earlier", baseline_bn="train"),
                     epochs=cfg.train.teacher_epochs, seed=t_seed,
                     desc=desc, progress=progress, cache=cache, checkpoint=ckpt, mesh=mesh)
        variables = result.variables
        if path is not None:
            save_variables(path, variables)
            ckpt.finish()
            on_primary(f"drop {ckpt.directory}", lambda: shutil.rmtree(ckpt.directory, ignore_errors=True))
    return variables, dict(evaluate_teacher(cfg, teacher, variables, data, cache, mesh), teacher_cached=cached)


# ---------------------------------------------------------------------------------------- one seed
def check_batch_fits(cfg: ExperimentConfig, student_train: int, teacher_train: Optional[int] = None) -> None:
    """Refuse a student train split (its distillation pool) or a teacher pre-training split
    (None: no pre-training) smaller than one batch, naming which split it is."""
    bs = cfg.train.batch_size
    sub = f" after --subsample {cfg.subsample:g}" if cfg.subsample < 1 else ""
    for what, n in (("the student train split", student_train),
                    ("the teacher's pre-training split (its modality's train split)", teacher_train)):
        if n is not None and n < bs:
            raise ValueError(f"{what} has {n} samples{sub}, fewer than one batch of {bs}: lower the batch size")


def prepare_seed(cfg: ExperimentConfig, dataset_name: str, direction: str, seed: int, *,
                 teacher_data: Optional[ModalityData], student_data: ModalityData, paired: bool,
                 teacher_model: Optional[Model], need_teacher: bool, teacher_variables=None,
                 teacher_root: Optional[str] = None, labels=None, cache: Optional[StepCache] = None, mesh=None,
                 progress: bool = True) -> SeedData:
    """Steps 1-3 of the module docstring for run seed ``seed``.

    Args:
      teacher_data, student_data: the two modalities (whole splits); ``student_data.train`` None
        means the train splits stream from the prepared shards of ``cfg.dataset`` (``labels``:
        their train labels, ``data.pipeline.train_labels``).
      paired: the dataset holds the same clips in both modalities.
      need_teacher: train (or restore) a teacher; False skips steps 2-3's teacher side.
      teacher_variables: a trained teacher to use as it is (only evaluated).
      teacher_root: the teacher cache (``teacher_cache_dir``); None: nothing is written.
    """
    pretrain = need_teacher and teacher_variables is None
    if student_data.train is None:  # streamed: the student stream carries the teacher pool's stream
        from ucmkd_jax.data.pipeline import protocol_streams  # imports TensorFlow lazily

        t_stream, s_stream, _ = protocol_streams(
            cfg.dataset, cfg.data_dir, direction, seed=seed, regime=cfg.unpaired, subsample=cfg.subsample,
            noise=cfg.regime_noise, imbalance=cfg.regime_imbalance, labels=labels, image_size=cfg.image_size,
            video_crop=cfg.video_crop, video_flip=cfg.video_flip, config=cfg.shard_config)
        t_seed = ModalityData(teacher_data.modality, t_stream, teacher_data.val, teacher_data.test)
        s_run = ModalityData(student_data.modality, s_stream, student_data.val, student_data.test)
        t_pool, extra = None, {"teacher_pool": len(s_stream.teacher_indices), "streaming": True}
        check_batch_fits(cfg, s_stream.num_samples, t_stream.num_samples if pretrain else None)
    else:
        t_seed, s_seed, _ = subsample(teacher_data, student_data, cfg.subsample, seed, paired)
        t_pool, s_pool, _ = distillation_pools(t_seed.train if (need_teacher and t_seed is not None) else None,
                                               s_seed.train, cfg.unpaired, seed, paired, noise=cfg.regime_noise,
                                               imbalance=cfg.regime_imbalance)
        s_run, extra = ModalityData(s_seed.modality, s_pool, s_seed.val, s_seed.test), {}
        check_batch_fits(cfg, len(s_pool), len(t_seed.train) if pretrain else None)
    t_vars, t_info = teacher_variables, {}
    if pretrain:
        cache_dir = (teacher_cache_dir(teacher_root, cfg, dataset_name, direction, teacher_model, t_seed)
                     if teacher_root else None)
        # one teacher for all seeds (the release) or one per seed
        teacher_seed = cfg.first_seed if cfg.train.shared_teacher else seed
        t_vars, t_info = pretrain_teacher(cfg, teacher_model, t_seed, teacher_seed, cache_dir, progress,
                                          desc=f"teacher {t_seed.modality} seed {teacher_seed}", cache=cache, mesh=mesh)
    elif need_teacher:
        t_info = evaluate_teacher(cfg, teacher_model, t_vars, t_seed, cache, mesh)
    return SeedData(direction, seed, t_seed, teacher_model, t_vars, t_info, s_run, t_pool, extra)


# ---------------------------------------------------------------------------------------- one student
def _fingerprint(cfg: ExperimentConfig, method: str, seed: int, n_train: int, n_pool) -> dict:
    """What must match for a student checkpoint to be resumed: everything that shapes the run."""
    return {"method": method, "seed": seed, "direction": cfg.direction, "dataset": cfg.dataset,
            "unpaired": cfg.unpaired, "subsample": cfg.subsample, "student_train": n_train,
            "teacher_pool": n_pool, "shard_config": cfg.shard_config, "image_size": cfg.image_size,
            "video_crop": cfg.video_crop, "video_flip": cfg.video_flip, "model": to_dict(cfg.model),
            "train": to_dict(cfg.train),
            "optim": to_dict(cfg.optim), "method_config": to_dict(cfg.method)}


def train_student(cfg: ExperimentConfig, dataset_name: str, method: str, student: Model, data: SeedData, *,
                  cache: Optional[StepCache] = None, progress: bool = True, run_dir: Optional[str] = None,
                  mesh=None) -> StudentRun:
    """Train one student of ``method`` on ``data`` (step 4), select it on validation and test it.

    run_dir: when given, the run checkpoints every epoch under ``<run_dir>/checkpoints/<direction>/
    <method>/seed<k>`` (resuming from there) and logs every epoch to ``<run_dir>/logs/``.
    Returns a ``StudentRun`` whose record holds dataset, direction, method, seed, val_acc,
    test_acc, test_ce, teacher_test_acc, teacher_val_acc, epochs, best_epoch, wall_s,
    hypergrad, unpaired, subsample, student_train, teacher_pool, bn_updates_per_step (how often
    the method's step updates the BatchNorm running averages), precise_bn (the batches of the
    precise statistics evaluation used; 0: the running averages), and ``data.extra`` for methods
    that use the teacher."""
    spec = get_method(method)
    use_t = spec.uses_teacher
    cache = StepCache() if cache is None else cache
    direction, seed, s_data = data.direction, data.seed, data.student
    t_pool = data.teacher_pool if use_t else None
    ckpt = log = None
    if run_dir is not None:
        ckpt = RunCheckpointer(os.path.join(run_dir, "checkpoints", direction, method, f"seed{seed}"),
                               _fingerprint(cfg, method, seed, len(s_data.train),
                                            len(t_pool) if t_pool is not None else None))
        log = EpochLog(os.path.join(run_dir, "logs"), f"{direction}_{method}_seed{seed}")
    start = time.time()
    try:
        # the release selects on its test loader (train.model_selection="test")
        select_on = s_data.test if cfg.train.model_selection == "test" else s_data.val
        if select_on is None:
            raise ValueError(f"train.model_selection={cfg.train.model_selection!r}, but the student has no "
                             f"{cfg.train.model_selection} split")
        result = fit(student, initial_variables(student, jax.random.PRNGKey(seed), cfg.model.student_init),
                     s_data.train, select_on, method=method,
                     method_config=cfg.method, optim=cfg.optim, train_config=cfg.train,
                     teacher=data.teacher_model if use_t else None,
                     teacher_variables=data.teacher_variables if use_t else None, teacher_train=t_pool,
                     pairing=cfg.pairing, seed=seed, desc=f"{method} {direction} seed {seed}", progress=progress,
                     cache=cache, checkpoint=ckpt, on_epoch=log.write if log is not None else None, mesh=mesh)
    finally:
        if log is not None:
            log.close()
    test = (evaluate(student, result.variables, s_data.test, cfg.train.eval_batch_size, cache.evaluator(student),
                     mesh) if s_data.test is not None else {"acc": None, "ce": None})
    t_info = data.teacher_info
    record = {
        "dataset": dataset_name, "direction": direction, "method": method, "seed": seed,
        "val_acc": result.best_val_acc, "test_acc": test["acc"], "test_ce": test["ce"],
        "teacher_test_acc": t_info.get("teacher_test_acc"),  # this seed's teacher, also beside ce
        "teacher_val_acc": t_info.get("teacher_val_acc"),
        "epochs": len(result.history), "best_epoch": result.best_epoch,
        "wall_s": round(max(result.wall_s, time.time() - start), 2),
        "hypergrad": cfg.method.hypergrad if method.startswith("ucmkd") else None,
        "unpaired": cfg.unpaired if use_t else None,
        "subsample": cfg.subsample,
        "student_train": len(s_data.train),
        "teacher_pool": len(t_pool) if t_pool is not None else None,
        "bn_updates_per_step": spec.bn_updates(cfg.method),
        "precise_bn": cfg.train.precise_bn,
        "model_selection": cfg.train.model_selection,
        "baseline_bn": cfg.train.baseline_bn if method in FROZEN_BN_BASELINES else None,
        "protocol": cfg.protocol,
    }
    if use_t:
        record.update(data.extra)
    return StudentRun(record, result, student, data, ckpt)
