"""Vision Transformers (Dosovitskiy et al., 2021): ViT-S/16, ViT-B/16, ViT-L/16 encoders.

The layout is torchvision's ``vit_b_16`` / timm's ``vit_*_patch16_224`` (the two the authors'
release builds on), so that their ImageNet weights convert one to one
(``ucmkd_jax.models.pretrained``):

    tokens = [cls; Dense(patchify_16(x))] + pos                       (N, 1 + gh gw, d)
    block:   t = t + Proj(MHA(LN_1(t)));  t = t + FC_2(GELU(FC_1(LN_2(t))))   (pre-LN, exact GELU)
    z      = LN(t)[:, 0]                                               (the CLS token, d wide)

with LayerNorm eps 1e-6, MLP width 4d and heads of width d / heads (64 for the standard sizes).
A 16 x 16 patch embedding with stride 16 is a matmul on the (16 * 16 * C)-long patch vectors
(kernel flattened in (row, column, channel) order). Attention is ``jax.nn.dot_product_attention``:
cuDNN's fused kernel on a GPU in bfloat16 ("auto"), XLA's elsewhere (and wherever the step
differentiates the attention twice, which the fused kernel cannot: the unrolled hypergradient).

Inputs (N, H, W, C) of any size: first resized bilinearly to ``input_size`` when one is set (the
release's 257 x 1004 spectrograms go to 256 x 1024), then cut into (H / 16) x (W / 16) patches;
when that grid differs from the position embeddings' (``pos_grid``) the embeddings are resampled
as timm does (bicubic, antialiased, the CLS entry kept: ``resample_pos_embed``).

Feature maps (``return_stages``): the patch tokens after the blocks ``taps`` (default: 2, 5, 8,
11 for 12 blocks and 5, 11, 17, 23 for 24, the release's taps) and after the final LayerNorm,
each reshaped to (N, gh, gw, d): five maps, all d wide, for FitNet / ReviewKD / C2KD.
Parameters stay float32; ``dtype`` is the compute dtype; ``remat`` recomputes each block's
activations in the backward pass (``jax.checkpoint``) instead of keeping them.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucmkd_jax.precision import at_least_f32

__all__ = ["ViTEncoder", "ViTBlock", "SelfAttention", "VIT_SIZES", "VIT_OPTIONS", "PATCH", "default_taps",
           "resample_pos_embed", "patchify", "resolve_attention", "grid_of", "default_input_size", "make_vit"]

PATCH = 16
# name -> (blocks, heads) at head width 64: token width d = 64 * heads (384, 768, 1024).
VIT_SIZES = {"vit_s16": (12, 6), "vit_b16": (12, 12), "vit_l16": (24, 16)}
LN_EPS = 1e-6  # torchvision and timm ViTs
ATTENTION = ("auto", "xla", "cudnn")

_dense_init = nn.initializers.truncated_normal(0.02)  # timm's trunc_normal_(std=.02) for Linear layers


def default_taps(depth: int) -> Tuple[int, ...]:
    """0-based blocks whose tokens are the first four feature maps: ceil((k + 1) * depth / 4) - 1
    for k = 0..3, i.e. (2, 5, 8, 11) at depth 12, (5, 11, 17, 23) at 24, (0, 0, 1, 1) at 2."""
    return tuple(-(-(k + 1) * depth // 4) - 1 for k in range(4))


def grid_of(hw: Tuple[int, int], patch: int = PATCH) -> Tuple[int, int]:
    """Patch grid of an (H, W) input; ValueError unless both sides divide by ``patch``."""
    h, w = int(hw[0]), int(hw[1])
    if h % patch or w % patch or h < patch or w < patch:
        raise ValueError(f"a ViT cuts its input into {patch} x {patch} patches: (H, W) = ({h}, {w}) must be "
                         f"multiples of {patch} (resize first: input_size)")
    return h // patch, w // patch


def patchify(x, patch: int = PATCH):
    """(N, H, W, C) -> (N, H / p, W / p, p * p * C), each patch flattened in (row, col, channel)
    order (torch's conv weight (d, C, p, p) permuted to (p, p, C, d) is the matching kernel)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // patch, w // patch, patch * patch * c)


def resample_pos_embed(pos, new_grid: Tuple[int, int], old_grid: Tuple[int, int], num_prefix: int = 1):
    """timm's ``resample_abs_pos_embed``: the (1, prefix + gh * gw, d) embeddings with their grid
    part resized from ``old_grid`` to ``new_grid`` by antialiased bicubic interpolation (PyTorch's
    ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``, which
    ``jax.image.resize`` matches), the prefix (CLS) entries kept. Unchanged when the grids match."""
    new_grid, old_grid = tuple(int(g) for g in new_grid), tuple(int(g) for g in old_grid)
    if new_grid == old_grid:
        return pos
    d = pos.shape[-1]
    if pos.shape[1] != num_prefix + old_grid[0] * old_grid[1]:
        raise ValueError(f"position embeddings of {pos.shape[1]} tokens are not {num_prefix} + a "
                         f"{old_grid[0]} x {old_grid[1]} grid")
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:].reshape(1, old_grid[0], old_grid[1], d)
    grid = jax.image.resize(at_least_f32(grid), (1, new_grid[0], new_grid[1], d), "bicubic", antialias=True)
    return jnp.concatenate([prefix, grid.reshape(1, -1, d).astype(pos.dtype)], axis=1)


def resolve_attention(implementation: str, dtype, head_dim: int) -> str:
    """"auto" -> "cudnn" on a GPU for 16-bit compute and head widths the fused kernel takes
    (a multiple of 8, at most 128), else "xla"; "xla" and "cudnn" are kept."""
    if implementation not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    ok = half and head_dim % 8 == 0 and head_dim <= 128 and jax.default_backend() == "gpu"
    return "cudnn" if ok else "xla"


class SelfAttention(nn.Module):
    """Multi-head self-attention: one Dense to q, k, v (3d, torch's in_proj / timm's qkv, rows
    ordered q | k | v and head by head inside each), softmax(q k^T / sqrt(d_h)) v, Dense back."""

    dim: int
    heads: int
    dtype: Any = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x):
        n, t, _ = x.shape
        hd = self.dim // self.heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(n, t, 3, self.heads, hd), 3, axis=2)
        impl = resolve_attention(self.attention, self.dtype, hd)
        out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], implementation=impl)
        return nn.Dense(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="proj")(out.reshape(n, t, self.dim))


class ViTBlock(nn.Module):
    """Pre-LN transformer block (see the module docstring)."""

    dim: int
    heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln1")(x)
        x = x + SelfAttention(self.dim, self.heads, self.dtype, self.attention, name="attn")(y)
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln2")(x)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(y)
        y = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(nn.gelu(y, approximate=False))
        return x + y


class ViTEncoder(nn.Module):
    """ViT trunk: (N, H, W, C) -> (N, dim) final-LayerNorm CLS token (float32).

    Attributes:
      dim, depth, heads: token width, blocks, attention heads (``VIT_SIZES``: 384/12/6 for S,
        768/12/12 for B, 1024/24/16 for L); the MLP is ``mlp_ratio * dim`` wide.
      input_size: (H, W) every input is resized to first (bilinear, no antialiasing, PyTorch's
        ``align_corners=False``); None: inputs are used as they are (sides multiples of 16).
      pos_grid: the grid of the learned position embeddings; None: the input's (after the
        resize). Other grids resample them (``resample_pos_embed``).
      taps: 0-based blocks whose patch tokens are feature maps (None: ``default_taps``).
      remat: ``jax.checkpoint`` every block (activations recomputed in the backward pass).
      attention: "auto", "xla" or "cudnn" (``resolve_attention``).
      dtype: compute dtype (parameters stay float32).
      arch: the backbone name, for descriptions.
    """

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    patch: int = PATCH
    input_size: Optional[Tuple[int, int]] = None
    pos_grid: Optional[Tuple[int, int]] = None
    taps: Optional[Tuple[int, ...]] = None
    remat: bool = False
    attention: str = "auto"
    dtype: Any = jnp.float32
    arch: str = "vit"

    @property
    def feature_taps(self) -> Tuple[int, ...]:
        return tuple(self.taps) if self.taps is not None else default_taps(self.depth)

    @property
    def stage_channels(self) -> tuple:
        """Widths of the maps ``return_stages`` gives: the taps' and the final LayerNorm's."""
        return (self.dim,) * (len(self.feature_taps) + 1)

    @property
    def out_dim(self) -> int:
        return self.dim

    @nn.compact
    def __call__(self, x, train: bool = False, return_stages: bool = False):
        """Args: x (N, H, W, C) float; ``train`` is accepted for the encoder interface (no
        dropout, no BatchNorm). Returns z (N, dim) float32, plus the list of the feature maps
        (N, gh, gw, dim) when ``return_stages``."""
        del train
        if self.dim % self.heads:
            raise ValueError(f"ViT width {self.dim} does not split into {self.heads} heads")
        if any(not 0 <= t < self.depth for t in self.feature_taps):
            raise ValueError(f"ViT taps {self.feature_taps} must be blocks 0..{self.depth - 1}")
        n = x.shape[0]
        if self.input_size is not None and tuple(x.shape[1:3]) != tuple(self.input_size):
            x = jax.image.resize(at_least_f32(x), (n, *self.input_size, x.shape[-1]), "bilinear", antialias=False)
        gh, gw = grid_of(x.shape[1:3], self.patch)
        x = patchify(x.astype(self.dtype), self.patch)
        x = nn.Dense(self.dim, dtype=self.dtype, name="patch_embed")(x).reshape(n, gh * gw, self.dim)
        pos_grid = tuple(self.pos_grid) if self.pos_grid is not None else (gh, gw)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim), jnp.float32)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + pos_grid[0] * pos_grid[1], self.dim),
                         jnp.float32)
        pos = resample_pos_embed(pos, (gh, gw), pos_grid)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.dim)), x], axis=1)
        x = x + pos.astype(self.dtype)
        block = nn.remat(ViTBlock) if self.remat else ViTBlock
        stages = []

        def grid(tokens):
            return tokens[:, 1:].reshape(n, gh, gw, self.dim)

        for i in range(self.depth):
            x = block(self.dim, self.heads, self.mlp_ratio * self.dim, self.dtype, self.attention,
                      name=f"block{i + 1}")(x)
            if return_stages:  # a block tapped twice (depth < 4) gives its map twice
                stages += [grid(x)] * self.feature_taps.count(i)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln")(x)
        z = at_least_f32(x[:, 0])
        if return_stages:
            return z, stages + [grid(x)]
        return z


# Keywords of the ViT backbones' ``make`` (``build_model(options=...)``).
VIT_OPTIONS = ("depth", "remat", "attention", "input_size")


def default_input_size(hw: Tuple[int, int], patch: int = PATCH) -> Tuple[int, int]:
    """(H, W) itself when both sides are multiples of ``patch``, else each side rounded to the
    nearest multiple (at least one patch)."""
    return tuple(max(patch, int(round(s / patch)) * patch) for s in hw)


def make_vit(name: str, input_shape, heads: int, width: int, depth: int, dtype, remat: bool = False,
             attention: str = "auto", input_size: Optional[Tuple[int, int]] = None) -> ViTEncoder:
    """The ``ViTEncoder`` of backbone ``name`` for per-sample (H, W, C) frames: ``heads`` heads of
    width ``width`` (64: the standard ViT; the token width is heads * width), ``depth`` blocks,
    inputs resized to ``input_size`` (None: ``default_input_size``), position embeddings on that
    size's grid."""
    hw = tuple(int(s) for s in input_shape[-3:-1])
    size = tuple(int(s) for s in input_size) if input_size is not None else default_input_size(hw)
    if len(size) != 2:
        raise ValueError(f"{name}: input_size must be (H, W), got {input_size}")
    if depth < 1:
        raise ValueError(f"{name}: depth must be >= 1, got {depth}")
    return ViTEncoder(dim=heads * width, depth=depth, heads=heads, input_size=None if size == hw else size,
                      pos_grid=grid_of(size), remat=bool(remat), attention=attention, dtype=dtype, arch=name)
