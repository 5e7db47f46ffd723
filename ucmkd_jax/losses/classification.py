"""Cross-entropy and Hinton's knowledge-distillation loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ucmkd_jax.precision import at_least_f32

__all__ = ["cross_entropy", "hinton_kd", "accuracy_count"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """mean_i -log softmax(logits_i)[y_i]. Args: logits (n, K), labels (n,) int. Returns scalar."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(at_least_f32(logits), labels))


def hinton_kd(student_logits, teacher_logits, labels, temperature: float = 4.0, alpha: float = 0.9):
    """(1 - alpha) CE(p_S, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))  (Hinton et al. 2015,
    paper Eq. 55 with lambda = 1 - alpha). The teacher term carries no gradient.

    Args: student_logits, teacher_logits (n, K); labels (n,) int. Returns scalar.
    """
    t = jax.lax.stop_gradient(at_least_f32(teacher_logits)) / temperature
    s = at_least_f32(student_logits) / temperature
    p_t = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t, axis=-1) - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    return (1.0 - alpha) * cross_entropy(student_logits, labels) + alpha * temperature**2 * jnp.mean(kl)


def accuracy_count(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Number of correct argmax predictions (masked rows ignored). Returns int32 scalar."""
    correct = jnp.argmax(logits, axis=-1) == labels
    if mask is not None:
        correct = correct & mask
    return jnp.sum(correct.astype(jnp.int32))
