"""Label alignment (LA) with the label transport kernel kappa (paper Eq. 7, 15; Appendix D)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ucmkd_jax.precision import at_least_f32

__all__ = ["label_transport_kernel", "label_alignment"]


def _log_prob_of_label(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
    return jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def label_transport_kernel(teacher_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """kappa_i = p_T(y_i | z_i) (Appendix D, Eq. 56: the empirical student conditional is a
    Dirac at y_i, so kappa reduces to the teacher's probability of the true label).

    Args: teacher_logits (n, K) = p_T's logits on student features; labels (n,) int.
    Returns: (n,) in [0, 1], under ``stop_gradient`` (kappa is a constant, Appendix D).
    """
    return jax.lax.stop_gradient(jnp.exp(_log_prob_of_label(teacher_logits, labels)))


def label_alignment(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                    kappa: jax.Array | None = None) -> jax.Array:
    """LA_e = mean_i [ -log p_S(y_i | z_i) + kappa_i * log p_T(y_i | z_i) ]  (Eq. 15).

    When kappa -> 0 this is the student's cross-entropy (Eq. 16). Gradients flow into
    ``student_logits`` and, through log p_T, into ``teacher_logits`` (i.e. into the student
    features the teacher head scored); kappa itself is a constant.

    Args: student_logits (n, K) = p_S's logits; teacher_logits (n, K) = p_T's logits on the same
      student features; labels (n,) int in [0, K); kappa: optional (n,) precomputed kernel (a
      caller differentiating THROUGH an LA step passes kappa computed outside the inner
      gradient, so the outer derivative still sees kappa's dependence on the features).
    Returns: scalar.
    """
    if kappa is None:
        kappa = label_transport_kernel(teacher_logits, labels)
    log_ps = _log_prob_of_label(student_logits, labels)
    log_pt = _log_prob_of_label(teacher_logits, labels)
    return jnp.mean(-log_ps + kappa * log_pt)
