"""Typed configuration: one ``ExperimentConfig`` per run, with a preset per dataset (Table 12).

Run commands, one per preset:

    python experiments/run.py                                   # synthetic (the CPU demo)
    python experiments/run.py --dataset crema_d --data-dir DIR  # CREMA-D, Table 12
    python experiments/run.py --dataset ravdess --data-dir DIR
    python experiments/run.py --dataset ave --data-dir DIR
    python experiments/run.py --dataset vggsound --data-dir DIR
    python experiments/run.py --dataset arrays --teacher-data T.npz --student-data S.npz

Every field can be overridden from the command line, by its dotted path
(``--set method.fa.epsilon=0.05``, ``ucmkd_jax.overrides``) or by a short alias for the common
ones (``--epsilon 0.05``); ``python experiments/run.py --list-config`` prints every path with its
type and value. Values are checked where the config is made (``__post_init__``), so Python use
gets the same checks. The resolved config is written next to the results (``config.json``).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Literal, Optional, Tuple

from ucmkd_jax.data.arrays import DIRECTION as ARRAYS
from ucmkd_jax.methods.baselines import BaselineConfig
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.overrides import ConfigError, bounded, choice_field, validate

__all__ = ["ModelConfig", "TrainConfig", "ExperimentConfig", "PRESETS", "get_preset", "to_dict", "ARRAYS_DIRECTION",
           "DIRECTIONS"]

ARRAYS_DIRECTION = ARRAYS  # --dataset arrays: the two .npz files say who teaches
DIRECTIONS = ("a2v", "v2a", "both", ARRAYS_DIRECTION)


def _backbones(auto: bool):
    def choices():
        from ucmkd_jax.models.build import BACKBONES
        return (("auto",) if auto else ()) + tuple(BACKBONES)
    return choices


def _methods():
    from ucmkd_jax.methods import METHODS
    return tuple(METHODS)


def _datasets():
    from ucmkd_jax.data import DATASETS
    return tuple(DATASETS) + ("arrays",)


def _regimes():
    from ucmkd_jax.data.regimes import REGIMES
    return REGIMES


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoders of the teacher and the student (``ucmkd_jax.models.build_model``).

    backbone: the encoder of image-like inputs on both sides (ResNet-18 in the paper);
      ``teacher_backbone`` / ``student_backbone`` override it per side ("auto": ``backbone``,
      or an MLP for (N, D) vectors). ViTs: vit_s16, vit_b16, vit_l16 (``ucmkd_jax.models.vit``).
    width: first-stage ResNet channels (64 = the paper; MLP hidden = 4 * width); a ViT's head
      width (64 = the standard ViT-S/B/L).
    stem: "auto" (small 3x3 stem below 64 px), "imagenet" or "small".
    stem_impl, pool_impl, conv_impl: how a ResNet's imagenet stem convolution, its max-pool and
      its blocks' convolutions are computed (``ucmkd_jax.models.ops``: the same function and
      parameters whichever; "auto": the one measured faster on the platform at hand,
      ``ops.AUTO``; "conv" / "reduce_window" / "conv": the plain ops).
    dtype: compute dtype (parameters stay float32).
    latent_dim: the latent size both sides share (None: the encoders' own, 8 * width for
      ResNet-18, or the teacher's where the two differ); a side whose encoder ends elsewhere
      gets a projection (``projection``).
    mlp_depth: layers of the MLP encoder of vectors.
    projection: "linear", or "linear_bn_relu" (the authors' ViT release: ViT-S's CLS token to
      the teacher's width by Linear -> BatchNorm1d -> ReLU).
    video_frames: "per_frame" (each frame encoded, features averaged) or "mean_pixels" (the
      frames averaged in pixel space before one pass: the authors' ViT release), or "release"
      (what the release does for the backbone: mean_pixels for a ViT, per_frame for a ResNet).
    bn_running_var: the BatchNorm running-variance update of a train-mode forward, with the
      batch's "biased" variance (Flax) or the "unbiased" one (PyTorch, the release).
    vit_depth: blocks of every ViT (None: 12 for S and B, 24 for L; tests shrink it).
    vit_remat: recompute each ViT block in the backward pass (``jax.checkpoint``): less memory.
    vit_attention: "auto" (cuDNN's fused kernel on a GPU in bfloat16, else XLA's), "xla" or
      "cudnn"; a student that an unrolled hypergradient differentiates twice always gets "xla".
    vit_audio_size: (H, W) spectrograms are resized to (bilinear) before a ViT (the release:
      256,1024 for 257 x 1004); None: the nearest multiples of 16.
    teacher_init, student_init: ViT checkpoint files (torchvision ``.pth`` or timm ``.pth`` /
      ``.safetensors``) the encoder trunk starts from (``ucmkd_jax.models.pretrained``); the
      teacher then pre-trains from it, the student distils from it. None: random init.
    """

    backbone: str = choice_field("resnet18", _backbones(auto=False))
    teacher_backbone: str = choice_field("auto", _backbones(auto=True))
    student_backbone: str = choice_field("auto", _backbones(auto=True))
    width: int = bounded(64, ge=1)
    stem: Literal["auto", "imagenet", "small"] = "auto"
    stem_impl: Literal["auto", "conv", "conv_pad8", "space_to_depth", "space_to_depth_pad8",
                       "space_to_depth_fwd"] = "auto"
    pool_impl: Literal["auto", "reduce_window", "masked"] = "auto"
    conv_impl: Literal["auto", "conv", "patches_when_small"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    latent_dim: Optional[int] = bounded(None, ge=1)
    mlp_depth: int = bounded(2, ge=1)
    projection: Literal["linear", "linear_bn_relu"] = "linear"
    video_frames: Literal["per_frame", "mean_pixels", "release"] = "per_frame"
    bn_running_var: Literal["biased", "unbiased"] = "biased"
    vit_depth: Optional[int] = bounded(None, ge=1)
    vit_remat: bool = False
    vit_attention: Literal["auto", "xla", "cudnn"] = "auto"
    vit_audio_size: Optional[Tuple[int, ...]] = None
    teacher_init: Optional[str] = None
    student_init: Optional[str] = None

    def __post_init__(self):
        validate(self)
        size = self.vit_audio_size
        if size is not None and (len(size) != 2 or any(s < 16 or s % 16 for s in size)):
            raise ConfigError(f"ModelConfig.vit_audio_size must be H,W, multiples of 16; got {size!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """epochs: student epochs; teacher_epochs: teacher pre-training epochs (CE on its own
    modality; 0 distils an untrained teacher, refused unless ``allow_untrained_teacher``: an
    ablation, never a default); eval_batch_size: evaluation batch (padded, so one compiled
    shape); log_every: steps between progress-bar updates (each a small host sync);
    data_parallel: with more than one device, shard every batch over all of them
    (``ucmkd_jax.parallel``; batch sizes must divide by the device count); precise_bn: before
    every evaluation, recompute the BatchNorm statistics over this many training batches
    (``ucmkd_jax.precise_bn``; capped at one epoch's; 0: evaluate with the running averages).
    20 batches (1280 samples at batch 64) put the standard error of a channel's mean below 3 %
    of its standard deviation, for a forward-only pass over at most a fifth of a CREMA-D epoch.
    model_selection: the split a student's best epoch is chosen on: "val" (carved from train)
    or "test" (the release, which passes its test loader as validation: the reported test
    accuracy is then the best over epochs, an optimistic figure; results.md says so);
    selection_ties: which epoch wins a tie in accuracy, "earlier" or "later" (the release: >=).
    baseline_bn: "train" (BatchNorm in training mode throughout) or "frozen_after_first_eval":
    the release's single-level baselines (``ucmkd_jax.fidelity.FROZEN_BN_BASELINES``) train with
    eval-mode BatchNorm from their second epoch on (its evaluate() switches the net to eval mode
    and nothing switches it back); the bilevel methods are not affected.
    teacher_recipe: how the teacher is pre-trained: "student" (the students' optimiser, schedule
    and clipping) or "release" (SGD momentum 0.9 at ``optim.lr``, the poly schedule of
    ``ucmkd_jax.optim.poly_schedule``, no clipping, no weight decay); either way it is selected on
    ``model_selection``'s split (strictly better epochs only).
    teacher_stop_acc: stop pre-training once the best selection accuracy reaches this fraction
    (the release: 0.70); None: train all ``teacher_epochs``.
    shared_teacher: one teacher for all seeds (the release's: pre-trained once, with the first
    seed's init and batch order) instead of one per seed; needs ``subsample`` = 1.
    last_batch: "drop" (every step sees ``batch_size`` rows: one compiled shape) or "keep" (the
    release's DataLoader: an epoch ends with a partial batch of ``n % batch_size`` rows, a second
    compiled shape; on a multi-device mesh that remainder must divide by the device count, and
    a multi-process run refuses a remainder)."""

    epochs: int = bounded(100, ge=1, why="0 epochs would report an untrained student")
    teacher_epochs: int = bounded(100, ge=0)
    batch_size: int = bounded(64, ge=1)
    eval_batch_size: int = bounded(256, ge=1)
    log_every: int = bounded(10, ge=1)
    data_parallel: bool = True
    allow_untrained_teacher: bool = False
    precise_bn: int = bounded(20, ge=0, why="training batches; 0 turns precise BatchNorm off")
    model_selection: Literal["val", "test"] = "val"
    selection_ties: Literal["earlier", "later"] = "earlier"
    baseline_bn: Literal["train", "frozen_after_first_eval"] = "train"
    teacher_recipe: Literal["student", "release"] = "student"
    teacher_stop_acc: Optional[float] = bounded(None, gt=0.0, le=1.0)
    shared_teacher: bool = False
    last_batch: Literal["drop", "keep"] = "drop"

    def __post_init__(self):
        validate(self)
        if self.teacher_epochs == 0 and not self.allow_untrained_teacher:
            raise ConfigError("teacher_epochs=0 would distil from an untrained teacher (its random init); if that "
                              "is the ablation you want, also set train.allow_untrained_teacher=true")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a dataset, a direction, methods x seeds.

    dataset: a registered dataset (``ucmkd_jax.data.DATASETS``) or "arrays" (two ``.npz`` files,
      ``teacher_data`` and ``student_data``, labels 0..K-1 on both; ``num_classes`` K when a
      class is absent from one side).
    data_dir: prepared TFRecord shards (real datasets).
    shard_config: which prepared config under ``<data_dir>/<dataset>/`` to read (e.g. "authors_raw",
      written by ``data_prep/prepare.py --split authors --short-side 0``); None: the only one,
      else the dataset's default (crema_d: speaker).
    direction: "a2v" (audio teacher, video student), "v2a", "both"; "teacher2student" for arrays.
    unpaired: the data regime of distillation (``ucmkd_jax.data.regimes``): "easy" (independent
      teacher stream over the same pool: the paper's main setting), "medium" (disjoint pools),
      "hard" (disjoint pools + teacher-side noise and label imbalance; ``regime_noise``,
      ``regime_imbalance``) or "paired" (partner batches: vanilla_kd and the paired table).
    subsample: fraction of each train split kept (Tables 3-5); validation and test stay whole.
    streaming: real datasets only: train batches stream from the shards (``data.pipeline``: fresh
      random frames and flips every epoch, as the protocol) instead of arrays loaded once.
    image_size: video crop side S in pixels (224 in the protocol).
    video_crop: how a stored frame becomes S x S (docs/protocol.md row 11): "resize_crop" (shorter
      side resized to round(S * 256 / 224), then the centre S x S: 87.5 % of the height) or
      "center_crop" (the centre S x S of the frame as stored, no resize: the release's
      ``CenterCrop(224)`` of 480 x 360 frames, 62 % of the height; needs shards prepared with
      ``--short-side 0``, a smaller stored frame is refused when the data are opened).
    video_flip: the random horizontal flip of a training clip's frames: "clip" (one coin for its
      T frames) or "frame" (a coin per frame, the release); streaming only (the in-memory train
      split is not flipped).
    protocol: the preset of fidelity settings laid over the dataset's (``ucmkd_jax.fidelity``):
      "clean" (this project's corrected protocol) or "authors" (the official release's
      computations); set by ``--protocol`` / ``fidelity.apply_protocol``, which also set each
      field the protocol decides; fields set after it mix the two.
    std_ddof: the delta degrees of freedom of the std over seeds in results tables (1: the
      sample std; 0: numpy's default, the release's).
    """

    dataset: str = choice_field("synthetic", _datasets)
    data_dir: Optional[str] = None
    shard_config: Optional[str] = None
    teacher_data: Optional[str] = None
    student_data: Optional[str] = None
    num_classes: Optional[int] = bounded(None, ge=2)
    direction: str = choice_field("a2v", lambda: DIRECTIONS)
    methods: Tuple[str, ...] = choice_field(("ce", "feature_kd", "ucmkd"), _methods)
    seeds: int = bounded(5, ge=1)
    first_seed: int = bounded(0, ge=0)
    unpaired: str = choice_field("easy", _regimes)
    subsample: float = bounded(1.0, gt=0.0, le=1.0)
    regime_noise: float = bounded(0.5, ge=0.0)
    regime_imbalance: float = bounded(10.0, ge=1.0)
    streaming: bool = False
    image_size: int = bounded(224, ge=1)
    video_crop: Literal["resize_crop", "center_crop"] = "resize_crop"
    video_flip: Literal["clip", "frame"] = "clip"
    protocol: Literal["clean", "authors"] = "clean"
    std_ddof: int = bounded(1, ge=0, le=1)
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    method: BaselineConfig = BaselineConfig()

    def __post_init__(self):
        validate(self)
        if not self.methods:
            raise ConfigError("methods is empty: name at least one (e.g. --methods ce,ucmkd)")
        arrays = self.dataset == "arrays"
        given = [f for f in ("teacher_data", "student_data", "num_classes") if getattr(self, f) is not None]
        if given and not arrays:
            raise ConfigError(f"{given[0]} (--{given[0].replace('_', '-')}) only applies to --dataset arrays")
        if arrays and self.direction != ARRAYS_DIRECTION:
            raise ConfigError(f"direction does not apply to --dataset arrays (its teacher is teacher_data); "
                              f"got {self.direction!r}")
        if not arrays and self.direction == ARRAYS_DIRECTION:
            raise ConfigError(f"direction {ARRAYS_DIRECTION!r} is for --dataset arrays; use a2v, v2a or both")

    @property
    def pairing(self) -> str:
        """How teacher batches are drawn: "paired" (partners) or "unpaired" (own stream)."""
        return "paired" if self.unpaired == "paired" else "unpaired"


_TABLE12 = ExperimentConfig()  # ResNet-18, batch 64, 100 epochs, SGD lr 1e-2, lambda 1/1, n1 = n2 = 1

PRESETS = {
    "synthetic": dataclasses.replace(
        _TABLE12, seeds=3,
        # Tiny ResNet-18; the ImageNet stem (stride 4 before stage 1) keeps the CPU demo
        # within minutes on 2 cores (the small stem is ~4x slower at 32x32).
        model=ModelConfig(width=8, stem="imagenet"),
        train=TrainConfig(epochs=12, teacher_epochs=12, batch_size=64),
        optim=OptimConfig(warmup_epochs=1.0)),
    "crema_d": dataclasses.replace(_TABLE12, streaming=True),
    "ravdess": dataclasses.replace(_TABLE12, streaming=True),
    "ave": dataclasses.replace(_TABLE12, streaming=True),
    "vggsound": dataclasses.replace(_TABLE12, streaming=True),
    # Bring your own modalities: Table 12's training, one teacher -> student direction, and a
    # latent size of 512 (ResNet-18's at width 64) that both sides' encoders are projected to.
    "arrays": dataclasses.replace(_TABLE12, dataset="arrays", direction=ARRAYS_DIRECTION,
                                  model=ModelConfig(latent_dim=512)),
}


def get_preset(dataset: str) -> ExperimentConfig:
    if dataset not in PRESETS:
        raise ConfigError(f"no preset for dataset {dataset!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[dataset], dataset=dataset)


def to_dict(cfg) -> dict:
    """JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
