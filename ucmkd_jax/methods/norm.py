r"""``norm``: N-to-One Representation Matching (Liu, Li, Li, Yao, "NORM: Knowledge Distillation via
N-to-One Representation Matching", ICLR 2023).

A linear feature expansion E (the expansion half of the paper's Feature Transform module) maps
the student's pooled feature z_S (d_S) to N * d_T values, read as N consecutive segments of the
teacher's width, and EVERY segment is matched to the same teacher feature z_T:

    L_NORM = sum_{i=1..N} mean_{b, k} (E(z_S)_{b, i, k} - z_T,b,k)^2
           = N * MSE(E(z_S), [z_T, z_T, ..., z_T])        (z_T repeated N times)
    L = CE(z_S, y) + weight * L_NORM

Defaults: N = 4 (the paper's default), weight 1, CE weight 1, E without bias and
kaiming-normal initialised, in ``params["extra"]["expand"]``, trained with the student's
optimiser as in the paper (``own_optimizer = True`` gives it Adam lr 1e-3, weight decay 1e-4, as
the authors' UCMKD release does). Simplification, as the issue specifies: the expansion acts on
the pooled feature z (a 1x1 convolution on the last map followed by average pooling is the same
linear map) and the classifier keeps reading z (the paper's contraction half, folded back into
the student after training, is omitted). The segment losses are SUMMED, as in the official NORM
code and the UCMKD release (an earlier version of this module averaged them: 1/N of the loss).

Unpaired adaptation (Table 11): this method is NOT registered ``needs_paired``. With
``--pairing unpaired`` the same loss is applied to an independently drawn teacher batch: E(z_S)
of sample j is matched to z_T of the j-th sample of the teacher batch, which is not its partner.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.methods._common import check_teacher, options, own_optimizer, split_extra
from ucmkd_jax.methods.base import MethodConfig, register, teacher_features
from ucmkd_jax.models.model import Model
from ucmkd_jax.precision import at_least_f32

__all__ = ["NORMConfig", "n_to_one_matching", "build_norm"]


@dataclasses.dataclass(frozen=True)
class NORMConfig:
    """n: N, the number of student segments per teacher feature; weight: of L_NORM."""

    n: int = 4
    weight: float = 1.0
    ce_weight: float = 1.0
    own_optimizer: bool = False
    extra_lr: float = 1e-3
    extra_weight_decay: float = 1e-4


def n_to_one_matching(expanded, teacher_features_, n: int):
    """L_NORM = sum over the n segments of each segment's mean squared error to the teacher feature.
    expanded (b, n * d_T), teacher_features_ (b, d_T) (no gradient). Returns a scalar."""
    b, d = teacher_features_.shape
    if expanded.shape != (b, n * d):
        raise ValueError(f"expanded features have shape {expanded.shape}, expected ({b}, {n} * {d})")
    seg = at_least_f32(expanded).reshape(b, n, d)
    return n * jnp.mean((seg - jax.lax.stop_gradient(at_least_f32(teacher_features_))[:, None, :]) ** 2)


def _expansion(teacher: Model, opts: NORMConfig) -> nn.Dense:
    return nn.Dense(opts.n * teacher.latent_dim, use_bias=False,
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"))


def init_norm(key, student, teacher, teacher_variables, config):
    opts: NORMConfig = options(config, "norm", NORMConfig())
    if opts.n < 1:
        raise ValueError(f"norm needs N >= 1, got {opts.n}")
    params = _expansion(teacher, opts).init(key, jnp.zeros((1, student.latent_dim), jnp.float32))["params"]
    return {"params": {"expand": params}, "batch_stats": {}}


norm_optimizer = own_optimizer("norm", NORMConfig())


@register("norm", uses_teacher=True, needs_paired=False, init_extra=init_norm, optimizer=norm_optimizer,
          summary="N-to-one representation matching (Liu et al. 2023), N = 4, on pooled features; paired or unpaired")
def build_norm(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("norm", student, teacher, same_classes=False)
    opts: NORMConfig = options(config, "norm", NORMConfig())
    expand = _expansion(teacher, opts)

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        z_t = teacher_features(teacher, teacher_variables, batch["x_t"])
        stats, extra_stats = split_extra(batch_stats)

        def loss_fn(p):
            z, new_stats = student.encode(p["encoder"], stats, batch["x_s"], train=True)
            ce = cross_entropy(student.classify(p["head"], z), batch["y_s"])
            norm = n_to_one_matching(expand.apply({"params": p["extra"]["expand"]}, z), z_t, opts.n)
            loss = opts.ce_weight * ce + opts.weight * norm
            return loss, (new_stats, {"ce": ce, "norm": norm})

        (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, {**new_stats, "extra": extra_stats}, dict(metrics, loss=loss)

    return grads_fn
