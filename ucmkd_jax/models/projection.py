"""A trunk followed by a linear map into the shared latent space.

The teacher's head must score student features, p_T(y | phi(x_S)) (paper, Sec. 2.1), so both
encoders must end at the same latent size. A ResNet whose pooled width is not that size (a
ResNet-50's 2048, a narrow test network) gets a learned linear projection after its pooling.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ucmkd_jax.precision import at_least_f32

__all__ = ["ProjectedEncoder"]


class ProjectedEncoder(nn.Module):
    """``trunk`` then Dense(``out_dim``) (named "projection"). Stage maps, when asked for, are
    the trunk's (``stage_channels`` too), so the feature-map baselines see the trunk."""

    trunk: nn.Module
    out_dim: int
    dtype: Any = jnp.float32

    @property
    def stage_channels(self):
        return getattr(self.trunk, "stage_channels", None)

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False):
        z, stages = self.trunk(x, train, return_stages=True)
        z = at_least_f32(nn.Dense(self.out_dim, dtype=self.dtype, name="projection")(z))
        return (z, stages) if return_stages else z
