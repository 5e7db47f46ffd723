r"""``reviewkd``: Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao, Jia, CVPR 2021).

Five levels per network: the four ResNet stage maps and the pooled feature z as a 1 x 1 map (six
for a ViT: its five maps, ``models.vit``; teacher and student must have as many).
The student's levels are fused from deep to shallow by attention-based fusion (ABF) into the
teacher's channel widths and spatial sizes, and every fused level is matched to the teacher's
level by the hierarchical context loss (HCL):

    ABF_i(x_i, r_{i+1}):  u = BN(conv1x1(x_i)),  r = nearest-resize(r_{i+1}) to u's size,
                          [a, b] = sigmoid(conv1x1([u, r])),  m = a u + b r  (deepest level: m = u),
                          m = nearest-resize(m) to the teacher's (h, w) at level i,
                          out_i = BN(conv3x3(m)),  r_i = m
    HCL(F_s, F_t) = [MSE(F_s, F_t) + sum_{l in (4, 2, 1), l < h} 2^-k MSE(pool_l F_s, pool_l F_t)]
                    / (1 + sum 2^-k)       (k = 1, 2, ... over the pooling sizes used; pool_l =
                    adaptive average pooling to l x l)
    L = CE(z_S, y) + weight * sum_i HCL(out_i, F_t,i)

Defaults (the paper's code, dvlab-research/ReviewKD, and mdistiller ``CFG.REVIEWKD``): weight 1,
CE weight 1, mid channels min(512, last student width), kaiming-uniform(a = 1) ABF convolutions,
pooling sizes (4, 2, 1). The fusion modules (``params["extra"]["fusion"]``, their BatchNorm
statistics in ``batch_stats["extra"]``) get their OWN optimiser, as in the authors' UCMKD release:
Adam, lr 1e-3, (coupled, PyTorch-style) weight decay 1e-4 (``own_optimizer = False`` trains them
with the student's optimiser instead). No warm-up of the loss weight (mdistiller adds a 20-epoch
one; the paper and the release do not).
Deviations: the teacher's maps are the stage OUTPUTS (after the last ReLU); the paper's code
takes the teacher's pre-activation maps, which these encoders do not expose. Video maps are
averaged over frames first. The authors' UCMKD release differs from the paper (a 1x1 conv2,
everything bilinearly resized to the teacher's last map, the sum divided by the number of
levels); this module follows the paper.

Unpaired adaptation (Table 11): this method is NOT registered ``needs_paired``. With
``--pairing unpaired`` the same loss is applied to an independently drawn teacher batch: fused
student level i of sample j is matched to the teacher's level i of the j-th sample of the
teacher batch, which is not its partner.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.methods._common import (adaptive_avg_pool, check_feature_maps, check_teacher, options,
                                       own_optimizer, per_sample_maps, resize_hw, split_extra, stage_channels,
                                       teacher_stage_maps)
from ucmkd_jax.methods.base import MethodConfig, register
from ucmkd_jax.models.model import Model

__all__ = ["ReviewKDConfig", "ABF", "ReviewFusion", "hierarchical_context_loss", "build_reviewkd"]


@dataclasses.dataclass(frozen=True)
class ReviewKDConfig:
    """weight: of the summed HCL; pool_sizes: HCL's pyramid; max_mid_channels: ABF width cap;
    own_optimizer, extra_lr, extra_weight_decay: Adam for the fusion modules (else the student's
    optimiser trains them)."""

    weight: float = 1.0
    ce_weight: float = 1.0
    pool_sizes: Tuple[int, ...] = (4, 2, 1)
    max_mid_channels: int = 512
    own_optimizer: bool = True
    extra_lr: float = 1e-3
    extra_weight_decay: float = 1e-4


_kaiming_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # torch kaiming_uniform_(a=1)


def _bn(train: bool, name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class ABF(nn.Module):
    """Attention-based fusion of one level. Returns (out at the teacher's size and width, the
    fused mid-width map passed to the next, shallower level)."""

    mid_channels: int
    out_channels: int
    fuse: bool

    @nn.compact
    def __call__(self, x, residual: Optional[jax.Array], out_hw, train: bool):
        x = _bn(train, "bn1")(nn.Conv(self.mid_channels, (1, 1), use_bias=False, kernel_init=_kaiming_a1,
                                      name="conv1")(x))
        if self.fuse:
            r = resize_hw(residual, x.shape[1:3], "nearest")
            a = nn.sigmoid(nn.Conv(2, (1, 1), name="att_conv")(jnp.concatenate([x, r], axis=-1)))
            x = x * a[..., 0:1] + r * a[..., 1:2]
        x = resize_hw(x, out_hw, "nearest")
        out = _bn(train, "bn2")(nn.Conv(self.out_channels, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False,
                                        kernel_init=_kaiming_a1, name="conv2")(x))
        return out, x


class ReviewFusion(nn.Module):
    """All levels: student maps (shallow -> deep) -> fused maps at the teacher's sizes."""

    out_channels: Sequence[int]
    mid_channels: int

    @nn.compact
    def __call__(self, feats, out_hws, train: bool):
        n = len(feats)
        abfs = [ABF(self.mid_channels, self.out_channels[i], fuse=i < n - 1, name=f"abf{i + 1}") for i in range(n)]
        out, res = abfs[-1](feats[-1], None, out_hws[-1], train)
        results = [out]
        for i in reversed(range(n - 1)):
            out, res = abfs[i](feats[i], res, out_hws[i], train)
            results.insert(0, out)
        return results


def hierarchical_context_loss(student_maps, teacher_maps, pool_sizes: Sequence[int] = (4, 2, 1)):
    """sum over levels of HCL (see module doc); pooling size l is skipped when l >= the map's
    height, as in the paper's code. Teacher maps carry no gradient. Lists of (n, h, w, c) with
    matching shapes. Returns a scalar."""
    total = jnp.zeros((), jnp.float32)
    for fs, ft in zip(student_maps, teacher_maps):
        ft = jax.lax.stop_gradient(ft)
        loss, w, tot = jnp.mean((fs - ft) ** 2), 1.0, 1.0
        for size in pool_sizes:
            if size >= fs.shape[1]:
                continue
            w /= 2.0
            loss = loss + w * jnp.mean((adaptive_avg_pool(fs, (size, size)) - adaptive_avg_pool(ft, (size, size))) ** 2)
            tot += w
        total = total + loss / tot
    return total


def _fusion(student: Model, teacher: Model, opts: ReviewKDConfig) -> ReviewFusion:
    n_s, n_t = len(stage_channels(student)), len(stage_channels(teacher))
    if n_s != n_t:
        raise ValueError(f"reviewkd fuses student level i into teacher level i, but the student has {n_s} feature "
                         f"maps and the teacher {n_t} (a ResNet has 4 stages, a ViT 5 maps): use two ResNets or "
                         f"two ViTs")
    return ReviewFusion(out_channels=tuple(stage_channels(teacher)) + (teacher.latent_dim,),
                        mid_channels=min(opts.max_mid_channels, student.latent_dim))


def _levels(maps, z):
    return list(maps) + [z[:, None, None, :]]


def init_reviewkd(key, student, teacher, teacher_variables, config):
    opts: ReviewKDConfig = options(config, "reviewkd", ReviewKDConfig())
    fusion = _fusion(student, teacher, opts)
    feats = [jnp.zeros((2, 1, 1, c), jnp.float32) for c in stage_channels(student) + [student.latent_dim]]
    v = fusion.init(key, feats, [(1, 1)] * len(feats), train=False)
    return {"params": {"fusion": v["params"]}, "batch_stats": {"fusion": v["batch_stats"]}}


reviewkd_optimizer = own_optimizer("reviewkd", ReviewKDConfig())


@register("reviewkd", uses_teacher=True, needs_paired=False, init_extra=init_reviewkd, optimizer=reviewkd_optimizer,
          summary="Knowledge review (Chen et al. 2021): CE + HCL of ABF-fused student levels; paired or unpaired")
def build_reviewkd(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("reviewkd", student, teacher, same_classes=False)
    check_feature_maps("reviewkd", student, teacher)
    opts: ReviewKDConfig = options(config, "reviewkd", ReviewKDConfig())
    fusion = _fusion(student, teacher, opts)

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        stats, extra_stats = split_extra(batch_stats)
        z_t, t_maps = teacher_stage_maps(teacher, teacher_variables, batch["x_t"])
        t_levels = _levels(t_maps, z_t)
        out_hws = [tuple(m.shape[1:3]) for m in t_levels]
        x_s = batch["x_s"]
        if x_s.shape[0] != batch["x_t"].shape[0]:
            raise ValueError(f"reviewkd matches sample i of both batches: got {x_s.shape[0]} student and "
                             f"{batch['x_t'].shape[0]} teacher samples")

        def loss_fn(p):
            z, new_stats, stages = student.encode(p["encoder"], stats, x_s, train=True, return_stages=True)
            ce = cross_entropy(student.classify(p["head"], z), batch["y_s"])
            s_levels = _levels(per_sample_maps(student, stages, x_s.shape[0]), z)
            fused, fusion_stats = fusion.apply(
                {"params": p["extra"]["fusion"], "batch_stats": extra_stats["fusion"]}, s_levels, out_hws, train=True,
                mutable=["batch_stats"])
            hcl = hierarchical_context_loss(fused, t_levels, opts.pool_sizes)
            loss = opts.ce_weight * ce + opts.weight * hcl
            return loss, (new_stats, fusion_stats["batch_stats"], {"ce": ce, "hcl": hcl})

        (loss, (new_stats, f_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, {**new_stats, "extra": {"fusion": f_stats}}, dict(metrics, loss=loss)

    return grads_fn
