"""Named recipes laid over a dataset's preset (``--preset NAME``): the paper's ViT tables.

    python experiments/run.py --dataset ave --data-dir D --preset vit_b_to_s \\
        --teacher-init vit_b_16-c867db91.pth --student-init vit_small.safetensors --direction both
    python experiments/run.py --dataset ravdess --data-dir D --preset vit_l_to_s \\
        --teacher-init vit_l_16-852ce7e3.pth --student-init vit_small.safetensors --direction both
    python experiments/run.py --preset vit_tiny          # the ViT path on the synthetic demo (CPU)

A recipe replaces the model, training, optimiser and FA cost of the preset of ``--dataset``
(``ucmkd_jax.config.PRESETS``); everything else (dataset, direction, regime, seeds, methods) stays,
and the short flags and ``--set`` apply after it. The ViT recipes are the authors' release
(ave/run.sh and ave/utils of Duckduck-05/UCMKD at 2658b06):

* ``vit_b_to_s`` (Table 8): ViT-B/16 teacher (86M), ViT-S/16 student (22M);
* ``vit_l_to_s`` (Table 10): ViT-L/16 teacher (300M+), ViT-S/16 student;

both with the student's 384-wide CLS token projected to the teacher's width (768 / 1024) by
Linear -> BatchNorm1d -> ReLU, spectrograms resized to 256 x 1024, AdamW (lr 1e-4, weight decay
1e-5) with 5 warm-up epochs and a cosine down to 1e-5, batch 32 (evaluation too: a ViT's
attention over 1 + 16 x 64 spectrogram tokens at the default evaluation batch of 256 needs tens
of GB), 30 student epochs, 20 teacher pre-training epochs (AdamW too), and the l2 OT cost. The initial weights (ImageNet) come from
files the user downloads: ``--teacher-init`` / ``--student-init`` (``ucmkd_jax.models.pretrained``).
Video: per-frame encoding and a mean of the features (the clean default); the release averages
the frames in pixel space first (``--set model.video_frames=mean_pixels``, or ``--protocol authors``).

``vit_tiny``: the same recipe with teacher and student ViTs of 2 blocks and head width 4 (token
widths 48 and 24), for the synthetic demo and the tests on a CPU.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict

from ucmkd_jax.config import ExperimentConfig
from ucmkd_jax.overrides import ConfigError

__all__ = ["RECIPES", "apply_recipe", "vit_recipe"]


def vit_recipe(teacher: str, student: str, latent_dim: int, *, width: int = 64, depth=None, epochs: int = 30,
               teacher_epochs: int = 20) -> Callable[[ExperimentConfig], ExperimentConfig]:
    """The authors' ViT recipe (module docstring) for a ``teacher`` -> ``student`` pair of ViT
    backbones whose student is projected to ``latent_dim``."""

    def apply(cfg: ExperimentConfig) -> ExperimentConfig:
        model = dataclasses.replace(cfg.model, teacher_backbone=teacher, student_backbone=student, width=width,
                                    latent_dim=latent_dim, projection="linear_bn_relu", vit_depth=depth,
                                    vit_audio_size=(256, 1024) if depth is None else None)
        train = dataclasses.replace(cfg.train, epochs=epochs, teacher_epochs=teacher_epochs, batch_size=32,
                                    eval_batch_size=32)
        optim = dataclasses.replace(cfg.optim, optimizer="adamw", lr=1e-4, weight_decay=1e-5, warmup_epochs=5.0,
                                    init_lr=1e-5, end_lr=1e-5)
        method = dataclasses.replace(cfg.method, fa=dataclasses.replace(cfg.method.fa, cost="l2"))
        return dataclasses.replace(cfg, model=model, train=train, optim=optim, method=method)

    return apply


RECIPES: Dict[str, Callable[[ExperimentConfig], ExperimentConfig]] = {
    "vit_b_to_s": vit_recipe("vit_b16", "vit_s16", 768),    # Table 8
    "vit_l_to_s": vit_recipe("vit_l16", "vit_s16", 1024),   # Table 10
    # CPU demo: token widths 12 * 4 = 48 (teacher) and 6 * 4 = 24 (student, projected to 48)
    "vit_tiny": vit_recipe("vit_b16", "vit_s16", 48, width=4, depth=2, epochs=12, teacher_epochs=12),
}


def apply_recipe(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    """``cfg`` with the recipe ``name`` laid over it. Raises ConfigError for an unknown name."""
    if name not in RECIPES:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name](cfg)
