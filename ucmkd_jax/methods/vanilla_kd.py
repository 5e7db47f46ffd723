"""``vanilla_kd`` (paired reference, Hinton et al. 2015): (1 - alpha) CE + alpha T^2 KL on the
teacher's logits of the PAIRED partner sample. Refuses unpaired data (see ``MethodSpec``)."""
from __future__ import annotations

import jax

from ucmkd_jax.losses.classification import cross_entropy, hinton_kd
from ucmkd_jax.methods.base import MethodConfig, register
from ucmkd_jax.models.model import Model


@register("vanilla_kd", uses_teacher=True, needs_paired=True, summary="Hinton KD on paired batches")
def build_vanilla_kd(student: Model, teacher: Model, config: MethodConfig):
    if teacher is None:
        raise ValueError("vanilla_kd needs a teacher model")
    if teacher.num_classes != student.num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes, student {student.num_classes}")

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        t_logits, _, _ = teacher.apply(teacher_variables, batch["x_t"], train=False)
        t_logits = jax.lax.stop_gradient(t_logits)

        def loss_fn(p):
            z, stats = student.encode(p["encoder"], batch_stats, batch["x_s"], train=True)
            logits = student.classify(p["head"], z)
            loss = hinton_kd(logits, t_logits, batch["y_s"], config.kd_temperature, config.kd_alpha)
            return loss, (stats, cross_entropy(logits, batch["y_s"]))

        (loss, (stats, ce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, stats, {"loss": loss, "ce": ce}

    return grads_fn
