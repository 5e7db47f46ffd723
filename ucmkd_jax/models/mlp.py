"""The encoder of (N, D) vectors: an MLP of Dense + BatchNorm + ReLU layers."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ucmkd_jax.precision import at_least_f32

__all__ = ["MLPEncoder"]


class MLPEncoder(nn.Module):
    """(N, D) vectors -> (N, out_dim): ``depth`` Dense+BatchNorm+ReLU layers, ``hidden`` wide but
    the last. It has no spatial feature maps (``stage_channels`` is None): the feature-map
    baselines refuse it."""

    hidden: int = 256
    depth: int = 2
    out_dim: int = 512
    dtype: Any = jnp.float32
    stage_channels = None

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False):
        stages = []
        for i in range(self.depth):
            width = self.out_dim if i == self.depth - 1 else self.hidden
            x = nn.Dense(width, dtype=self.dtype, name=f"dense{i + 1}")(x.astype(self.dtype))
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype, name=f"bn{i + 1}")(x)
            x = nn.relu(x)
            stages.append(x)
        z = at_least_f32(x)
        return (z, stages) if return_stages else z
