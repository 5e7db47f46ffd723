"""Joint (single-level) baselines: ``feature_kd`` = CE + lambda_1 FA and ``sumall`` =
CE + lambda_1 FA + lambda_2 LA (Table 6, "Both (w/o bilevel)"), one gradient step on the sum.

``sumall`` is the joint loss in full: its LA term is computed on the student features z = phi(x_S)
themselves, so its gradient reaches the encoder through log p_S(y|z) and through the teacher head's
log p_T(y|z); only kappa = p_T(y|z) is a constant (Appendix D). The authors' release does the same
(its ``sumall`` does not detach z). ``MethodConfig.la_grad`` is a setting of the bilevel step only.
"""
from __future__ import annotations

import jax

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.losses.feature_alignment import feature_alignment
from ucmkd_jax.losses.label_alignment import label_alignment, label_transport_kernel
from ucmkd_jax.methods.base import MethodConfig, check_shared_latent, register, teacher_features
from ucmkd_jax.models.model import Model


def _build_joint(student: Model, teacher: Model, config: MethodConfig, with_la: bool):
    check_shared_latent(student, teacher)

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        z_t = teacher_features(teacher, teacher_variables, batch["x_t"])
        t_head = teacher_variables["params"]["head"]
        y = batch["y_s"]

        def loss_fn(p):
            z, stats = student.encode(p["encoder"], batch_stats, batch["x_s"], train=True)
            logits = student.classify(p["head"], z)
            ce = cross_entropy(logits, y)
            fa = feature_alignment(z, z_t, config.fa)
            loss = ce + config.lambda_fa * fa
            metrics = {"ce": ce, "fa": fa}
            if with_la:
                t_logits = teacher.classify(t_head, z)
                la = label_alignment(logits, t_logits, y)
                loss = loss + config.lambda_la * la
                metrics.update(la=la, kappa=label_transport_kernel(t_logits, y).mean())
            return loss, (stats, metrics)

        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, stats, dict(metrics, loss=loss)

    return grads_fn


@register("feature_kd", uses_teacher=True, summary="CE + lambda_1 FA, joint")
def build_feature_kd(student, teacher, config):
    return _build_joint(student, teacher, config, with_la=False)


@register("sumall", uses_teacher=True, summary="CE + lambda_1 FA + lambda_2 LA, joint (no bilevel)")
def build_sumall(student, teacher, config):
    return _build_joint(student, teacher, config, with_la=True)
