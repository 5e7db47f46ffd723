"""One experiment: pre-train a teacher per seed, distil a student with each method, report.

``run_experiment`` is what ``experiments/run.py`` calls; it is usable from Python too. Results
are records (dicts) with at least ``dataset, direction, method, seed, val_acc, test_acc,
teacher_test_acc, epochs, wall_s``. ``summarize`` turns them into a Markdown table.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Callable, Iterable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ucmkd_jax.checkpoint import RunCheckpointer, load_variables, save_variables
from ucmkd_jax.config import ExperimentConfig, to_dict
from ucmkd_jax.data import CrossModalDataset, ModalityData, Split, load_dataset, roles
from ucmkd_jax.data.regimes import distillation_pools, subsample
from ucmkd_jax.methods.base import get_method
from ucmkd_jax.models.model import Model, build_model
from ucmkd_jax.parallel import data_mesh
from ucmkd_jax.run_log import EpochLog
from ucmkd_jax.train import evaluate, fit, make_evaluator

__all__ = ["build_models", "pretrain_teacher", "teacher_cache_dir", "train_student", "check_methods", "run_experiment", "summarize",
           "expand_directions"]


def expand_directions(direction: str):
    return ("a2v", "v2a") if direction == "both" else (direction,)


def build_models(cfg: ExperimentConfig, teacher_data: ModalityData, student_data: ModalityData,
                 num_classes: int):
    """(teacher Model, student Model) with the configured backbone, sharing the latent size."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.model.dtype]
    kw = dict(backbone=cfg.model.backbone, width=cfg.model.width, stem=cfg.model.stem, dtype=dtype)
    teacher = build_model(teacher_data.modality, teacher_data.sample_shape, num_classes, name="teacher", **kw)
    student = build_model(student_data.modality, student_data.sample_shape, num_classes, name="student", **kw)
    return teacher, student


def pretrain_teacher(cfg: ExperimentConfig, teacher: Model, data: ModalityData, seed: int,
                     cache_dir: Optional[str] = None, progress: bool = True, desc: str = "teacher",
                     compiled: Optional[dict] = None, mesh=None):
    """Train the teacher with CE on its own modality (or restore it from ``cache_dir``).

    With a ``cache_dir`` the pre-training checkpoints every epoch (``teacher_seed<k>.run/``)
    and an interrupted pre-training resumes there.
    Returns (variables, info) with info = {"teacher_val_acc", "teacher_test_acc",
    "teacher_test_ce", "teacher_cached"}.
    """
    init = teacher.init(jax.random.PRNGKey(10_000 + seed))
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
        result = fit(teacher, init, data.train, data.val, method="ce", optim=cfg.optim,
                     train_config=cfg.train, epochs=cfg.train.teacher_epochs, seed=10_000 + seed,
                     desc=desc, progress=progress, compiled=compiled, checkpoint=ckpt, mesh=mesh)
        variables = result.variables
        if path is not None:
            save_variables(path, variables)
            ckpt.finish()
            shutil.rmtree(ckpt.directory, ignore_errors=True)
    compiled = {} if compiled is None else compiled
    ev = compiled.setdefault(("evaluator", id(teacher)), make_evaluator(teacher))
    info = {"teacher_val_acc": evaluate(teacher, variables, data.val, cfg.train.eval_batch_size, ev)["acc"],
            "teacher_cached": cached}
    if data.test is not None:
        test = evaluate(teacher, variables, data.test, cfg.train.eval_batch_size, ev)
        info.update(teacher_test_acc=test["acc"], teacher_test_ce=test["ce"])
    return variables, info


def teacher_cache_dir(root: str, cfg: ExperimentConfig, dataset_name: str, direction: str, teacher: Model,
                      data: ModalityData) -> str:
    """``<root>/<direction>/<key>``: the key hashes everything a pre-trained teacher depends on
    (dataset, modality and input shape, backbone, teacher epochs, batch size, optimiser,
    subsample, train split size), so runs with different student settings share teachers and a
    changed teacher setting never picks up a stale one. ``key.json`` beside it spells it out."""
    desc = {"dataset": dataset_name, "direction": direction, "modality": data.modality,
            "input_shape": list(teacher.input_shape), "latent_dim": teacher.latent_dim,
            "model": to_dict(cfg.model), "teacher_epochs": cfg.train.teacher_epochs,
            "batch_size": cfg.train.batch_size, "optim": to_dict(cfg.optim), "subsample": cfg.subsample,
            "n_train": len(data.train)}
    text = json.dumps(desc, sort_keys=True)
    path = os.path.join(root, direction, hashlib.sha1(text.encode()).hexdigest()[:12])
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "key.json"), "w") as f:
        f.write(json.dumps(desc, indent=1, sort_keys=True))
    return path


def _fingerprint(cfg: ExperimentConfig, method: str, seed: int, n_train: int, n_pool) -> dict:
    """What must match for a student checkpoint to be resumed: everything that shapes the run."""
    return {"method": method, "seed": seed, "direction": cfg.direction, "dataset": cfg.dataset,
            "unpaired": cfg.unpaired, "subsample": cfg.subsample, "student_train": n_train,
            "teacher_pool": n_pool, "model": to_dict(cfg.model), "train": to_dict(cfg.train),
            "optim": to_dict(cfg.optim), "method_config": to_dict(cfg.method)}


def train_student(cfg: ExperimentConfig, dataset_name: str, direction: str, method: str, seed: int,
                  student: Model, s_data: ModalityData, teacher: Optional[Model] = None, t_vars=None,
                  t_pool: Optional[Split] = None, t_info: Optional[dict] = None, *, compiled: Optional[dict] = None,
                  progress: bool = True, run_dir: Optional[str] = None, mesh=None, extra: Optional[dict] = None):
    """Train one student (``s_data.train`` is its pool) and test it. Returns (record, TrainResult).

    run_dir: when given, the run checkpoints every epoch under ``<run_dir>/checkpoints/<direction>/
    <method>/seed<k>`` (resuming from there) and logs every epoch to ``<run_dir>/logs/``. The
    record (``run_experiment``'s fields) is updated with ``extra``."""
    spec = get_method(method)
    use_t = spec.uses_teacher
    compiled = {} if compiled is None else compiled
    name = f"{direction}_{method}_seed{seed}"
    ckpt = log = None
    if run_dir is not None:
        ckpt = RunCheckpointer(os.path.join(run_dir, "checkpoints", direction, method, f"seed{seed}"),
                               _fingerprint(cfg, method, seed, len(s_data.train),
                                            len(t_pool) if (use_t and t_pool is not None) else None))
        log = EpochLog(os.path.join(run_dir, "logs"), name)
    start = time.time()
    try:
        result = fit(student, student.init(jax.random.PRNGKey(seed)), s_data.train, s_data.val, method=method,
                     method_config=cfg.method, optim=cfg.optim, train_config=cfg.train,
                     teacher=teacher if use_t else None, teacher_variables=t_vars if use_t else None,
                     teacher_train=t_pool if use_t else None, pairing=cfg.pairing, seed=seed,
                     desc=f"{method} {direction} seed {seed}", progress=progress, compiled=compiled,
                     checkpoint=ckpt, on_epoch=log.write if log is not None else None, mesh=mesh)
    finally:
        if log is not None:
            log.close()
    ev = compiled.setdefault(("evaluator", id(student)), make_evaluator(student))
    test = (evaluate(student, result.variables, s_data.test, cfg.train.eval_batch_size, ev)
            if s_data.test is not None else {"acc": None, "ce": None})
    t_info = t_info or {}
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
        "teacher_pool": len(t_pool) if (use_t and t_pool is not None) else None,
    }
    record.update(extra or {})
    return record, result, ckpt


def check_methods(cfg: ExperimentConfig, paired_dataset: bool, dataset_name: str) -> None:
    """Refuse, before any work, unknown methods and methods that the regime cannot feed."""
    for m in cfg.methods:
        spec = get_method(m)  # unknown names fail here
        if spec.needs_paired and cfg.unpaired != "paired":
            raise ValueError(f"method {m!r} needs paired data: add --unpaired paired (or drop it from --methods)")
    if cfg.unpaired == "paired" and not paired_dataset:
        raise ValueError(f"dataset {dataset_name!r} is not paired: the paired regime (--unpaired paired) is impossible")


def run_experiment(cfg: ExperimentConfig, dataset: Optional[CrossModalDataset] = None, *,
                   out_dir: Optional[str] = None, done: Iterable[tuple] = (),
                   on_record: Optional[Callable[[dict, list], None]] = None,
                   progress: bool = True, models: Optional[tuple] = None, mesh="auto",
                   teacher_cache: Optional[str] = None) -> List[dict]:
    """Run every (direction, seed, method) of ``cfg``.

    Per seed: the train splits are subsampled (``cfg.subsample``), the teacher is pre-trained
    (or restored) on its modality's train split, and the distillation pools of the regime
    ``cfg.unpaired`` are drawn; every method of that seed shares them.

    Args:
      dataset: a ``CrossModalDataset``; loaded from ``cfg.dataset`` when None.
      teacher_cache: where pre-trained teachers are cached (default ``<out_dir>/teachers``); runs
        that share it share teachers of equal configuration (``teacher_cache_dir``).
      out_dir: teachers are cached under ``<out_dir>/teachers``, students checkpoint every
        epoch under ``<out_dir>/checkpoints`` (an interrupted run resumes there) and log under
        ``<out_dir>/logs``. None: nothing is written.
      done: (direction, method, seed) triples already finished (skipped: resume).
      on_record: called with (record, epoch history) after each finished run.
      models: (teacher, student) ``Model``s to use instead of building them from ``cfg.model``
        (one direction only: bring-your-own-modality datasets).
      mesh: a data-parallel device mesh, None (one device) or "auto" (all devices when there
        are several and ``cfg.train.data_parallel``).
    Returns the new records.
    """
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, streaming=cfg.streaming,
                                                               image_size=cfg.image_size)
    check_methods(cfg, dataset.paired, dataset.name)
    dataset.validate()
    # train splits not in memory: they stream from the shards (fresh frames and flips per epoch)
    streaming = models is None and any(m.train is None for m in dataset.modalities.values())
    labels = None
    if streaming:
        from ucmkd_jax.data.pipeline import protocol_streams, train_labels  # imports TensorFlow lazily
        labels = train_labels(cfg.dataset, cfg.data_dir)
    if mesh == "auto":
        mesh = data_mesh() if (cfg.train.data_parallel and jax.device_count() > 1) else None
    done = set(done)
    records = []
    compiled = {}  # jitted steps shared across seeds (the models below live as long as it)
    directions = expand_directions(cfg.direction)
    if models is not None and len(directions) != 1:
        raise ValueError("models= fixes one teacher and one student: use a single direction")
    for direction in directions:
        t_data, s_data = roles(dataset, direction)
        teacher, student = models if models is not None else build_models(cfg, t_data, s_data, dataset.num_classes)
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            todo = [m for m in cfg.methods if (direction, m, seed) not in done]
            if not todo:
                continue
            if streaming:
                t_stream, s_stream, _ = protocol_streams(
                    cfg.dataset, cfg.data_dir, direction, seed=seed, regime=cfg.unpaired, subsample=cfg.subsample,
                    noise=cfg.regime_noise, imbalance=cfg.regime_imbalance, labels=labels,
                    image_size=cfg.image_size)
                t_seed = ModalityData(t_data.modality, t_stream, t_data.val, t_data.test)
                s_seed = ModalityData(s_data.modality, s_stream, s_data.val, s_data.test)
            else:
                t_seed, s_seed, _ = subsample(t_data, s_data, cfg.subsample, seed, dataset.paired)
            t_vars, t_info = None, {}
            if any(get_method(m).uses_teacher for m in todo) or models is None:
                root = teacher_cache or (os.path.join(out_dir, "teachers") if out_dir else None)
                cache = teacher_cache_dir(root, cfg, dataset.name, direction, teacher, t_seed) if root else None
                t_vars, t_info = pretrain_teacher(cfg, teacher, t_seed, seed, cache, progress,
                                                  desc=f"teacher {t_data.modality} seed {seed}", compiled=compiled,
                                                  mesh=mesh)
            if streaming:  # the student stream carries the teacher pool's stream
                t_pool, s_run = None, s_seed
                extra = {"teacher_pool": len(s_stream.teacher_indices), "streaming": True}
            else:
                t_pool, s_pool, _ = distillation_pools(
                    t_seed.train if t_vars is not None else None, s_seed.train, cfg.unpaired, seed, dataset.paired,
                    noise=cfg.regime_noise, imbalance=cfg.regime_imbalance)
                s_run, extra = ModalityData(s_seed.modality, s_pool, s_seed.val, s_seed.test), {}
            for method in todo:
                record, result, ckpt = train_student(
                    cfg, dataset.name, direction, method, seed, student, s_run, teacher, t_vars, t_pool, t_info,
                    compiled=compiled, progress=progress, run_dir=out_dir, mesh=mesh,
                    extra=extra if get_method(method).uses_teacher else {})
                records.append(record)
                if on_record is not None:
                    on_record(record, result.history)
                if ckpt is not None:
                    ckpt.finish()  # the record is safe: drop the resumable state, keep best/
    return records


def _mean_std(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    a = 100 * np.asarray(vals, float)
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"


def summarize(records: List[dict]) -> str:
    """Markdown table: one row per (direction, method); accuracies in %, mean ± std over seeds
    (sample std, ddof=1)."""
    lines = ["| direction | method | seeds | student val acc (%) | student test acc (%) | teacher test acc (%) | wall s / run |",
             "|---|---|---|---|---|---|---|"]
    keys = []
    for r in records:
        if (r["direction"], r["method"]) not in keys:
            keys.append((r["direction"], r["method"]))
    for d, m in keys:
        rs = [r for r in records if r["direction"] == d and r["method"] == m]
        lines.append(f"| {d} | {m} | {len(rs)} | {_mean_std([r['val_acc'] for r in rs])} | "
                     f"{_mean_std([r['test_acc'] for r in rs])} | {_mean_std([r['teacher_test_acc'] for r in rs])} | "
                     f"{np.mean([r['wall_s'] for r in rs]):.1f} |")
    return "\n".join(lines)
