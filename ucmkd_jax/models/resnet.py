"""ResNet-18/50 encoders (Flax Linen) with an audio stem and a per-frame visual stem.

The encoder maps an input batch to a latent vector z (the globally pooled last feature map,
``8 * width`` channels for ResNet-18, ``32 * width`` for ResNet-50; 512 / 2048 at the standard
width 64). Linen is used on purpose: ``module.apply(variables, x)`` is a pure function of the
(params, batch_stats) pytrees, which is what the bilevel step differentiates through several
inner updates (Flax NNX needs ``merge(copy=True)`` gymnastics under nested ``jax.grad``).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ucmkd_jax.models.ops import Conv, StemConv, max_pool, resolve_impl
from ucmkd_jax.precision import at_least_f32

__all__ = ["ResNetEncoder", "BasicBlock", "Bottleneck", "STAGES"]

# (blocks per stage, block kind) per depth, He et al. (2016), Table 1; resnet10 (one basic block
# per stage, not in that table or the paper) traces and compiles in about half ResNet-18's time:
# the test suite's conv model, and a quick one for trying a setup out.
STAGES = {
    "resnet10": ((1, 1, 1, 1), "basic"),
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
}


def _norm(train: bool, dtype: Any, name: str | None = None, zero_init: bool = False):
    # momentum 0.9 == PyTorch's BatchNorm momentum 0.1; eps 1e-5 as in PyTorch.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )


_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal, fan_out


def _conv_factory(dtype: Any, conv_impl: str):
    """conv(features, k, stride, name): a k x k "same"-padded convolution without bias, ``nn.Conv``
    or, when ``conv_impl`` resolves to another implementation, ``ops.Conv`` (the same parameter)."""
    impl = resolve_impl("conv", conv_impl)

    def conv(f, k, s, name):
        if impl == "conv":
            return nn.Conv(f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False,
                           kernel_init=_conv_init, dtype=dtype, name=name)
        return Conv(f, (k, k), (s, s), padding=((k // 2, k // 2),) * 2, kernel_init=_conv_init, dtype=dtype,
                    impl=impl, name=name)
    return conv


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        conv = _conv_factory(self.dtype, self.conv_impl)
        y = conv(self.filters, 3, self.strides, "conv1")(x)
        y = nn.relu(_norm(train, self.dtype, "bn1")(y))
        y = conv(self.filters, 3, 1, "conv2")(y)
        y = _norm(train, self.dtype, "bn2")(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            x = conv(self.filters, 1, self.strides, "proj_conv")(x)
            x = _norm(train, self.dtype, "proj_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), torchvision's stride-on-3x3 variant."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        conv = _conv_factory(self.dtype, self.conv_impl)
        y = nn.relu(_norm(train, self.dtype, "bn1")(conv(self.filters, 1, 1, "conv1")(x)))
        y = nn.relu(_norm(train, self.dtype, "bn2")(conv(self.filters, 3, self.strides, "conv2")(y)))
        y = _norm(train, self.dtype, "bn3")(conv(4 * self.filters, 1, 1, "conv3")(y))
        if x.shape[-1] != 4 * self.filters or self.strides != 1:
            x = _norm(train, self.dtype, "proj_bn")(conv(4 * self.filters, 1, self.strides, "proj_conv")(x))
        return nn.relu(x + y)


class ResNetEncoder(nn.Module):
    """ResNet trunk: (N, H, W, C) images -> (N, D) pooled features.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: "basic" or "bottleneck".
      width: channels of the first stage (64 in the paper); stage k has width * 2**k
        (times 4 for bottleneck blocks).
      stem: "imagenet" (7x7 stride-2 conv + 3x3 stride-2 max-pool, for inputs >= 64 px)
        or "small" (3x3 stride-1 conv, no pool, for 32x32-like inputs).
      dtype: compute dtype (parameters stay float32).
      stem_impl: how the imagenet stem's 7x7 stride-2 convolution is computed
        (``ucmkd_jax.models.ops.stem_conv``): "conv" (plain), "space_to_depth" (a 4x4 stride-1
        convolution on 2x2-blocked input), ..., or "auto" (the one measured faster on the
        platform, ``ops.AUTO``). Same function and the same parameters whichever runs.
      pool_impl: the imagenet stem's max-pool (``ucmkd_jax.models.ops.max_pool``):
        "reduce_window" (``flax.linen.max_pool``, select-and-scatter gradient), "masked" (the
        same output, a scatter-free gradient; ties: the first maximum, as PyTorch) or "auto".
      conv_impl: the blocks' convolutions (``ucmkd_jax.models.ops.conv2d``): "conv" (plain),
        "patches_when_small" (one matrix product where a map has fewer positions than the
        kernel has taps: XLA:CPU's slow case) or "auto".
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    stem: str = "imagenet"
    dtype: Any = jnp.float32
    stem_impl: str = "auto"
    pool_impl: str = "auto"
    conv_impl: str = "auto"

    @property
    def stage_channels(self) -> tuple:
        """Channels of the stage maps ``return_stages`` gives (width * 2^k, x4 for bottlenecks)."""
        mult = 4 if self.block == "bottleneck" else 1
        return tuple(self.width * 2**i * mult for i in range(len(self.stage_sizes)))

    @property
    def out_dim(self) -> int:
        return self.stage_channels[-1]

    @nn.compact
    def __call__(self, x, train: bool, return_stages: bool = False):
        """Args: x (N, H, W, C) float. Returns z (N, out_dim) float32, plus the list of the
        stage feature maps (N, h_k, w_k, c_k) when ``return_stages``."""
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            stem_impl = resolve_impl("stem", self.stem_impl)
            if stem_impl == "conv":
                x = nn.Conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                            kernel_init=_conv_init, dtype=self.dtype, name="stem_conv")(x)
            else:  # the same "stem_conv/kernel" (7, 7, C, width) parameter, computed another way
                x = StemConv(self.width, kernel_init=_conv_init, dtype=self.dtype, impl=stem_impl,
                             name="stem_conv")(x)
            x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
            x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), impl=self.pool_impl)
        elif self.stem == "small":
            x = nn.Conv(self.width, (3, 3), (1, 1), padding=[(1, 1), (1, 1)], use_bias=False,
                        kernel_init=_conv_init, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; expected 'imagenet' or 'small'")
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        stages = []
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if (i > 0 and j == 0) else 1
                x = block_cls(self.width * 2**i, strides, self.dtype, self.conv_impl,
                              name=f"stage{i + 1}_block{j + 1}")(x, train)
            stages.append(x)
        z = jnp.mean(at_least_f32(x), axis=(1, 2))
        return (z, stages) if return_stages else z
