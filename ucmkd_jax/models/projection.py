"""A trunk followed by a linear map into the shared latent space.

The teacher's head must score student features, p_T(y | phi(x_S)) (paper, Sec. 2.1), so both
encoders must end at the same latent size. A ResNet whose pooled width is not that size (a
ResNet-50's 2048, a narrow test network) gets a learned linear projection after its pooling.
The authors' ViT release brings ViT-S's 384-wide CLS token to the teacher's 768 / 1024 with
Linear -> BatchNorm1d -> ReLU (``kind="linear_bn_relu"``).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ucmkd_jax.precision import at_least_f32

__all__ = ["ProjectedEncoder", "PROJECTIONS"]

PROJECTIONS = ("linear", "linear_bn_relu")


class ProjectedEncoder(nn.Module):
    """``trunk`` then Dense(``out_dim``) (named "projection"), followed for
    ``kind="linear_bn_relu"`` by BatchNorm (named "projection_bn"; PyTorch's momentum 0.1, eps
    1e-5) and ReLU. Stage maps, when asked for, are the trunk's (``stage_channels`` too), so the
    feature-map baselines see the trunk."""

    trunk: nn.Module
    out_dim: int
    dtype: Any = jnp.float32
    kind: str = "linear"

    @property
    def stage_channels(self):
        return getattr(self.trunk, "stage_channels", None)

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False):
        z, stages = self.trunk(x, train, return_stages=True)
        if self.kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.kind!r}")
        z = nn.Dense(self.out_dim, dtype=self.dtype, name="projection")(z)
        if self.kind == "linear_bn_relu":
            z = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             name="projection_bn")(z)
            z = nn.relu(z)
        z = at_least_f32(z)
        return (z, stages) if return_stages else z
