r"""The ResNet stem's two slow ops, rewritten: a max-pool without a scatter in its gradient and a
7x7 stride-2 stem convolution as a 4x4 stride-1 one on 2x2-blocked input (space-to-depth).

Both compute the same function as the plain op (``ResNetEncoder.pool_impl`` / ``stem_impl`` pick
one; "auto" takes the one measured faster on the platform at hand, ``AUTO``); neither stores a
parameter of its own, so the Flax parameter tree is the same whichever runs.

Max-pool (``max_pool``)
-----------------------
Forward: ``lax.reduce_window(max)`` with -inf padding, the very primitive ``flax.linen.max_pool``
uses, so the output is bitwise the reference's. Derivative: the reference's JVP is
``select_and_gather_add`` and its VJP ``select_and_scatter_add``, a scatter (the GPU profile's
``input_scatter_fusion``). Here the derivative is written out instead (``jax.custom_vjp``): with
:math:`x_p` the input padded by -inf and :math:`V_k(x_p)`, :math:`k = (d_y, d_x)` in row-major
order over the window, the strided view

.. math:: V_k(x_p)[n, i, j, c] = x_p[n, s i + d_y, s j + d_x, c],

the output is :math:`y = \max_k V_k(x_p)`, and where the window's maximum is attained once,
:math:`\partial y = V_{k^*}(\partial x_p)` with :math:`k^*` its position. With the masks

.. math:: F_k = [V_k(x_p) = y] \wedge \neg \bigvee_{l < k} [V_l(x_p) = y] \qquad (\text{and } V_k
   \text{ not a padding position})

(exactly one :math:`F_k` is true per output element: the FIRST maximum in row-major window order),
the tangent is :math:`\partial y = \sum_k F_k \odot V_k(\partial x_p)`, and the cotangent of
``x`` its transpose, :math:`\sum_k V_k^T(F_k \odot \bar y)`. The forward pass keeps the index of
the first maximum (``_first_max_index``, int8); the backward pass (``_route_cotangent``) adds
the masked cotangents phase by phase (dense pads and adds, one concatenation): no scatter. The
backward pass is itself plain JAX, so ``jax.grad`` of a gradient and ``jax.linearize`` of one (the
forward-over-reverse HVPs) work (tested against the reference); ``jax.jvp`` of the pool alone does
not (a ``custom_vjp``).

Where the window's maximum is unique this is the derivative of the reference, so the gradient
equals ``jax.grad`` of ``flax.linen.max_pool`` (tested). Where it is attained several times (ties),
the derivative does not exist; the rule here is PyTorch's (``max_pool2d``'s CPU and CUDA kernels
keep the first maximum in row-major window order, ``if (val > maxval)``): all of the window's
cotangent goes to that one element (tested against numpy loops). A window of -inf values routes it
to its first non-padding element (PyTorch's ``maxindex`` starts there). A window holding a NaN has
a NaN output, which equals nothing: its cotangent is dropped (PyTorch sends it to the last NaN).

Space-to-depth stem (``stem_conv_space_to_depth``)
--------------------------------------------------
The stem is :math:`y[o] = \sum_{k=0}^{6} w[k]\, x[2 o + k - 3]` per spatial axis (padding 3,
stride 2; channels summed, written for one axis, the two axes are alike). Give the kernel a zero
tap in front, :math:`w'[k'] = w[k' - 1]` for :math:`k' = 1..7`, :math:`w'[0] = 0`, and pad the input
by 4 instead of 3, :math:`x_p[r] = x[r - 4]`: then :math:`y[o] = \sum_{k'=0}^{7} w'[k']\, x_p[2 o + k']`.
Write :math:`k' = 2 q + p` (:math:`q = 0..3`, :math:`p = 0..1`) and block the input by two,
:math:`b[m, p] = x_p[2 m + p]` (``space_to_depth``: 2x2 blocks become 4x the channels):

.. math:: y[o] = \sum_{q=0}^{3} \sum_{p=0}^{1} w'[2 q + p]\, b[o + q, p],

a 4x4 stride-1 VALID convolution of the blocked input with the rearranged kernel
:math:`w''[q, p] = w'[2 q + p]`. The output has :math:`\lceil H / 2 \rceil` rows like the plain
stem; the input is padded at the end so that the blocked input has :math:`\lceil H / 2 \rceil + 3`
rows (the extra rows are zeros the plain convolution also reads as padding). The 7x7 kernel is
the parameter; the 4x4 one is made from it inside the forward pass, so its gradient comes back to
the 7x7 kernel through the same rearrangement (``jax.grad`` of a reshape/transpose/pad). The two
compute the same sums in another order: equal to float32 rounding (tested, odd and even sizes).
It does 64/49 of the plain multiply-adds (the zero taps), in exchange for a stride-1 convolution
with 4x the input channels. ``pad_channels_to`` also zero-pads the blocked channels (4 or 12 for
1- or 3-channel input) to a multiple (8: tensor cores), the kernel with matching zeros.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["max_pool", "max_pool_reference", "stem_conv", "stem_conv_reference", "stem_conv_space_to_depth",
           "space_to_depth", "space_to_depth_kernel", "conv2d", "conv_patches", "resolve_impl", "StemConv", "Conv",
           "AUTO", "POOL_IMPLS", "STEM_IMPLS", "CONV_IMPLS"]

POOL_IMPLS = ("auto", "reduce_window", "masked")
CONV_IMPLS = ("auto", "conv", "patches_when_small")
STEM_IMPLS = ("auto", "conv", "conv_pad8", "space_to_depth", "space_to_depth_pad8", "space_to_depth_fwd")
# What "auto" means per platform (jax.default_backend()), from measurements (benchmarks/NOTES.md,
# "Performance II", the op_bench tables: on the CPU the masked pool's forward + backward was 3-6x
# faster than reduce_window's; the space-to-depth forward with the plain convolution's gradients
# was never slower than the plain stem, while space_to_depth differentiated as such was slower on
# the 3-channel video stem; patches_when_small was 7-17x faster on the maps below the kernel and
# is the plain convolution elsewhere). A platform not listed (no GPU measurement yet) gets the plain ops.
AUTO = {
    "pool": {"cpu": "masked"},
    "stem": {"cpu": "space_to_depth_fwd"},
    "conv": {"cpu": "patches_when_small"},
}


def resolve_impl(kind: Literal["pool", "stem", "conv"], impl: str, platform: Optional[str] = None) -> str:
    """The implementation ``impl`` stands for: itself, or for "auto" the ``AUTO`` choice of
    ``platform`` (default: ``jax.default_backend()``, read when the model is traced)."""
    plain = {"pool": "reduce_window", "stem": "conv", "conv": "conv"}[kind]
    valid = {"pool": POOL_IMPLS, "stem": STEM_IMPLS, "conv": CONV_IMPLS}[kind]
    if impl not in valid:
        raise ValueError(f"unknown {kind}_impl {impl!r}; expected one of {valid}")
    if impl != "auto":
        return impl
    return AUTO[kind].get(platform or jax.default_backend(), plain)


# ---------------------------------------------------------------------------------------- max-pool
def _pads(padding) -> Tuple[Tuple[int, int], ...]:
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def max_pool_reference(x, window: Sequence[int] = (3, 3), strides: Sequence[int] = (2, 2),
                       padding: Sequence[Tuple[int, int]] = ((1, 1), (1, 1))):
    """``flax.linen.max_pool`` on (N, H, W, C): the plain op (gradient: select-and-scatter)."""
    return nn.max_pool(x, tuple(window), tuple(strides), padding=_pads(padding))


def _reduce_window_max(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + tuple(window) + (1,), (1,) + tuple(strides) + (1,),
                             ((0, 0),) + tuple(padding) + ((0, 0),))


def _out_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    return (n + lo + hi - k) // s + 1


def _blocked(x, window, strides, padding, fill):
    """x (N, H, W, C) padded by ``fill`` (low side as ``padding``, high side to a whole number of
    blocks) and cut into stride-sized blocks: (N, Hb, s_y, Wb, s_x, C), Hb = Ho + (k_y - 1) // s_y.
    Padded row s_y * i + d_y (window offset d_y of output row i) is block i + d_y // s_y, phase
    d_y % s_y: every window view is a unit-stride slice of this array (``_view``)."""
    n, h, w, c = x.shape
    (kh, kw), (sy, sx), ((ply, phy), (plx, phx)) = window, strides, padding
    ho, wo = _out_size(h, kh, sy, ply, phy), _out_size(w, kw, sx, plx, phx)
    hb, wb = ho + (kh - 1) // sy, wo + (kw - 1) // sx
    cfg = ((0, 0, 0), (ply, sy * hb - h - ply, 0), (plx, sx * wb - w - plx, 0), (0, 0, 0))
    xp = lax.pad(x, jnp.asarray(fill, x.dtype), cfg)  # a negative high side crops rows no window reads
    return xp.reshape(n, hb, sy, wb, sx, c), (ho, wo)


def _view(xb, out_hw, offset, strides):
    """View (d_y, d_x) of the blocked input: (N, Ho, Wo, C), element [n, i, j, c] = padded input
    [n, s_y i + d_y, s_x j + d_x, c]."""
    (ho, wo), (dy, dx), (sy, sx) = out_hw, offset, strides
    n, _, _, _, _, c = xb.shape
    qy, py, qx, px = dy // sy, dy % sy, dx // sx, dx % sx
    v = lax.slice(xb, (0, qy, py, qx, px, 0), (n, qy + ho, py + 1, qx + wo, px + 1, c))
    return v.reshape(n, ho, wo, c)


def _offsets(window):
    return [(dy, dx) for dy in range(window[0]) for dx in range(window[1])]


def _first_max_index(x, y, window, strides, padding):
    """(N, Ho, Wo, C) int8: k of the first view (row-major window order) equal to the output y,
    padding excluded; K where none is (a window holding a NaN). The padding here is NaN, which
    equals nothing: so a window of -inf values picks its first real position. (A mask of the
    padding positions instead, constant or from iotas, made XLA:CPU's fused backward 3-4x slower.)"""
    xb, out_hw = _blocked(x, window, strides, padding, jnp.nan)
    offsets = _offsets(window)
    idx = jnp.full(y.shape, len(offsets), jnp.int8)
    for k in reversed(range(len(offsets))):  # the lowest k that hits wins
        idx = jnp.where(_view(xb, out_hw, offsets[k], strides) == y, jnp.int8(k), idx)
    return idx


def _route_cotangent(idx, g, in_hw, window, strides, padding):
    """The input's cotangent: each output's cotangent g to the input position idx names, i.e. the
    transpose of t -> sum_k [idx == k] V_k(t), assembled phase by phase (no scatter).

    Input row r = s_y i + d_y - p_y (output row i, window offset d_y): write r = s_y m + f with
    phase f = (d_y - p_y) mod s_y and m = i + e, e = floor((d_y - p_y) / s_y). So phase plane
    (f_y, f_x), (N, ceil(H / s_y), ceil(W / s_x), C), is the sum over the offsets of that phase of
    the masked cotangent shifted by (e_y, e_x) rows and columns; the s_y * s_x planes are stacked
    and reshaped into (N, s_y ceil(H / s_y), s_x ceil(W / s_x), C), then cut to (H, W). XLA fuses
    this into one concatenation-rooted loop: on XLA:CPU about 3x faster than select-and-scatter
    and than the transpose JAX derives from the views (pads with interior padding)."""
    (h, w), (sy, sx), ((ply, _), (plx, _)) = in_hw, strides, padding
    n, ho, wo, c = g.shape
    mh, mw = -(-h // sy), -(-w // sx)
    zero = jnp.zeros((), g.dtype)
    planes = {}
    # Offsets in reverse order: a position's contributions are then added in the row-major order
    # of their windows, the order select-and-scatter adds them in (bitwise equal on XLA:CPU).
    for k, (dy, dx) in reversed(list(enumerate(_offsets(window)))):
        ey, ex = (dy - ply) // sy, (dx - plx) // sx
        term = lax.pad(jnp.where(idx == k, g, zero), zero,
                       ((0, 0, 0), (ey, mh - ho - ey, 0), (ex, mw - wo - ex, 0), (0, 0, 0)))
        key = ((dy - ply) % sy, (dx - plx) % sx)
        planes[key] = term if key not in planes else planes[key] + term
    empty = jnp.zeros((n, mh, mw, c), g.dtype)  # a phase no offset reaches (stride > window)
    full = jnp.stack([jnp.stack([planes.get((fy, fx), empty) for fx in range(sx)], 3) for fy in range(sy)], 2)
    return full.reshape(n, mh * sy, mw * sx, c)[:, :h, :w]


def _make_masked_pool(window, strides, padding):
    @jax.custom_vjp
    def pool(x):
        return _reduce_window_max(x, window, strides, padding)

    def fwd(x):
        y = _reduce_window_max(x, window, strides, padding)
        return y, (_first_max_index(x, y, window, strides, padding), x.shape[1:3])

    def bwd(res, g):
        idx, in_hw = res
        return (_route_cotangent(idx, g, in_hw, window, strides, padding),)

    pool.defvjp(fwd, bwd)
    return pool


_POOLS: dict = {}


def max_pool(x, window: Sequence[int] = (3, 3), strides: Sequence[int] = (2, 2),
             padding: Sequence[Tuple[int, int]] = ((1, 1), (1, 1)), impl: str = "masked"):
    """Max-pool of (N, H, W, C) with -inf padding (the ResNet stem's is 3x3, stride 2, padding 1).

    impl: "masked" (the output of the reference, bitwise; a scatter-free derivative with
    PyTorch's tie rule, module docstring), "reduce_window" (``flax.linen.max_pool`` itself) or
    "auto" (``resolve_impl``)."""
    window, strides, padding = tuple(int(w) for w in window), tuple(int(s) for s in strides), _pads(padding)
    impl = resolve_impl("pool", impl)
    if impl == "reduce_window":
        return max_pool_reference(x, window, strides, padding)
    if any(lo >= w or hi >= w for (lo, hi), w in zip(padding, window)):
        raise ValueError(f"padding {padding} must be smaller than the window {window} (a window of padding only)")
    key = (window, strides, padding)
    if key not in _POOLS:
        _POOLS[key] = _make_masked_pool(*key)
    return _POOLS[key](x)


# ---------------------------------------------------------------------------------------- stem
def _pad_channels(x, kernel, multiple: int):
    """Zero-pad the input channels of x (N, H, W, C) and kernel (kh, kw, C, F) to a multiple."""
    extra = -x.shape[-1] % max(int(multiple), 1)
    if not extra:
        return x, kernel
    return (jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))),
            jnp.pad(kernel, ((0, 0), (0, 0), (0, extra), (0, 0))))


def stem_conv_reference(x, kernel, dtype: Any = None, pad_channels_to: int = 1):
    """The plain 7x7 stride-2 padding-3 stem convolution, as ``flax.linen.Conv`` computes it:
    x (N, H, W, C), kernel (7, 7, C, F) -> (N, ceil(H/2), ceil(W/2), F). ``pad_channels_to``:
    zero-pad the input channels (and the kernel's) to a multiple of this first (same sums)."""
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
    x, kernel = _pad_channels(x, kernel, pad_channels_to)
    return lax.conv_general_dilated(x, kernel, (2, 2), ((3, 3), (3, 3)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def space_to_depth(x, block: int = 2):
    """(N, H, W, C) with H, W divisible by ``block`` -> (N, H/b, W/b, b*b*C), channel order
    (row in block, column in block, c)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def space_to_depth_kernel(kernel):
    """(7, 7, C, F) stride-2 kernel -> the (4, 4, 4C, F) stride-1 kernel of the blocked input
    (module docstring: a zero tap in front, then k' = 2q + p split into q and the block's p)."""
    kh, kw, c, f = kernel.shape
    if (kh, kw) != (7, 7):
        raise ValueError(f"space_to_depth_kernel expects a 7x7 kernel, got {kernel.shape}")
    k = jnp.pad(kernel, ((1, 0), (1, 0), (0, 0), (0, 0)))  # (8, 8, C, F), w'[0] = 0
    k = k.reshape(4, 2, 4, 2, c, f).transpose(0, 2, 1, 3, 4, 5)  # (q_y, q_x, p_y, p_x, C, F)
    return k.reshape(4, 4, 4 * c, f)


def stem_conv_space_to_depth(x, kernel, dtype: Any = None, pad_channels_to: int = 1):
    """The stem convolution as a 4x4 stride-1 VALID convolution on the 2x2-blocked input (module
    docstring); same shapes and values as ``stem_conv_reference`` (up to float rounding).
    ``pad_channels_to``: zero-pad the blocked channels (4C) up to a multiple of this (e.g. 8)."""
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
    n, h, w, c = x.shape
    ho, wo = -(-h // 2), -(-w // 2)
    xp = jnp.pad(x, ((0, 0), (4, 2 * ho + 2 - h), (4, 2 * wo + 2 - w), (0, 0)))  # (N, 2Ho+6, 2Wo+6, C)
    xb, kb = _pad_channels(space_to_depth(xp), space_to_depth_kernel(kernel), pad_channels_to)
    return lax.conv_general_dilated(xb, kb, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _s2d_forward_plain_backward(x, kernel):
    return stem_conv_space_to_depth(x, kernel)


def _s2d_fwd(x, kernel):
    return stem_conv_space_to_depth(x, kernel), (x, kernel)


def _s2d_bwd(res, g):
    x, kernel = res
    return jax.vjp(stem_conv_reference, x, kernel)[1](g)


_s2d_forward_plain_backward.defvjp(_s2d_fwd, _s2d_bwd)


def stem_conv(x, kernel, dtype: Any = None, impl: str = "auto"):
    """The 7x7 stride-2 stem convolution (x (N, H, W, C), kernel (7, 7, C, F)) by ``impl``:

    "conv"                plain (``stem_conv_reference``);
    "conv_pad8"           plain, input channels zero-padded to 8 (tensor cores);
    "space_to_depth"      the 4x4 stride-1 convolution of the blocked input, differentiated as such;
    "space_to_depth_pad8" the same, blocked channels (4 or 12) zero-padded to a multiple of 8;
    "space_to_depth_fwd"  space-to-depth forward, the plain convolution's gradients (a
                          ``jax.custom_vjp``: reverse mode and forward-over-reverse, no ``jax.jvp``);
    "auto"                ``resolve_impl``.
    All compute the same function (up to float rounding) from the same 7x7 kernel."""
    impl = resolve_impl("stem", impl)
    if impl == "conv":
        return stem_conv_reference(x, kernel, dtype)
    if impl == "conv_pad8":
        return stem_conv_reference(x, kernel, dtype, pad_channels_to=8)
    if impl == "space_to_depth":
        return stem_conv_space_to_depth(x, kernel, dtype)
    if impl == "space_to_depth_pad8":
        return stem_conv_space_to_depth(x, kernel, dtype, pad_channels_to=8)
    return _s2d_forward_plain_backward(*nn.dtypes.promote_dtype(x, kernel, dtype=dtype))


class StemConv(nn.Module):
    """The imagenet stem's convolution with the parameters of ``nn.Conv(features, (7, 7), (2, 2),
    padding 3, use_bias=False)``: one ``kernel`` (7, 7, C, features), initialised alike, so
    checkpoints and the torch weight mapping do not depend on ``impl``."""

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (7, 7, x.shape[-1], self.features), jnp.float32)
        return stem_conv(x, kernel, self.dtype, self.impl)


# ---------------------------------------------------------------------------------------- body convolutions
def _spatial_below_kernel(in_hw, out_hw, kernel_hw) -> bool:
    """Whether a convolution's input or output has fewer spatial positions than its kernel has taps:
    XLA:CPU's algebraic simplifier then swaps the operands (the input becomes the kernel,
    ``SwapConvOperands``), and the swapped convolution runs in a naive loop, 10-15x slower than
    its YNNPACK/Eigen kernel (a (16, 2, 4, 128) 3x3 convolution: 15 ms against 1 ms; the same
    happens to the backward convolutions of a stride-2 layer with such an output)."""
    taps = kernel_hw[0] * kernel_hw[1]
    return taps > 1 and (in_hw[0] * in_hw[1] < taps or out_hw[0] * out_hw[1] < taps)


def conv_patches(x, kernel, strides: Sequence[int], padding: Sequence[Tuple[int, int]]):
    """The convolution as one matrix product: the kh * kw strided views of the padded input side by
    side (N, Ho, Wo, kh kw C) times the kernel reshaped (kh kw C, F). Same sums as
    ``lax.conv_general_dilated`` (NHWC, HWIO), in another order."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    (sy, sx), ((pt, pb), (pl, pr)) = strides, padding
    ho, wo = _out_size(h, kh, sy, pt, pb), _out_size(w, kw, sx, pl, pr)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    views = [lax.slice(xp, (0, dy, dx, 0), (n, dy + sy * (ho - 1) + 1, dx + sx * (wo - 1) + 1, c), (1, sy, sx, 1))
             for dy in range(kh) for dx in range(kw)]
    patches = jnp.concatenate(views, axis=-1).reshape(n * ho * wo, kh * kw * c)
    return (patches @ kernel.reshape(kh * kw * c, f)).reshape(n, ho, wo, f)


def conv2d(x, kernel, strides: Sequence[int] = (1, 1), padding: Sequence[Tuple[int, int]] = ((0, 0), (0, 0)),
           impl: str = "auto"):
    """A 2D convolution (x NHWC, kernel HWIO, no dilation or groups) by ``impl``: "conv" (plain
    ``lax.conv_general_dilated``), "patches_when_small" (``conv_patches`` where the input or output
    has fewer positions than the kernel has taps, ``_spatial_below_kernel``; plain elsewhere) or
    "auto" (``resolve_impl``)."""
    strides, padding = tuple(int(s) for s in strides), _pads(padding)
    impl = resolve_impl("conv", impl)
    if impl == "patches_when_small":
        kh, kw = kernel.shape[:2]
        out_hw = (_out_size(x.shape[1], kh, strides[0], *padding[0]), _out_size(x.shape[2], kw, strides[1], *padding[1]))
        if _spatial_below_kernel(x.shape[1:3], out_hw, (kh, kw)):
            return conv_patches(x, kernel, strides, padding)
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
    """``nn.Conv(features, kernel_size, strides, padding, use_bias=False)``'s parameter (one
    ``kernel``, (kh, kw, C, features), initialised alike), computed by ``conv2d(impl)``."""

    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Tuple[Tuple[int, int], Tuple[int, int]] = ((0, 0), (0, 0))
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return conv2d(x, kernel, self.strides, self.padding, self.impl)
