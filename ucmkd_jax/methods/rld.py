r"""``rld``: Refined Logit Distillation (Sun, Chen, Lyu, Chen, Chen, Wang, "Knowledge Distillation
with Refined Logits", arXiv 2408.07703, 2024), paired.

The teacher's logits are refined with the label so that a wrong teacher top-1 is never imitated,
while the class correlations below the label are kept. With z_T, z_S the logits, y the label and
m = argmax z_T (the teacher's top-1, possibly wrong):

    sample confidence distillation (SCD): the teacher's confidence in ITS prediction is taught as
        the student's confidence in the LABEL, at temperature T_a:
        SCD = T_a^2 KL([p^T_m, 1 - p^T_m] || [p^S_y, 1 - p^S_y]),   p = softmax(z / T_a)
    masked correlation distillation (MCD): every class the teacher ranks at or above the label
        (M = {k : z_T,k >= z_T,y}, so y and any wrong top classes) is masked out on both sides and
        the remaining distribution is matched at temperature T:
        MCD = T^2 KL(softmax(z_T / T) restricted to k not in M || same for z_S)
    L = CE(z_S, y) + w(t) * mean_i [alpha SCD_i + beta MCD_i]

A wrong top-1 m != y is in M, so MCD never pulls towards it, and SCD only moves the student's
probability of y: the gradient of L_RLD w.r.t. the student's logit of m is >= 0 whenever
p^S_y <= p^T_m, where Hinton KD's is negative (tested). Defaults: the authors' code
(zju-SWJ/RLD, ``CFG.RLD``): alpha = 1, beta = 8, T_a = 1, T = 4, CE weight 1, KD-weight warm-up
min(epoch / 20, 1), here counted in steps as for ``dkd`` (``warmup_steps = 2000``, about 20
CREMA-D epochs at batch 64; 0 disables it), no logit standardisation.

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
from ucmkd_jax.precision import at_least_f32

__all__ = ["RLDConfig", "rld_terms", "refined_logit_distillation", "build_rld"]


@dataclasses.dataclass(frozen=True)
class RLDConfig:
    """alpha: SCD weight; beta: MCD weight; alpha_temperature: T_a of SCD; temperature: T of MCD."""

    alpha: float = 1.0
    beta: float = 8.0
    alpha_temperature: float = 1.0
    temperature: float = 4.0
    ce_weight: float = 1.0
    warmup_steps: int = 2000


def rld_terms(student_logits, teacher_logits, labels, temperature: float = 4.0, alpha_temperature: float = 1.0):
    """Per-sample (SCD, MCD), each with its T^2 factor. Args: logits (n, K), labels (n,) int."""
    s, t = at_least_f32(student_logits), at_least_f32(teacher_logits)
    top = jnp.argmax(t, axis=-1)
    lp_s, lq_s = binary_log_probs(s / alpha_temperature, labels)
    lp_t, lq_t = binary_log_probs(t / alpha_temperature, top)
    scd = alpha_temperature**2 * binary_kl(lp_t, lq_t, lp_s, lq_s)
    t_y = jnp.take_along_axis(t, labels[:, None], axis=-1)
    mask = t >= t_y  # the label and every class the teacher ranks at or above it
    mcd = temperature**2 * masked_kl(t / temperature, s / temperature, mask)
    return scd, mcd


def refined_logit_distillation(student_logits, teacher_logits, labels, alpha: float = 1.0, beta: float = 8.0,
                               temperature: float = 4.0, alpha_temperature: float = 1.0):
    """mean_i [alpha SCD_i + beta MCD_i] (the RLD loss without CE). The teacher carries no
    gradient. Returns a scalar."""
    scd, mcd = rld_terms(student_logits, jax.lax.stop_gradient(teacher_logits), labels, temperature,
                         alpha_temperature)
    return jnp.mean(alpha * scd + beta * mcd)


@register("rld", uses_teacher=True, needs_paired=True, init_extra=counter_extra,
          summary="Refined logit distillation (Sun et al. 2024): CE + warm-up * (SCD + 8 MCD), paired")
def build_rld(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("rld", student, teacher)
    opts: RLDConfig = options(config, "rld", RLDConfig())

    def kd_fn(logits, t_logits, y):
        scd, mcd = rld_terms(logits, t_logits, y, opts.temperature, opts.alpha_temperature)
        return jnp.mean(opts.alpha * scd + opts.beta * mcd), {
            "scd": scd.mean(), "mcd": mcd.mean(),
            "teacher_wrong": jnp.mean(jnp.argmax(t_logits, -1) != y).astype(jnp.float32)}

    return warmup_logit_kd_grads(student, teacher, opts.ce_weight, opts.warmup_steps, kd_fn)
