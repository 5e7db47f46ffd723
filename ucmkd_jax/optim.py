"""Outer and inner optimisers: the outer SGD of Table 12 (or the AdamW of the authors' ViT
recipe) and the inner optimiser of the bilevel step (``MethodConfig.inner_opt``)."""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from ucmkd_jax.overrides import bounded, validate

__all__ = ["OptimConfig", "learning_rate_schedule", "epoch_schedule", "poly_schedule", "clip_by_global_norm_eps", "outer_optimizer", "inner_optimizer"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Outer optimiser: SGD with momentum, linear warm-up then cosine, global-norm clipping.

    Attributes mirror Table 12 and the authors' code: lr 1e-2, momentum 0.9, 5 warm-up epochs
    from 1e-5, cosine down to 1e-5, clip 5.0, no weight decay. ``optimizer="adamw"`` (the
    authors' ViT recipe, ave/run.sh: lr 1e-4, weight decay 1e-5) is PyTorch's AdamW (betas 0.9,
    0.999, eps 1e-8, decoupled weight decay lr * wd * p) on the same schedule and clipping;
    ``momentum`` is then unused. With SGD the weight decay is PyTorch's coupled one (wd * p added
    to the gradient).

    schedule_unit: "step" (the learning rate moves every step: a smooth warm-up and cosine) or
    "epoch" (the release: PyTorch's LinearLR warm-up from ``init_lr`` then CosineAnnealingLR to
    ``end_lr``, stepped once per epoch, so the rate is constant within an epoch and exactly
    ``init_lr`` through the first one).

    schedule: "warmup_cosine" (above) or "poly" (the release's teacher pre-training, stepped per
    epoch e: 1e-4 + (lr - 1e-4) (1 - e / 100)^0.9, its ``adjust_lr`` with 100 epochs fixed;
    no warm-up).

    clip_epsilon: the gradient is scaled by min(1, clip_norm / (||g|| + clip_epsilon)); 0 is
    optax's ``clip_by_global_norm``, 1e-6 PyTorch's ``clip_grad_norm_`` (the release).
    """

    lr: float = bounded(1e-2, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    warmup_epochs: float = bounded(5.0, ge=0.0)
    init_lr: float = bounded(1e-5, ge=0.0)
    end_lr: float = bounded(1e-5, ge=0.0)
    clip_norm: float = bounded(5.0, ge=0.0, why="0 turns clipping off")
    weight_decay: float = bounded(0.0, ge=0.0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule_unit: Literal["step", "epoch"] = "step"
    schedule: Literal["warmup_cosine", "poly"] = "warmup_cosine"
    clip_epsilon: float = bounded(0.0, ge=0.0, why="added to the global norm before clipping (torch: 1e-6)")

    def __post_init__(self):
        validate(self)


def epoch_schedule(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """lr(step) = f(e), e = step // steps_per_epoch, with W = round(warmup_epochs) and
    T = max(epochs - W, 1):  f(e) = init_lr + (lr - init_lr) e / W for e < W (LinearLR from
    ``init_lr / lr``), else end_lr + (lr - end_lr) (1 + cos(pi (e - W) / T)) / 2 (the closed
    form of CosineAnnealingLR, eta_min = end_lr)."""
    w = int(round(cfg.warmup_epochs))
    t = max(int(epochs) - w, 1)
    spe = max(int(steps_per_epoch), 1)

    def schedule(step):
        e = jnp.asarray(step, jnp.int32) // spe
        ef = e.astype(jnp.float32)
        warm = cfg.init_lr + (cfg.lr - cfg.init_lr) * ef / max(w, 1)
        cos = cfg.end_lr + (cfg.lr - cfg.end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * (ef - w) / t))
        return jnp.where(e < w, warm, cos)

    return schedule


def poly_schedule(cfg: OptimConfig, steps_per_epoch: int) -> optax.Schedule:
    """lr(step) = 1e-4 + (lr - 1e-4) max(0, 1 - e / 100)^0.9, e = step // steps_per_epoch."""
    spe = max(int(steps_per_epoch), 1)

    def schedule(step):
        e = (jnp.asarray(step, jnp.int32) // spe).astype(jnp.float32)
        return 1e-4 + (cfg.lr - 1e-4) * jnp.maximum(0.0, 1.0 - e / 100.0) ** 0.9

    return schedule


def learning_rate_schedule(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """lr(step): linear from ``init_lr`` to ``lr`` over the warm-up, then cosine to ``end_lr``,
    per step, or per epoch with ``schedule_unit="epoch"`` (``epoch_schedule``); or the release's
    teacher schedule with ``schedule="poly"`` (``poly_schedule``)."""
    if cfg.schedule == "poly":
        return poly_schedule(cfg, steps_per_epoch)
    if cfg.schedule_unit == "epoch":
        return epoch_schedule(cfg, steps_per_epoch, epochs)
    total = max(int(steps_per_epoch * epochs), 1)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=cfg.init_lr, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=total, end_value=cfg.end_lr)


def clip_by_global_norm_eps(max_norm: float, eps: float) -> optax.GradientTransformation:
    """g * min(1, max_norm / (||g||_2 + eps)), ||g||_2 over the whole tree: PyTorch's
    ``clip_grad_norm_`` (eps 1e-6)."""

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + eps))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def outer_optimizer(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if cfg.clip_norm > 0:
        parts.append(clip_by_global_norm_eps(cfg.clip_norm, cfg.clip_epsilon) if cfg.clip_epsilon > 0
                     else optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "adamw":
        return optax.chain(*parts, optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay))
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None))
    return optax.chain(*parts)


def inner_optimizer(kind: str, lr, weight_decay: float = 0.05, eps_root: float = 1e-8) -> optax.GradientTransformation:
    """One inner-loop optimiser, built fresh (new state) for every inner step, as the authors do.

    Args:
      kind: "adamw" (authors' code: lr 1e-5, weight decay 0.05) or "sgd" (Algorithm 1, the
        outer lr).
      lr: learning rate; may be a traced scalar (the outer schedule's current value).
      eps_root: added under the square root of AdamW's second moment. Must be > 0 when the
        hypergradient is differentiated through the update (optax's meta-learning note); without
        it the unrolled hypergradient is NaN at zero gradient entries.
    """
    if kind == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay, eps_root=eps_root)
    if kind == "sgd":
        return optax.sgd(lr)
    raise ValueError(f"unknown inner optimiser {kind!r}; expected 'adamw' or 'sgd'")
