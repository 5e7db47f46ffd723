"""The Python API: distil a student from a teacher of another modality, given plain arrays.

``distill`` is the one entry point: two labelled array datasets (or a trained teacher and the
student's arrays) in, a trained student and its metrics out. The teacher and the student may
have different input shapes and encoders (chosen from the shapes, ``ucmkd_jax.models.build_model``);
only the latent size is shared, so that the teacher's head can score student features,
p_T(y | phi(x_S)) (paper, Sec. 2.1). It runs the same protocol as
``experiments/run.py --dataset arrays`` (``ucmkd_jax.experiment.run_experiment``) for one seed
and one method.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional

import jax
import numpy as np

from ucmkd_jax.config import PRESETS, ModelConfig, TrainConfig
from ucmkd_jax.data.arrays import ArraysDataset, make_arrays_dataset
from ucmkd_jax.data.base import Split
from ucmkd_jax.data.streams import eval_batches
from ucmkd_jax.experiment import build_models, run_experiment
from ucmkd_jax.methods.base import MethodConfig, get_method
from ucmkd_jax.models import DEFAULT_LATENT_DIM, Model
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.train import evaluate

__all__ = ["distill", "Distilled", "Trained"]


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
            unpaired: str = "easy", subsample: float = 1.0, teacher_init: Optional[str] = None,
            student_init: Optional[str] = None, model_options: Optional[dict] = None,
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
      method: a registered method name that needs no paired samples: "ucmkd" (default), "ce",
        "feature_kd", "sumall", "ucmkd_fa_only", "ucmkd_la_only", "reviewkd", "norm" (the last two
        with ResNet encoders: they distil feature maps).
      num_classes: K, if a class may be absent from one side (default: 1 + the largest label).
      teacher_backbone, student_backbone: "auto" (mlp for vectors, resnet18 otherwise) or a name
        in ``ucmkd_jax.models.BACKBONES`` ("mlp", "resnet10", "resnet18", "resnet34", "resnet50", "vit_s16",
        "vit_b16", "vit_l16").
      width: first-stage ResNet channels (64 = the paper); MLP hidden size is 4 * width.
      latent_dim: the shared latent size (default 512, or the given teacher's).
      mlp_depth, stem, dtype: see ``ucmkd_jax.models.build_model``.
      epochs, teacher_epochs, batch_size, eval_batch_size, lr: training (Table 12 defaults);
        ``optim`` / ``method_config`` override the optimiser and the method's hyperparameters.
      seed: initialisation and batch order (the validation carve-out always uses seed 0).
      unpaired: the distillation regime (``ucmkd_jax.data.regimes``): "easy" (default), "medium"
        or "hard" ("paired" is impossible: array datasets are separate collections).
      subsample: fraction of each train split kept, stratified (validation and test stay whole).
      teacher_init, student_init: ViT checkpoint files (torchvision ``.pth``, timm ``.pth`` /
        ``.safetensors``) the encoders start from (``ucmkd_jax.models.pretrained``); the teacher
        is then pre-trained from there (unless given).
      model_options: further ``ucmkd_jax.config.ModelConfig`` fields, e.g. ``{"vit_depth": 2,
        "projection": "linear_bn_relu", "video_frames": "mean_pixels"}``.
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
    optim = optim or OptimConfig()
    if lr is not None:
        optim = dataclasses.replace(optim, lr=lr)
    model = ModelConfig(teacher_backbone=teacher_backbone, student_backbone=student_backbone, width=width, stem=stem,
                        dtype=dtype, latent_dim=DEFAULT_LATENT_DIM if latent_dim is None else latent_dim,
                        mlp_depth=mlp_depth, teacher_init=teacher_init, student_init=student_init,
                        **(model_options or {}))
    cfg = dataclasses.replace(
        PRESETS["arrays"], methods=(method,), seeds=1, first_seed=seed, unpaired=unpaired, subsample=subsample,
        model=model, train=TrainConfig(epochs=epochs, teacher_epochs=teacher_epochs, batch_size=batch_size,
                                       eval_batch_size=eval_batch_size),
        optim=optim, method=method_config or PRESETS["arrays"].method)
    t_model, s_model = build_models(cfg, data.modalities.get("teacher"), data.modalities["student"],
                                    data.num_classes)
    if t_given is not None:
        t_model = t_given.model
    run, = run_experiment(cfg, data, progress=progress, models=(t_model, s_model), mesh=None,
                          teacher_variables=t_given.variables if t_given is not None else None)
    record = dict(run.record, num_classes=data.num_classes, notices=list(data.notices))
    t_vars = run.seed_data.teacher_variables
    return Distilled(student=Trained(s_model, run.result.variables),
                     teacher=Trained(t_model, t_vars) if spec.uses_teacher else t_given,
                     metrics=record, history=run.history)
