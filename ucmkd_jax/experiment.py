"""One experiment: every (direction, seed, method) of an ``ExperimentConfig``, and its table.

``run_experiment`` is what ``experiments/run.py`` (and the sweep and the bound report, through
its ``on_run`` hook) calls, and what ``ucmkd_jax.distill`` runs for one seed and one method; it
is usable from Python too. Per (direction, seed) it runs the protocol of
``ucmkd_jax.protocol`` (``prepare_seed``, then ``train_student`` per method). Results are
records (dicts) with at least ``dataset, direction, method, seed, val_acc, test_acc,
teacher_test_acc, epochs, wall_s``; ``summarize`` turns them into a Markdown table.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Tuple

import jax
import numpy as np

from ucmkd_jax.config import ExperimentConfig, ModelConfig
from ucmkd_jax.data import CrossModalDataset, ModalityData, load_dataset, roles
from ucmkd_jax.data.base import DIRECTIONS, Split
from ucmkd_jax.data.regimes import protocol_indices
from ucmkd_jax.methods.base import check_bilevel_config, get_method
from ucmkd_jax.overrides import ConfigError
from ucmkd_jax.models import BACKBONES, Model, build_model, default_backbone
from ucmkd_jax.models.pretrained import trunk_from_file
from ucmkd_jax.parallel import data_mesh
from ucmkd_jax.protocol import StudentRun, check_batch_fits, prepare_seed, train_student
from ucmkd_jax.results import format_mean_std
from ucmkd_jax.train import StepCache

__all__ = ["expand_directions", "load_experiment_dataset", "build_models", "backbone_options", "check_run", "run_experiment", "summarize"]


def expand_directions(direction: str) -> Tuple[str, ...]:
    return ("a2v", "v2a") if direction == "both" else (direction,)


def load_experiment_dataset(cfg: ExperimentConfig, streaming: Optional[bool] = None) -> CrossModalDataset:
    """``cfg.dataset`` as ``cfg`` reads it (the shard config, the video crop and size): the one
    place run, sweep and bound load their data. ``streaming``: default ``cfg.streaming``."""
    return load_dataset(cfg.dataset, cfg.data_dir, streaming=cfg.streaming if streaming is None else streaming,
                        image_size=cfg.image_size, video_crop=cfg.video_crop, shard_config=cfg.shard_config)


def build_models(cfg: ExperimentConfig, teacher_data: Optional[ModalityData], student_data: ModalityData,
                 num_classes: int) -> Tuple[Optional[Model], Model]:
    """(teacher, student) ``Model``s of ``cfg.model`` for the two modalities (teacher None
    without teacher data). A side's backbone is ``model.teacher_backbone`` /
    ``model.student_backbone``, "auto" meaning ``model.backbone`` (an MLP for vectors); both
    end at ``model.latent_dim`` (None: the encoders' own; where the two differ, e.g. a ViT-B
    teacher (768) and a ViT-S student (384), the student is projected to the teacher's width, as
    the authors' ViT release does), through ``model.projection``; a backbone's own options (a
    ViT's ``vit_*`` fields) come from ``cfg.model`` too (``backbone_options``)."""
    m = cfg.model
    # The exact hypergradient differentiates the student's forward twice: cuDNN's fused attention
    # has no second derivative, so that student takes XLA's attention.
    twice = cfg.method.hypergrad == "unrolled" and any(name.startswith("ucmkd") for name in cfg.methods)

    def one(data, backbone, name, latent_dim):
        if data is None:
            return None
        backbone = default_backbone(data.modality, m.backbone) if backbone == "auto" else backbone
        return build_model(data.modality, data.sample_shape, num_classes, backbone, width=m.width, stem=m.stem,
                           dtype=m.dtype, latent_dim=latent_dim, mlp_depth=m.mlp_depth, name=name,
                           options=backbone_options(m, backbone, data.modality, twice and name == "student"),
                           projection=m.projection, video_frames=video_frames(m.video_frames, backbone),
                           bn_running_var=m.bn_running_var)

    teacher = one(teacher_data, m.teacher_backbone, "teacher", m.latent_dim)
    student = one(student_data, m.student_backbone, "student", m.latent_dim)
    if m.latent_dim is None and teacher is not None and student is not None \
            and student.latent_dim != teacher.latent_dim:
        student = one(student_data, m.student_backbone, "student", teacher.latent_dim)
    return teacher, student


def video_frames(setting: str, backbone: str) -> str:
    """``ModelConfig.video_frames`` for ``backbone``: "release" is what the authors' release does
    with it (frames averaged in pixel space before a ViT, encoded one by one by a ResNet)."""
    if setting != "release":
        return setting
    return "mean_pixels" if backbone.startswith("vit") else "per_frame"


def backbone_options(m: ModelConfig, backbone: str, modality: str, second_order: bool = False) -> dict:
    """The ``build_model(options=...)`` of ``backbone`` from the ModelConfig ``m``: for a ViT its
    depth, remat, attention ("xla" when ``second_order``: see ``build_models``) and, for
    spectrograms, the size they are resized to; {} for backbones without options."""
    if "pool_impl" in BACKBONES.get(backbone).options:  # a ResNet: how its stem is computed
        return {"stem_impl": m.stem_impl, "pool_impl": m.pool_impl, "conv_impl": m.conv_impl}
    if "attention" not in BACKBONES.get(backbone).options:
        return {}
    attention = "xla" if second_order and m.vit_attention == "auto" else m.vit_attention
    return {"depth": m.vit_depth, "remat": m.vit_remat, "attention": attention,
            "input_size": m.vit_audio_size if modality == "audio" else None}


def check_run(cfg: ExperimentConfig, dataset: CrossModalDataset, models: Optional[tuple] = None,
              teacher_given: bool = False) -> None:
    """Everything that can be refused before anything is compiled or written: unknown methods,
    methods the regime cannot feed, the paired regime on unpaired data, splits smaller than one
    batch after ``--subsample`` and the regime's pools (in-memory datasets) and, for prebuilt
    ``models`` (teacher, student) of one direction, their fit to the data."""
    uses_teacher = False
    if cfg.train.shared_teacher and cfg.subsample < 1.0:
        raise ConfigError(f"train.shared_teacher (one teacher for all seeds, as --protocol authors sets) cannot go "
                          f"with subsample={cfg.subsample}: each seed subsamples the teacher's data too; add --set "
                          f"train.shared_teacher=false")
    if any(m.startswith("ucmkd") for m in cfg.methods):
        check_bilevel_config(cfg.method)
    for m in cfg.methods:
        spec = get_method(m)  # unknown names fail here
        uses_teacher |= spec.uses_teacher
        if spec.needs_paired and not dataset.paired:
            raise ValueError(f"method {m!r} needs paired samples (the teacher sees each student sample's partner); "
                             f"dataset {dataset.name!r} is unpaired: drop it from the methods")
        if spec.needs_paired and cfg.unpaired != "paired":
            raise ValueError(f"method {m!r} needs paired data: add --unpaired paired (or drop it from --methods)")
    if cfg.unpaired == "paired" and not dataset.paired:
        raise ValueError(f"dataset {dataset.name!r} is unpaired (two separate collections): the paired regime is "
                         f"impossible (use --unpaired easy, medium or hard)")
    need_teacher = uses_teacher or models is None
    for direction in expand_directions(cfg.direction):
        t_data, s_data = _roles(dataset, direction, prebuilt=models is not None)
        if isinstance(s_data.train, Split):  # the sizes every seed gets (stratified counts: labels alone)
            t_y = t_data.train.y if (need_teacher and t_data is not None) else None
            idx = protocol_indices(t_y, s_data.train.y, ratio=cfg.subsample, regime=cfg.unpaired, seed=cfg.first_seed,
                                   paired=dataset.paired, imbalance=cfg.regime_imbalance)
            pretrain = need_teacher and not teacher_given and t_y is not None
            check_batch_fits(cfg, len(idx["student_pool"]), len(idx["teacher_train"]) if pretrain else None)
    if models is None:
        return
    teacher, student = models
    t_data, s_data = _roles(dataset, cfg.direction, prebuilt=True)
    student.check_input(s_data.train.x[:1])
    if not uses_teacher:
        return
    if teacher is None or t_data is None:
        raise ValueError("a method that uses the teacher needs the teacher's data (teacher-modality batches)")
    if tuple(teacher.input_shape) != t_data.sample_shape:
        raise ValueError(f"the teacher was built for per-sample shape {tuple(teacher.input_shape)} but the "
                         f"teacher data has {t_data.sample_shape}")
    if teacher.num_classes != dataset.num_classes:
        raise ValueError(f"the teacher has {teacher.num_classes} classes but the data has K = {dataset.num_classes}")
    if teacher.latent_dim != student.latent_dim:
        raise ValueError(f"the teacher's latent size {teacher.latent_dim} differs from the student's "
                         f"{student.latent_dim}: the teacher head must score student features")


def _roles(dataset: CrossModalDataset, direction: str, prebuilt: bool):
    """``data.roles``, except that a dataset of prebuilt models may lack the teacher side."""
    if prebuilt:
        t, s = DIRECTIONS[direction] if direction in DIRECTIONS else direction.split("2", 1)
        if t not in dataset.modalities and s in dataset.modalities:
            return None, dataset.modalities[s]
    return roles(dataset, direction)


def run_experiment(cfg: ExperimentConfig, dataset: Optional[CrossModalDataset] = None, *,
                   out_dir: Optional[str] = None, done: Iterable[tuple] = (),
                   on_run: Optional[Callable[[StudentRun], None]] = None, progress: bool = True,
                   models: Optional[tuple] = None, teacher_variables=None, mesh="auto",
                   teacher_cache: Optional[str] = None) -> List[StudentRun]:
    """Run every (direction, seed, method) of ``cfg``.

    Per seed: the train splits are subsampled (``cfg.subsample``), the teacher is pre-trained
    (or restored) on its modality's train split, and the distillation pools of the regime
    ``cfg.unpaired`` are drawn; every method of that seed shares them (``ucmkd_jax.protocol``).

    Args:
      dataset: a ``CrossModalDataset``; loaded from ``cfg.dataset`` when None.
      out_dir: teachers are cached under ``<out_dir>/teachers``, students checkpoint every
        epoch under ``<out_dir>/checkpoints`` (an interrupted run resumes there) and log under
        ``<out_dir>/logs``. None: nothing is written.
      done: (direction, method, seed) triples already finished (skipped: resume).
      on_run: called with each finished ``StudentRun`` (record, history, best variables, the
        seed's data and teacher); its checkpoint is dropped once the call returns.
      models: (teacher, student) ``Model``s to use instead of building them from ``cfg.model``
        (one direction only; the teacher may be None when no method uses it).
      teacher_variables: a trained teacher for ``models`` (used as it is, not pre-trained).
      mesh: a data-parallel device mesh, None (one device) or "auto" (all devices when there
        are several and ``cfg.train.data_parallel``).
      teacher_cache: where pre-trained teachers are cached (default ``<out_dir>/teachers``); runs
        that share it share teachers of equal configuration (``protocol.teacher_cache_dir``).
    Returns the new runs.
    """
    dataset = dataset if dataset is not None else load_experiment_dataset(cfg)
    directions = expand_directions(cfg.direction)
    if models is not None and len(directions) != 1:
        raise ValueError("models= fixes one teacher and one student: use a single direction")
    check_run(cfg, dataset, models, teacher_given=teacher_variables is not None)
    dataset.validate()
    # train splits not in memory: they stream from the shards (fresh frames and flips per epoch)
    streaming = models is None and any(m.train is None for m in dataset.modalities.values())
    labels = None
    if streaming:
        from ucmkd_jax.data.pipeline import train_labels  # imports TensorFlow lazily
        labels = train_labels(cfg.dataset, cfg.data_dir, config=cfg.shard_config)  # the streams' config
    if mesh == "auto":
        mesh = data_mesh() if (cfg.train.data_parallel and jax.device_count() > 1) else None
    done = set(done)
    runs = []
    cache = StepCache()  # compiled steps shared across seeds and methods
    teacher_root = teacher_cache or (os.path.join(out_dir, "teachers") if out_dir else None)
    for direction in directions:
        t_data, s_data = _roles(dataset, direction, prebuilt=models is not None)
        teacher, student = models if models is not None else build_models(cfg, t_data, s_data, dataset.num_classes)
        for model, init_path in ((teacher, cfg.model.teacher_init), (student, cfg.model.student_init)):
            if init_path and model is not None:  # a file that does not fit is refused before any training
                trunk_from_file(model, init_path)
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            todo = [m for m in cfg.methods if (direction, m, seed) not in done]
            if not todo:
                continue
            # Real datasets always pre-train the teacher: its accuracy stands beside every method.
            need_teacher = any(get_method(m).uses_teacher for m in todo) or models is None
            data = prepare_seed(cfg, dataset.name, direction, seed, teacher_data=t_data, student_data=s_data,
                                paired=dataset.paired, teacher_model=teacher, need_teacher=need_teacher,
                                teacher_variables=teacher_variables, teacher_root=teacher_root, labels=labels,
                                cache=cache, mesh=mesh, progress=progress)
            for method in todo:
                run = train_student(cfg, dataset.name, method, student, data, cache=cache, progress=progress,
                                    run_dir=out_dir, mesh=mesh)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
                if run.checkpoint is not None:
                    run.checkpoint.finish()  # the record is safe: drop the resumable state, keep best/
    return runs


TEST_SELECTION_NOTICE = (
    "**Model selection on the TEST split** (`train.model_selection=test`, as the official release): each "
    "student's epoch was chosen by its test accuracy, so the test column is the best test accuracy over "
    "epochs, an optimistic figure; the val column is that same selection accuracy.")


def summarize(records: List[dict], ddof: int = 1) -> str:
    """Markdown table: one row per (direction, method); accuracies in %, mean ± std over seeds
    (std with ``ddof``: 1 the sample std, 0 the release's). A notice heads the table when any
    record selected its epoch on the test split."""
    f = lambda vals: format_mean_std(vals, ddof=ddof)  # noqa: E731
    notice = [TEST_SELECTION_NOTICE, ""] if any(r.get("model_selection") == "test" for r in records) else []
    lines = notice + ["| direction | method | seeds | student val acc (%) | student test acc (%) | teacher test acc (%) "
             "| wall s / run |", "|---|---|---|---|---|---|---|"]
    keys = []
    for r in records:
        if (r["direction"], r["method"]) not in keys:
            keys.append((r["direction"], r["method"]))
    for d, m in keys:
        rs = [r for r in records if r["direction"] == d and r["method"] == m]
        lines.append(f"| {d} | {m} | {len(rs)} | {f([r['val_acc'] for r in rs])} | "
                     f"{f([r['test_acc'] for r in rs])} | "
                     f"{f([r['teacher_test_acc'] for r in rs])} | "
                     f"{np.mean([r['wall_s'] for r in rs]):.1f} |")
    return "\n".join(lines)
