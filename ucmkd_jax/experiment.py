"""One experiment: pre-train a teacher per seed, distil a student with each method, report.

``run_experiment`` is what ``experiments/run.py`` calls; it is usable from Python too. Results
are records (dicts) with at least ``dataset, direction, method, seed, val_acc, test_acc,
teacher_test_acc, epochs, wall_s``. ``summarize`` turns them into a Markdown table.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Iterable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ucmkd_jax.checkpoint import load_variables, save_variables
from ucmkd_jax.config import ExperimentConfig
from ucmkd_jax.data import CrossModalDataset, ModalityData, load_dataset, roles
from ucmkd_jax.methods.base import get_method
from ucmkd_jax.models.model import Model, build_model
from ucmkd_jax.train import evaluate, fit, make_evaluator

__all__ = ["build_models", "pretrain_teacher", "run_experiment", "summarize", "expand_directions"]


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
                     compiled: Optional[dict] = None):
    """Train the teacher with CE on its own modality (or restore it from ``cache_dir``).

    Returns (variables, info) with info = {"teacher_val_acc", "teacher_test_acc",
    "teacher_test_ce", "teacher_cached"}.
    """
    init = teacher.init(jax.random.PRNGKey(10_000 + seed))
    path = os.path.join(cache_dir, f"teacher_seed{seed}") if cache_dir else None
    cached = path is not None and os.path.isdir(path)
    if cached:
        variables = load_variables(path, init)
    else:
        result = fit(teacher, init, data.train, data.val, method="ce", optim=cfg.optim,
                     train_config=cfg.train, epochs=cfg.train.teacher_epochs, seed=10_000 + seed,
                     desc=desc, progress=progress, compiled=compiled)
        variables = result.variables
        if path is not None:
            save_variables(path, variables)
    compiled = {} if compiled is None else compiled
    ev = compiled.setdefault(("evaluator", id(teacher)), make_evaluator(teacher))
    info = {"teacher_val_acc": evaluate(teacher, variables, data.val, cfg.train.eval_batch_size, ev)["acc"],
            "teacher_cached": cached}
    if data.test is not None:
        test = evaluate(teacher, variables, data.test, cfg.train.eval_batch_size, ev)
        info.update(teacher_test_acc=test["acc"], teacher_test_ce=test["ce"])
    return variables, info


def run_experiment(cfg: ExperimentConfig, dataset: Optional[CrossModalDataset] = None, *,
                   out_dir: Optional[str] = None, done: Iterable[tuple] = (),
                   on_record: Optional[Callable[[dict, list], None]] = None,
                   progress: bool = True) -> List[dict]:
    """Run every (direction, seed, method) of ``cfg``.

    Args:
      dataset: a ``CrossModalDataset``; loaded from ``cfg.dataset`` when None.
      out_dir: where teachers are cached (``<out_dir>/teachers``); None: no caching.
      done: (direction, method, seed) triples already finished (skipped: resume).
      on_record: called with (record, epoch history) after each finished run.
    Returns the new records.
    """
    for m in cfg.methods:
        spec = get_method(m)  # unknown names fail here, before any work
        if spec.needs_paired and cfg.pairing != "paired":
            raise ValueError(f"method {m!r} needs paired data: add --pairing paired (or drop it from --methods)")
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir)
    dataset.validate()
    if cfg.pairing == "paired" and not dataset.paired:
        raise ValueError(f"dataset {dataset.name!r} is not paired: pairing='paired' is impossible")
    done = set(done)
    records = []
    compiled = {}  # jitted steps shared across seeds (the models below live as long as it)
    for direction in expand_directions(cfg.direction):
        t_data, s_data = roles(dataset, direction)
        teacher, student = build_models(cfg, t_data, s_data, dataset.num_classes)
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            todo = [m for m in cfg.methods if (direction, m, seed) not in done]
            if not todo:
                continue
            cache = os.path.join(out_dir, "teachers", direction) if out_dir else None
            t_vars, t_info = pretrain_teacher(cfg, teacher, t_data, seed, cache, progress,
                                              desc=f"teacher {t_data.modality} seed {seed}", compiled=compiled)
            for method in todo:
                spec = get_method(method)
                s_init = student.init(jax.random.PRNGKey(seed))
                start = time.time()
                result = fit(student, s_init, s_data.train, s_data.val, method=method,
                             method_config=cfg.method, optim=cfg.optim, train_config=cfg.train,
                             teacher=teacher if spec.uses_teacher else None,
                             teacher_variables=t_vars if spec.uses_teacher else None,
                             teacher_train=t_data.train if spec.uses_teacher else None,
                             pairing=cfg.pairing, seed=seed,
                             desc=f"{method} {direction} seed {seed}", progress=progress, compiled=compiled)
                ev = compiled.setdefault(("evaluator", id(student)), make_evaluator(student))
                test = (evaluate(student, result.variables, s_data.test, cfg.train.eval_batch_size, ev)
                        if s_data.test is not None else {"acc": None, "ce": None})
                record = {
                    "dataset": dataset.name, "direction": direction, "method": method, "seed": seed,
                    "val_acc": result.best_val_acc, "test_acc": test["acc"], "test_ce": test["ce"],
                    "teacher_test_acc": t_info.get("teacher_test_acc"),
                    "teacher_val_acc": t_info["teacher_val_acc"],
                    "epochs": len(result.history), "best_epoch": result.best_epoch,
                    "wall_s": round(time.time() - start, 2),
                    "hypergrad": cfg.method.hypergrad if method.startswith("ucmkd") else None,
                    "pairing": cfg.pairing if spec.uses_teacher else None,
                }
                records.append(record)
                if on_record is not None:
                    on_record(record, result.history)
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
