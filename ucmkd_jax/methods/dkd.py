r"""``dkd``: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022), paired.

With p^T = softmax(z_T / T), p^S = softmax(z_S / T) and the label y, DKD splits the KD loss into

    TCKD = KL(b^T || b^S),    b = [p_y, 1 - p_y]                    (target vs. all non-targets)
    NCKD = KL(p̂^T || p̂^S),    p̂_k = p_k / (1 - p_y), k != y         (among the non-targets)

(the paper's reformulation of KD): KD = TCKD + (1 - p^T_y) NCKD. DKD re-weights the two terms independently,

    L = CE(z_S, y) + w(t) * T^2 * mean_i [alpha TCKD_i + beta NCKD_i]          (the DKD loss)

with the defaults of the paper and its code (mdistiller ``CFG.DKD``): alpha = 1, beta = 8,
T = 4, CE weight 1, and the linear warm-up of the KD weight w = min(epoch / 20, 1). The step does
not know the epoch length, so the warm-up is counted in steps: w(t) = min((t + 1) / warmup_steps, 1)
with ``warmup_steps = 2000`` by default (about 20 epochs of CREMA-D at batch 64, ~95 steps per
epoch after the validation split); set it to 20 x your steps per epoch, or 0 for no warm-up. The
step count lives in ``batch_stats["extra"]["step"]``.

Paired only (``needs_paired``): the teacher's logits are those of the partner sample x_T[i].
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ucmkd_jax.methods._common import (binary_kl, binary_log_probs, check_teacher, counter_extra, masked_kl, options,
                                       warmup_logit_kd_grads)
from ucmkd_jax.methods.base import MethodConfig, register
from ucmkd_jax.models.model import Model

__all__ = ["DKDConfig", "dkd_terms", "decoupled_kd", "build_dkd"]


@dataclasses.dataclass(frozen=True)
class DKDConfig:
    """alpha: TCKD weight; beta: NCKD weight; temperature: T; ce_weight; warmup_steps: steps of
    the linear KD-weight warm-up (0: none). Defaults: the paper / mdistiller (see module doc)."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    ce_weight: float = 1.0
    warmup_steps: int = 2000


def dkd_terms(student_logits, teacher_logits, labels, temperature: float):
    """Per-sample (TCKD, NCKD, p^T_y) at temperature T (no T^2 factor).

    Args: logits (n, K), labels (n,) int. Returns three (n,) arrays. Identity (tested):
    KL(p^T || p^S) = TCKD + (1 - p^T_y) NCKD.
    """
    s = student_logits / temperature
    t = teacher_logits / temperature
    lp_s, lq_s = binary_log_probs(s, labels)
    lp_t, lq_t = binary_log_probs(t, labels)
    tckd = binary_kl(lp_t, lq_t, lp_s, lq_s)
    nckd = masked_kl(t, s, jax.nn.one_hot(labels, s.shape[-1], dtype=bool))
    return tckd, nckd, jnp.exp(lp_t)


def decoupled_kd(student_logits, teacher_logits, labels, alpha: float = 1.0, beta: float = 8.0,
                 temperature: float = 4.0):
    """T^2 mean_i [alpha TCKD_i + beta NCKD_i] (the DKD loss without CE). The teacher carries no
    gradient. Returns a scalar."""
    tckd, nckd, _ = dkd_terms(student_logits, jax.lax.stop_gradient(teacher_logits), labels, temperature)
    return temperature**2 * jnp.mean(alpha * tckd + beta * nckd)


@register("dkd", uses_teacher=True, needs_paired=True, init_extra=counter_extra,
          summary="Decoupled KD (Zhao et al. 2022): CE + warm-up * (alpha TCKD + beta NCKD), paired")
def build_dkd(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("dkd", student, teacher)
    opts: DKDConfig = options(config, "dkd", DKDConfig())

    t2 = opts.temperature**2

    def kd_fn(logits, t_logits, y):
        tckd, nckd, _ = dkd_terms(logits, t_logits, y, opts.temperature)
        return t2 * jnp.mean(opts.alpha * tckd + opts.beta * nckd), {"tckd": t2 * tckd.mean(), "nckd": t2 * nckd.mean()}

    return warmup_logit_kd_grads(student, teacher, opts.ce_weight, opts.warmup_steps, kd_fn)
