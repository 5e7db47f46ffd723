r"""``fitnet``: FitNets hint learning (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, 2014), paired.

The student's "guided" stage map is regressed onto the teacher's "hint" stage map of the PAIRED
sample (the paper's hint-based training loss L_HT):

    L_HT = mean (u_h(x_T) - r(v_g(x_S); W_r))^2,    r(v) = ReLU(BN(W_r * v + b))   (1x1 conv, BatchNorm)
    L = CE(z_S, y) + 100 L_HT

u_h is the teacher's map at stage ``stage`` (frozen, inference-mode BatchNorm), v_g the student's
at the same stage, first averaged over frames (video) and bilinearly resized to the teacher's
(h, w) when they differ (e.g. a 257 x 1004 spectrogram against 224 x 224 frames), with the
corners aligned (``F.interpolate(..., align_corners=True)``, as the C2KD release's FitNet;
``resize="half_pixel"``: PyTorch's default sampling). The regressor is mdistiller's ``ConvReg``
for maps of equal size (what the C2KD release uses): a 1x1 convolution with bias, BatchNorm in
training mode (statistics in ``batch_stats["extra"]["regressor"]``) and a ReLU, the teacher
layer's non-linearity as the paper requires of r and u_h; ``bn=False`` drops the BatchNorm (an
earlier version of this module). Its parameters live in ``params["extra"]["regressor"]`` and are
trained with the student.

Defaults and where they come from: ``stage = 2`` (1-based; the 128-channel map of ResNet-18 at
width 64; a ViT's second map, the tokens after block 5 of 12 or 11 of 24): the paper takes the middle of the networks, mdistiller's ``HINT_LAYER = 2`` and the
C2KD release's FitNet (the cross-modal code behind Table 2's baselines) both use the second stage;
``weight = 100`` (mdistiller ``FITNET.LOSS.FEAT_WEIGHT``, C2KD's release) with CE weight 1.
Deviation from the paper: Romero et al. train in two stages (hints first, then KD on the whole
student); as mdistiller and the C2KD release do, this is ONE joint objective CE + weight * L_HT.

Paired only (``needs_paired``).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.methods._common import (check_feature_maps, check_teacher, options, per_sample_maps, resize_hw,
                                       split_extra, stage_channels, teacher_stage_maps)
from ucmkd_jax.methods.base import MethodConfig, register
from ucmkd_jax.models.model import Model

__all__ = ["FitNetConfig", "HintRegressor", "hint_loss", "build_fitnet"]


@dataclasses.dataclass(frozen=True)
class FitNetConfig:
    """stage: 1-based ResNet stage of both hint (teacher) and guided (student) maps; weight: of
    L_HT; relu: end the regressor in a ReLU (the teacher map's non-linearity); bn: BatchNorm
    between the convolution and the ReLU (mdistiller's ConvReg); resize: how the student's map
    is brought to the teacher's (h, w): "align_corners" (C2KD's release) or "half_pixel"."""

    stage: int = 2
    weight: float = 100.0
    ce_weight: float = 1.0
    relu: bool = True
    bn: bool = True
    resize: Literal["align_corners", "half_pixel"] = "align_corners"


class HintRegressor(nn.Module):
    """r: 1x1 convolution (with bias) to the teacher's channels, BatchNorm (PyTorch's momentum 0.1
    and eps 1e-5; batch statistics when ``train``), then ReLU. (n, h, w, c_s) -> (n, h, w, c_t)."""

    channels: int
    relu: bool = True
    bn: bool = True

    @nn.compact
    def __call__(self, v, train: bool = True):
        y = nn.Conv(self.channels, (1, 1), name="conv")(v)
        if self.bn:
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(y)
        return nn.relu(y) if self.relu else y


def hint_loss(regressed, hint):
    """L_HT: mean squared error over all elements (PyTorch's ``mse_loss``); the hint carries no
    gradient. regressed, hint (n, h, w, c). Returns a scalar."""
    return jnp.mean((regressed - jax.lax.stop_gradient(hint)) ** 2)


def _stage_index(student: Model, teacher: Model, opts: FitNetConfig) -> int:
    n = min(len(stage_channels(student)), len(stage_channels(teacher)))  # 4 ResNet stages, 5 ViT maps
    if not 1 <= opts.stage <= n:
        raise ValueError(f"fitnet stage must be in 1..{n}, got {opts.stage}")
    return opts.stage - 1


def init_fitnet(key, student, teacher, teacher_variables, config):
    opts: FitNetConfig = options(config, "fitnet", FitNetConfig())
    k = _stage_index(student, teacher, opts)
    reg = HintRegressor(stage_channels(teacher)[k], opts.relu, opts.bn)
    v = reg.init(key, jnp.zeros((1, 1, 1, stage_channels(student)[k]), jnp.float32), train=False)
    return {"params": {"regressor": v["params"]}, "batch_stats": {"regressor": v.get("batch_stats", {})}}


@register("fitnet", uses_teacher=True, needs_paired=True, init_extra=init_fitnet,
          summary="FitNets hints (Romero et al. 2014): CE + 100 MSE(1x1 conv-BN-ReLU regressor of a stage map, teacher's)")
def build_fitnet(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("fitnet", student, teacher, same_classes=False)
    check_feature_maps("fitnet", student, teacher)
    opts: FitNetConfig = options(config, "fitnet", FitNetConfig())
    k = _stage_index(student, teacher, opts)
    reg = HintRegressor(stage_channels(teacher)[k], opts.relu, opts.bn)
    resize = "bilinear_align_corners" if opts.resize == "align_corners" else "bilinear"

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        stats, extra_stats = split_extra(batch_stats)
        _, t_maps = teacher_stage_maps(teacher, teacher_variables, batch["x_t"])
        hint = t_maps[k]
        x_s = batch["x_s"]

        def loss_fn(p):
            z, new_stats, stages = student.encode(p["encoder"], stats, x_s, train=True, return_stages=True)
            ce = cross_entropy(student.classify(p["head"], z), batch["y_s"])
            guided = resize_hw(per_sample_maps(student, [stages[k]], x_s.shape[0])[0], hint.shape[1:3], resize)
            regressed, reg_vars = reg.apply({"params": p["extra"]["regressor"],
                                             "batch_stats": extra_stats["regressor"]}, guided, train=True,
                                            mutable=["batch_stats"])
            hint_l = hint_loss(regressed, hint)
            loss = opts.ce_weight * ce + opts.weight * hint_l
            return loss, (new_stats, reg_vars.get("batch_stats", {}), {"ce": ce, "hint": hint_l})

        (loss, (new_stats, reg_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, {**new_stats, "extra": {"regressor": reg_stats}}, dict(metrics, loss=loss)

    return grads_fn
