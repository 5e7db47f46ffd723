"""The Python API: distil a student from a teacher of another modality, given plain arrays.

``distill`` is the one entry point: two labelled array datasets (or a trained teacher and the
student's arrays) in, a trained student and its metrics out. The teacher and the student may
have different input shapes and encoders (chosen from the shapes, see ``build_array_model``);
only the latent size is shared, so that the teacher's head can score student features,
p_T(y | phi(x_S)) (paper, Sec. 2.1). ``experiments/run.py --dataset arrays`` runs the same code
over seeds and methods (``run_with_models``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Iterable, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ucmkd_jax.config import ExperimentConfig, ModelConfig, TrainConfig
from ucmkd_jax.data.arrays import DIRECTION, ArraysDataset, make_arrays_dataset
from ucmkd_jax.data.base import CrossModalDataset, ModalityData, Split
from ucmkd_jax.data.streams import eval_batches
from ucmkd_jax.data import regimes
from ucmkd_jax.experiment import pretrain_teacher, run_experiment, train_student
from ucmkd_jax.methods.base import MethodConfig, get_method
from ucmkd_jax.models.model import Model, build_model
from ucmkd_jax.models.resnet import STAGES
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.precision import at_least_f32
from ucmkd_jax.train import evaluate

__all__ = ["distill", "Distilled", "Trained", "ProjectedEncoder", "build_array_model", "build_array_models",
           "default_backbone", "describe_model", "describe_arrays", "arrays_config", "check_run",
           "run_with_models", "DEFAULT_LATENT_DIM"]

DEFAULT_LATENT_DIM = 512  # ResNet-18's pooled width at the paper's width 64
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------------------------- models
class ProjectedEncoder(nn.Module):
    """A trunk followed by a linear map to ``out_dim``: lets a ResNet whose pooled width is not
    the shared latent size (e.g. ResNet-50's 2048, or a narrow test network) feed a common
    latent space. Stages, when asked for, are the trunk's."""

    trunk: nn.Module
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False):
        z, stages = self.trunk(x, train, return_stages=True)
        z = at_least_f32(nn.Dense(self.out_dim, dtype=self.dtype, name="projection")(z))
        return (z, stages) if return_stages else z


def default_backbone(kind: str, resnet: str = "resnet18") -> str:
    """"mlp" for vectors, ``resnet`` for images, spectrograms and frame stacks."""
    return "mlp" if kind == "vector" else resnet


def build_array_model(kind: str, sample_shape, num_classes: int, *, backbone: str = "auto", resnet: str = "resnet18",
                      width: int = 64, latent_dim: int = DEFAULT_LATENT_DIM, mlp_depth: int = 2, stem: str = "auto",
                      dtype: str = "float32", name: str = "model") -> Model:
    """One side's classifier, chosen from its data's kind.

    vector (N, D): an MLP (``mlp_depth`` Dense+BN+ReLU layers, hidden ``max(4 * width, 8)``)
    ending at ``latent_dim``. image / spectrogram (N, H, W, C) and video (N, T, H, W, C): a
    ResNet (18, 34 or 50) of first-stage width ``width``; ``stem="auto"`` uses the ImageNet stem
    (7x7 stride-2 conv + max-pool) when min(H, W) >= 64 and the small-input stem (3x3 stride-1,
    no pool) below; frames are encoded one by one and averaged. A ResNet whose pooled width
    (8 * width for ResNet-18/34, 32 * width for ResNet-50) is not ``latent_dim`` gets a linear
    projection to it (``ProjectedEncoder``). ``backbone="auto"``: mlp for vectors, ``resnet``
    for the rest.
    """
    backbone = default_backbone(kind, resnet) if backbone in (None, "auto") else backbone
    if kind == "vector" and backbone != "mlp":
        raise ValueError(f"{name}: {backbone} cannot encode (N, D) vectors: use the mlp backbone "
                         f"(the default for vectors)")
    if kind != "vector" and backbone == "mlp":
        raise ValueError(f"{name}: the mlp backbone takes (N, D) vectors, not {kind} inputs of per-sample "
                         f"shape {tuple(sample_shape)}: use {', '.join(STAGES)}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if latent_dim < 1 or width < 1 or mlp_depth < 1:
        raise ValueError(f"latent_dim, width and mlp_depth must be >= 1, got {latent_dim}, {width}, {mlp_depth}")
    jdtype = _DTYPES[dtype]
    model = build_model(kind, sample_shape, num_classes, backbone=backbone, width=width, stem=stem, dtype=jdtype,
                        latent_dim=latent_dim if kind == "vector" else None, mlp_depth=mlp_depth, name=name)
    if model.latent_dim != latent_dim:
        model = dataclasses.replace(model, encoder=ProjectedEncoder(model.encoder, latent_dim, jdtype))
    return model


def build_array_models(dataset: CrossModalDataset, *, teacher_backbone: str = "auto", student_backbone: str = "auto",
                       **kw) -> Tuple[Optional[Model], Model]:
    """(teacher, student) for an arrays dataset (teacher None when the dataset has no teacher
    side); ``kw``: ``build_array_model``'s resnet, width, latent_dim, mlp_depth, stem, dtype."""
    out = []
    for role, backbone in (("teacher", teacher_backbone), ("student", student_backbone)):
        data = dataset.modalities.get(role)
        out.append(None if data is None else build_array_model(
            data.modality, data.sample_shape, dataset.num_classes, backbone=backbone, name=role, **kw))
    return tuple(out)


def describe_model(model: Model) -> dict:
    """JSON-ready summary: kind, per-sample shape, encoder, stem, latent size."""
    enc = model.encoder
    trunk = enc.trunk if isinstance(enc, ProjectedEncoder) else enc
    info = {"kind": model.modality, "sample_shape": list(model.input_shape), "latent_dim": model.latent_dim,
            "projection": isinstance(enc, ProjectedEncoder)}
    if hasattr(trunk, "stage_sizes"):
        name = next((k for k, (s, b) in STAGES.items() if tuple(s) == tuple(trunk.stage_sizes) and b == trunk.block),
                    "resnet")
        info.update(backbone=name, width=trunk.width, stem=trunk.stem)
    else:
        info.update(backbone="mlp", hidden=trunk.hidden, depth=trunk.depth)
    return info


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_arrays(dataset: ArraysDataset, teacher: Optional[Model], student: Model) -> dict:
    """What a run on arrays used, for its config.json: files (path, sha256), K, per side the
    kind, split sizes and model, and the loader's notices. A rerun on changed files or models
    then no longer matches, so it is not resumed."""
    out = {"num_classes": dataset.num_classes, "notices": list(dataset.notices)}
    for role, model in (("teacher", teacher), ("student", student)):
        data = dataset.modalities.get(role)
        if data is None:
            continue
        path = dataset.sources.get(role)
        out[role] = {"file": os.path.abspath(path) if path else None, "sha256": _sha256(path) if path else None,
                     "sizes": {s: (len(getattr(data, s)) if getattr(data, s) is not None else 0)
                               for s in ("train", "val", "test")},
                     "model": describe_model(model)}
    return out


# ---------------------------------------------------------------------------------- runs
def arrays_config(**overrides) -> ExperimentConfig:
    """The arrays preset: Table 12 (ResNet-18 width 64, batch 64, 100 + 100 epochs, SGD lr 1e-2,
    5 seeds), direction ``teacher2student``, unpaired."""
    return dataclasses.replace(ExperimentConfig(), dataset="arrays", direction=DIRECTION, **overrides)


def check_run(cfg: ExperimentConfig, dataset: CrossModalDataset, teacher: Optional[Model], student: Model,
              methods: Iterable[str], train_teacher: bool = True) -> None:
    """Everything that can be refused before compiling: methods, regime, batch sizes, shapes."""
    if cfg.unpaired == "paired":
        raise ValueError("array datasets are unpaired: the paired regime is impossible (use --unpaired "
                         "easy, medium or hard)")
    s_data = dataset.modalities["student"]
    uses_teacher = False
    for m in methods:
        spec = get_method(m)
        if spec.needs_paired:
            raise ValueError(f"method {m!r} needs paired samples (the teacher sees each student sample's partner); "
                             f"the two array datasets are unpaired: drop it from the methods")
        uses_teacher |= spec.uses_teacher
    bs = cfg.train.batch_size
    if len(s_data.train) < bs:
        raise ValueError(f"the student train split has {len(s_data.train)} samples, fewer than one batch of {bs}: "
                         f"lower the batch size")
    student.check_input(s_data.train.x[:1])
    if uses_teacher:
        t_data = dataset.modalities.get("teacher")
        if teacher is None or t_data is None:
            raise ValueError("a method that uses the teacher needs the teacher's data (teacher-modality batches)")
        if train_teacher and len(t_data.train) < bs:
            raise ValueError(f"the teacher train split has {len(t_data.train)} samples, fewer than one batch of "
                             f"{bs}: lower the batch size")
        if tuple(teacher.input_shape) != t_data.sample_shape:
            raise ValueError(f"the teacher was built for per-sample shape {tuple(teacher.input_shape)} but the "
                             f"teacher data has {t_data.sample_shape}")
        if teacher.num_classes != dataset.num_classes:
            raise ValueError(f"the teacher has {teacher.num_classes} classes but the data has K = {dataset.num_classes}")
        if teacher.latent_dim != student.latent_dim:
            raise ValueError(f"the teacher's latent size {teacher.latent_dim} differs from the student's "
                             f"{student.latent_dim}: the teacher head must score student features")


def run_with_models(cfg: ExperimentConfig, dataset: CrossModalDataset, teacher: Optional[Model], student: Model, *,
                    out_dir: Optional[str] = None, done: Iterable[tuple] = (),
                    on_record: Optional[Callable[[dict, list], None]] = None, progress: bool = True) -> List[dict]:
    """``run_experiment`` for an arrays dataset whose two sides have their own, prebuilt models:
    every (seed, method) of ``cfg``, one teacher pre-trained per seed (cached under
    ``<out_dir>/teachers/teacher2student/<key>``), the regime and subsample of ``cfg`` applied.
    Returns the new records (``run_experiment``'s fields)."""
    check_run(cfg, dataset, teacher, student, cfg.methods)
    return run_experiment(dataclasses.replace(cfg, direction=DIRECTION), dataset, out_dir=out_dir, done=done,
                          on_record=on_record, progress=progress, models=(teacher, student))


# ---------------------------------------------------------------------------------- API
@dataclasses.dataclass
class Trained:
    """A trained classifier: its ``Model`` and variables (``{"params", "batch_stats"}``)."""

    model: Model
    variables: Any

    def __post_init__(self):
        self._logits_fn = None

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Logits (N, K) of ``x`` (N, *sample_shape), in inference mode."""
        x = np.asarray(x, np.float32)
        self.model.check_input(x)
        if self._logits_fn is None:
            model = self.model
            self._logits_fn = jax.jit(lambda v, xb: model.apply(v, xb, train=False)[0])
        out = [np.asarray(self._logits_fn(self.variables, xb))[mask]
               for xb, _, mask in eval_batches(Split(x, np.zeros(len(x), np.int32)), batch_size)]
        return np.concatenate(out)

    def evaluate(self, x, y, batch_size: int = 256) -> dict:
        """{"acc", "ce", "n"} on labelled arrays."""
        return evaluate(self.model, self.variables, Split(np.asarray(x, np.float32), np.asarray(y)), batch_size)


@dataclasses.dataclass
class Distilled:
    """What ``distill`` returns.

    student: the trained student (best epoch by validation accuracy).
    teacher: the teacher it learnt from (None for methods without one); pass it back as
      ``distill(teacher=result.teacher, ...)`` to reuse it.
    metrics: val_acc, test_acc (None without a student test split), test_ce, teacher_val_acc,
      teacher_test_acc, best_epoch, epochs, wall_s, method, seed, num_classes, notices.
    history: one dict per epoch (val_acc, val_ce, train losses).
    """

    student: Trained
    teacher: Optional[Trained]
    metrics: dict
    history: List[dict]


def _as_trained(teacher) -> Trained:
    if isinstance(teacher, Trained):
        t = teacher
    elif isinstance(teacher, Distilled):
        raise TypeError("teacher=: pass a Trained, e.g. result.student of a distill(method='ce', ...) on the "
                        "teacher's data, or result.teacher of an earlier distill")
    elif isinstance(teacher, (tuple, list)) and len(teacher) == 2 and isinstance(teacher[0], Model):
        t = Trained(teacher[0], teacher[1])
    else:
        raise TypeError(f"teacher=: expected a Trained or a (Model, variables) pair, got {type(teacher).__name__}; "
                        f"a bare apply function is not enough: the step needs the encoder and the head apart")
    if t.model.name != "teacher":
        t = Trained(dataclasses.replace(t.model, name="teacher"), t.variables)
    return t


def distill(teacher=None, student_data=None, teacher_data=None, method: str = "ucmkd", *,
            num_classes: Optional[int] = None, teacher_backbone: str = "auto", student_backbone: str = "auto",
            width: int = 64, latent_dim: Optional[int] = None, mlp_depth: int = 2, stem: str = "auto",
            dtype: str = "float32", epochs: int = 100, teacher_epochs: int = 100, batch_size: int = 64,
            eval_batch_size: int = 256, lr: Optional[float] = None, optim: Optional[OptimConfig] = None,
            method_config: Optional[MethodConfig] = None, seed: int = 0, val_fraction: float = 0.1,
            unpaired: str = "easy", subsample: float = 1.0,
            progress: bool = True, log: Optional[Callable[[str], None]] = print) -> Distilled:
    """Distil a student of one modality from a teacher of another, without paired samples.

    The teacher (pre-trained here with cross-entropy on ``teacher_data`` unless given) is frozen;
    each student step sees a labelled student batch and an independently drawn batch of
    teacher-modality inputs (their labels are not used by ``ucmkd``). Model selection uses the
    student's validation split; its test split, if any, is reported apart.

    Args:
      teacher: None (train one on ``teacher_data``), a ``Trained`` (e.g. ``result.teacher`` of an
        earlier call, or ``result.student`` of ``distill(method="ce", student_data=T)``) or a
        ``(Model, variables)`` pair.
      student_data, teacher_data: each a dict (or ``.npz`` path) with ``x_train, y_train`` and
        optionally ``x_val, y_val, x_test, y_test``, an ``(x, y)`` pair, a ``Split`` or a
        ``ModalityData``. x is (N, D) vectors, (N, H, W, C) images/spectrograms or
        (N, T, H, W, C) frame stacks; y holds integers 0..K-1, the same K on both sides. A
        missing validation split is carved from train (stratified, seeded). ``teacher_data``
        is needed by every method that uses the teacher, even with a trained ``teacher``.
      method: a registered method name: "ucmkd" (default), "ce", "feature_kd", "sumall",
        "ucmkd_fa_only", "ucmkd_la_only".
      num_classes: K, if a class may be absent from one side (default: 1 + the largest label).
      teacher_backbone, student_backbone: "auto" (mlp for vectors, resnet18 otherwise), "mlp",
        "resnet18", "resnet34", "resnet50".
      width: first-stage ResNet channels (64 = the paper); MLP hidden size is 4 * width.
      latent_dim: the shared latent size (default 512, or the given teacher's).
      mlp_depth, stem, dtype: see ``build_array_model``.
      epochs, teacher_epochs, batch_size, eval_batch_size, lr: training (Table 12 defaults);
        ``optim`` / ``method_config`` override the optimiser and the method's hyperparameters.
      seed: initialisation and batch order (the validation carve-out always uses seed 0).
      unpaired: the distillation regime (``ucmkd_jax.data.regimes``): "easy" (default), "medium"
        or "hard" ("paired" is impossible: array datasets are separate collections).
      subsample: fraction of each train split kept, stratified (validation and test stay whole).
      log: receives the loader's notices (``print``; None: silent).
    Returns:
      ``Distilled(student, teacher, metrics, history)``.
    Raises:
      ValueError for bad inputs, before anything is compiled.

    Example (vectors to vectors, seconds on a CPU; images and frame stacks work the same way)::

        import numpy as np
        import ucmkd_jax

        rng = np.random.default_rng(0)
        means = rng.normal(size=(3, 8))                       # 3 classes share a latent cause

        def side(n, dim, noise):                              # one modality: its own projection
            proj = rng.normal(size=(8, dim))
            def draw(m):
                y = rng.integers(0, 3, m)
                return ((means[y] + 0.5 * rng.normal(size=(m, 8))) @ proj
                        + noise * rng.normal(size=(m, dim))).astype("float32"), y
            (xt, yt), (xv, yv), (xs, ys) = draw(n), draw(n // 4), draw(n // 4)
            return {"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv, "x_test": xs, "y_test": ys}

        teacher_data = side(512, 32, noise=0.5)               # e.g. audio features, (N, 32)
        student_data = side(256, 12, noise=2.0)               # e.g. sensor features, (N, 12), unpaired
        result = ucmkd_jax.distill(teacher_data=teacher_data, student_data=student_data,
                                   method="ucmkd", width=8, latent_dim=32, epochs=5,
                                   teacher_epochs=5, batch_size=32, lr=0.05, progress=False)
        print(result.metrics["test_acc"], result.metrics["teacher_test_acc"])
        logits = result.student.predict(student_data["x_test"])    # (64, 3)
        again = ucmkd_jax.distill(teacher=result.teacher, teacher_data=teacher_data,
                                  student_data=student_data, epochs=5, width=8, batch_size=32,
                                  lr=0.05, seed=1, progress=False)   # reuse the trained teacher
    """
    spec = get_method(method)  # an unknown name fails here
    if student_data is None:
        raise TypeError("distill() needs student_data")
    t_given = _as_trained(teacher) if teacher is not None else None
    if spec.uses_teacher and teacher_data is None:
        raise ValueError(f"method {method!r} draws batches of teacher-modality inputs: pass teacher_data (the "
                         f"teacher's own labelled arrays; they are never paired with the student's)")
    if num_classes is None and t_given is not None:
        num_classes = t_given.model.num_classes
    data: ArraysDataset = make_arrays_dataset(teacher_data if spec.uses_teacher else None, student_data,
                                              num_classes=num_classes, val_fraction=val_fraction, log=log)
    if t_given is not None:
        if latent_dim is not None and latent_dim != t_given.model.latent_dim:
            raise ValueError(f"latent_dim={latent_dim} but the given teacher's latent size is "
                             f"{t_given.model.latent_dim}: the student must share it")
        latent_dim = t_given.model.latent_dim
    latent_dim = DEFAULT_LATENT_DIM if latent_dim is None else latent_dim
    kw = dict(width=width, latent_dim=latent_dim, mlp_depth=mlp_depth, stem=stem, dtype=dtype)
    t_model, s_model = build_array_models(data, teacher_backbone=teacher_backbone,
                                          student_backbone=student_backbone, **kw)
    if t_given is not None:
        t_model = t_given.model
    optim = optim or OptimConfig()
    if lr is not None:
        optim = dataclasses.replace(optim, lr=lr)
    cfg = arrays_config(methods=(method,), seeds=1, first_seed=seed, unpaired=unpaired, subsample=subsample,
                        model=ModelConfig(width=width, stem=stem, dtype=dtype),
                        train=TrainConfig(epochs=epochs, teacher_epochs=teacher_epochs, batch_size=batch_size,
                                          eval_batch_size=eval_batch_size),
                        optim=optim, method=method_config or MethodConfig())
    t_data, s_data = data.modalities.get("teacher"), data.modalities["student"]
    t_data, s_data, _ = regimes.subsample(t_data, s_data, cfg.subsample, seed, paired=False)
    data = dataclasses.replace(data, modalities={**data.modalities, "student": s_data,
                                                  **({"teacher": t_data} if t_data is not None else {})})
    check_run(cfg, data, t_model, s_model, (method,), train_teacher=t_given is None)

    compiled, t_vars, t_info = {}, None, {}
    if spec.uses_teacher:
        if t_given is None:
            t_vars, t_info = pretrain_teacher(cfg, t_model, t_data, seed, None, progress,
                                              desc=f"teacher {t_data.modality} seed {seed}", compiled=compiled)
        else:
            t_vars = t_given.variables
            t_info = {"teacher_val_acc": evaluate(t_model, t_vars, t_data.val, eval_batch_size)["acc"]}
            if t_data.test is not None:
                t_info["teacher_test_acc"] = evaluate(t_model, t_vars, t_data.test, eval_batch_size)["acc"]
    t_pool, s_pool, _ = regimes.distillation_pools(t_data.train if spec.uses_teacher else None, s_data.train, cfg.unpaired,
                                           seed, paired=False, noise=cfg.regime_noise, imbalance=cfg.regime_imbalance)
    s_run = ModalityData(s_data.modality, s_pool, s_data.val, s_data.test)
    record, result, _ = train_student(cfg, data.name, DIRECTION, method, seed, s_model, s_run, t_model, t_vars,
                                      t_pool, t_info, compiled=compiled, progress=progress)
    record.update(num_classes=data.num_classes, notices=list(data.notices))
    return Distilled(student=Trained(s_model, result.variables),
                     teacher=Trained(t_model, t_vars) if spec.uses_teacher else t_given,
                     metrics=record, history=result.history)
