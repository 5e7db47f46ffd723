"""``ce``: the student trained with cross-entropy alone (no teacher). Also pre-trains teachers."""
from __future__ import annotations

import jax

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.methods.base import MethodConfig, register
from ucmkd_jax.models.model import Model


@register("ce", uses_teacher=False, summary="student cross-entropy only")
def build_ce(student: Model, teacher: Model | None, config: MethodConfig):
    del teacher, config

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del teacher_variables, lr

        def loss_fn(p):
            z, stats = student.encode(p["encoder"], batch_stats, batch["x_s"], train=True)
            loss = cross_entropy(student.classify(p["head"], z), batch["y_s"])
            return loss, stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, stats, {"loss": loss, "ce": loss}

    return grads_fn
