"""The stem's two rewritten ops (ucmkd_jax.models.ops) against independent references: numpy loops
for the max-pool (PyTorch's tie rule), the plain convolution for space-to-depth, jax.grad of the
reference max-pool where it has no ties."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.models import build_model, describe_model, ops
from ucmkd_jax.models.resnet import ResNetEncoder

POOL = ((3, 3), (2, 2), ((1, 1), (1, 1)))  # the ResNet stem's


# ------------------------------------------------------------------------------ numpy references
def _np_pool(x, g, window, strides, padding):
    """Max-pool output and the input's cotangent by PyTorch's rule (max_pool2d's kernels: the first
    maximum in row-major window order wins, `if (val > maxval)`; padding never chosen), loops."""
    n, h, w, c = x.shape
    (kh, kw), (sy, sx), ((py, _), (px, _)) = window, strides, padding
    ho, wo = g.shape[1:3]
    y = np.empty((n, ho, wo, c), x.dtype)
    dx = np.zeros(x.shape, np.float64)
    for b in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    best, pos = None, None
                    for dy in range(kh):
                        for dxx in range(kw):
                            r, col = i * sy + dy - py, j * sx + dxx - px
                            if 0 <= r < h and 0 <= col < w and (pos is None or x[b, r, col, ch] > best):
                                best, pos = x[b, r, col, ch], (r, col)
                    y[b, i, j, ch] = best
                    dx[b, pos[0], pos[1], ch] += g[b, i, j, ch]
    return y, dx


def _pool_grad(x, g, impl, window=POOL[0], strides=POOL[1], padding=POOL[2]):
    @jax.jit
    def value_and_grad(a, ct):
        y, pull = jax.vjp(lambda a: ops.max_pool(a, window, strides, padding, impl), a)
        return y, pull(ct)[0]
    y, dx = value_and_grad(jnp.asarray(x), jnp.asarray(g))
    return np.asarray(y), np.asarray(dx)


def _windows_have_ties(x, window, strides, padding) -> bool:
    n, h, w, c = x.shape
    (kh, kw), (sy, sx), ((py, _), (px, _)) = window, strides, padding
    ho, wo = (h + 2 * py - kh) // sy + 1, (w + 2 * px - kw) // sx + 1
    for i in range(ho):
        for j in range(wo):
            r0, c0 = max(i * sy - py, 0), max(j * sx - px, 0)
            win = x[:, r0:i * sy - py + kh, c0:j * sx - px + kw, :].reshape(n, -1, c)
            top = win.max(axis=1, keepdims=True)
            if ((win == top).sum(axis=1) > 1).any():
                return True
    return False


# ------------------------------------------------------------------------------ max-pool
@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (2, 8, 10, 4), (1, 7, 6, 2)])
def test_max_pool_forward_is_bitwise_the_reference_and_gradient_equal_without_ties(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert not _windows_have_ties(x, *POOL)
    out_shape = ops.max_pool_reference(jnp.asarray(x)).shape
    g = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)
    y_ref, dx_ref = _pool_grad(x, g, "reduce_window")
    y, dx = _pool_grad(x, g, "masked")
    np.testing.assert_array_equal(y, y_ref)  # the same reduce_window: bitwise
    # Contributions are added in the order select-and-scatter adds them: bitwise equal on XLA:CPU
    # (a backend that reordered the sums would differ by rounding only).
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=0)
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(dx, dx_ref)
    y_np, dx_np = _np_pool(x, g, *POOL)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["integers", "relu", "constant"])
def test_max_pool_ties_follow_torch_rule(kind):
    """Ties (equal maxima in a window): all the window's cotangent goes to its FIRST maximum in
    row-major window order, as PyTorch's max_pool2d; checked against numpy loops."""
    rng = np.random.default_rng(2)
    shape = (2, 8, 9, 3)
    x = {"integers": rng.integers(0, 3, shape), "relu": np.maximum(rng.standard_normal(shape), 0),
         "constant": np.full(shape, 1.5)}[kind].astype(np.float32)
    assert _windows_have_ties(x, *POOL)
    g = rng.standard_normal(np.asarray(ops.max_pool_reference(jnp.asarray(x))).shape).astype(np.float32)
    y, dx = _pool_grad(x, g, "masked")
    y_np, dx_np = _np_pool(x, g, *POOL)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx.sum(), g.sum(), rtol=1e-5)  # every output's cotangent lands once


def test_max_pool_all_minus_inf_window_routes_to_its_first_real_position():
    x = np.zeros((1, 6, 6, 1), np.float32)
    x[0, :3, :3, 0] = -np.inf  # window (0, 0) covers rows/cols -1..1: real entries all -inf
    g = np.ones((1, 3, 3, 1), np.float32)
    y, dx = _pool_grad(x, g, "masked")
    assert y[0, 0, 0, 0] == -np.inf and dx[0, 0, 0, 0] == 1.0  # padding (-1, -1) is never chosen
    np.testing.assert_allclose(dx, _np_pool(x, g, *POOL)[1])


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), ((0, 0), (0, 0))), ((3, 3), (1, 1), ((1, 1), (1, 1))), ((3, 2), (2, 3), ((1, 0), (0, 1))),
    ((2, 2), (3, 3), ((0, 0), (0, 0))),  # stride > window: a phase no window reads
])
def test_max_pool_other_windows(window, strides, padding):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (2, 9, 8, 2)).astype(np.float32)  # ties included
    y_ref = np.asarray(ops.max_pool_reference(jnp.asarray(x), window, strides, padding))
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    y, dx = _pool_grad(x, g, "masked", window, strides, padding)
    y_np, dx_np = _np_pool(x, g, window, strides, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-6, atol=1e-6)


def test_max_pool_bfloat16_and_under_jit_and_vmap():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 10, 10, 4)).astype(jnp.bfloat16)
    f = jax.jit(jax.vmap(lambda a: ops.max_pool(a, *POOL, impl="masked")))
    np.testing.assert_array_equal(f(x), jax.vmap(ops.max_pool_reference)(x))
    gr = jax.grad(lambda a: jnp.sum(f(a).astype(jnp.float32) ** 2))(x)
    gr_ref = jax.grad(lambda a: jnp.sum(jax.vmap(ops.max_pool_reference)(a).astype(jnp.float32) ** 2))(x)
    assert gr.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(gr, np.float32), np.asarray(gr_ref, np.float32), rtol=1e-2)


def test_max_pool_second_order_matches_reference():
    """The exact hypergradient needs Hessian-vector products through the student: forward-over-reverse
    (jax.linearize of jax.grad) and reverse-over-reverse agree with the reference's (no ties)."""
    k = jax.random.split(jax.random.PRNGKey(4), 2)
    x, v = (jax.random.normal(kk, (2, 8, 8, 3)) for kk in k)

    def hvps(impl):
        f = lambda a: jnp.sum(jnp.sin(ops.max_pool(a, *POOL, impl=impl)) ** 2)  # noqa: E731
        _, lin = jax.linearize(jax.grad(f), x)
        rr = jax.grad(lambda a: jnp.vdot(jax.grad(f)(a), v))(x)
        return lin(v), rr

    for a, b in zip(hvps("masked"), hvps("reduce_window")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_max_pool_refuses_unknown_impl_and_padding_only_windows():
    with pytest.raises(ValueError, match="unknown pool_impl"):
        ops.max_pool(jnp.ones((1, 4, 4, 1)), impl="scatter")
    with pytest.raises(ValueError, match="smaller than the window"):
        ops.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2), (2, 2), ((2, 2), (0, 0)), impl="masked")


# ------------------------------------------------------------------------------ stem
STEMS = [s for s in ops.STEM_IMPLS if s not in ("auto", "conv")]


@pytest.mark.parametrize("hw", [(16, 20), (15, 17), (9, 14)])
@pytest.mark.parametrize("c", [1, 3])
def test_stem_impls_equal_the_plain_convolution(hw, c):
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    x = jax.random.normal(k[0], (2, *hw, c))
    kernel = 0.2 * jax.random.normal(k[1], (7, 7, c, 5))
    g = jax.random.normal(k[2], (2, -(-hw[0] // 2), -(-hw[1] // 2), 5))

    @jax.jit
    def value_and_grads(a, kk):
        out = {}
        for impl in ("conv",) + tuple(STEMS):
            y, pull = jax.vjp(lambda a, kk, impl=impl: ops.stem_conv(a, kk, impl=impl), a, kk)
            out[impl] = (y, *pull(g))
        return out

    got = value_and_grads(x, kernel)
    y_ref, dx_ref, dk_ref = got.pop("conv")
    np.testing.assert_array_equal(y_ref, ops.stem_conv_reference(x, kernel))
    for impl, (y, dx, dk) in got.items():
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5, err_msg=impl)
        np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4, err_msg=impl)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5, err_msg=impl)


def test_space_to_depth_kernel_places_every_tap():
    """w''[q_y, q_x, (p_y, p_x, c), f] = w[2 q_y + p_y - 1, 2 q_x + p_x - 1, c, f], zero at index -1."""
    kernel = np.arange(7 * 7 * 2 * 3, dtype=np.float32).reshape(7, 7, 2, 3) + 1
    kb = np.asarray(ops.space_to_depth_kernel(jnp.asarray(kernel)))
    assert kb.shape == (4, 4, 8, 3)
    for qy in range(4):
        for qx in range(4):
            for py in range(2):
                for px in range(2):
                    ky, kx = 2 * qy + py - 1, 2 * qx + px - 1
                    want = kernel[ky, kx] if ky >= 0 and kx >= 0 else np.zeros((2, 3))
                    np.testing.assert_array_equal(kb[qy, qx, (py * 2 + px) * 2:(py * 2 + px + 1) * 2], want)


def test_stem_bfloat16_and_first_order_impls_under_linearize():
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 12, 12, 3))
    kernel = 0.2 * jax.random.normal(jax.random.PRNGKey(7), (7, 7, 3, 4))
    @jax.jit
    def hvps(kk):
        out = {}
        for impl in ("conv",) + tuple(STEMS):
            f = lambda k2, impl=impl: jnp.sum(jnp.tanh(ops.stem_conv(x, k2, impl=impl)) ** 2)  # noqa: E731
            _, lin = jax.linearize(jax.grad(f), kk)
            out[impl] = (lin(kk), ops.stem_conv(x, kk, jnp.bfloat16, impl))
        return out

    got = hvps(kernel)
    ref, _ = got.pop("conv")
    for impl, (hv, y16) in got.items():
        assert y16.dtype == jnp.bfloat16 and y16.shape == (2, 6, 6, 4)
        np.testing.assert_allclose(hv, ref, rtol=1e-3, atol=1e-4, err_msg=impl)


# ------------------------------------------------------------------------------ the encoder
def test_encoder_parameters_do_not_depend_on_the_impls_and_outputs_agree():
    """The same parameter tree (names, shapes, initial values) whichever ops run, and the same
    features and gradients; (33, 40) input: odd stem sizes and a 2x2 last stage (patches)."""
    x = jax.random.normal(jax.random.PRNGKey(8), (4, 33, 40, 1))

    def run(enc):
        v = jax.jit(lambda: enc.init(jax.random.PRNGKey(0), x, train=False))()

        @jax.jit
        def z_and_grad(params):
            def loss(p):
                z, _ = enc.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
                return jnp.sum(z ** 2), z
            return jax.grad(loss, has_aux=True)(params)
        g, z = z_and_grad(v["params"])
        return v, z, g

    plain = ResNetEncoder(stage_sizes=(1, 1, 1, 1), width=4, stem_impl="conv", pool_impl="reduce_window",
                          conv_impl="conv")
    v_ref, z_ref, g_ref = run(plain)
    for stem_impl in ("space_to_depth", "space_to_depth_fwd"):
        v, z, g = run(dataclasses.replace(plain, stem_impl=stem_impl, pool_impl="masked",
                                          conv_impl="patches_when_small"))
        assert jax.tree.structure(v) == jax.tree.structure(v_ref)
        for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_ref)):
            np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
        assert v["params"]["stem_conv"]["kernel"].shape == (7, 7, 1, 4)
        np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_auto_resolves_per_platform_and_config_build_and_describe_agree():
    from ucmkd_jax.config import ModelConfig
    from ucmkd_jax.overrides import choices_of

    assert ops.resolve_impl("stem", "auto", "cpu") == ops.AUTO["stem"]["cpu"]
    assert ops.resolve_impl("pool", "auto", "cpu") == ops.AUTO["pool"]["cpu"]
    assert ops.resolve_impl("conv", "auto", "cpu") == ops.AUTO["conv"]["cpu"]
    assert ops.resolve_impl("conv", "auto", "some_tpu") == "conv"
    assert ops.resolve_impl("stem", "auto", "some_tpu") == "conv"  # unmeasured platforms: the plain ops
    assert ops.resolve_impl("pool", "auto", "some_tpu") == "reduce_window"
    assert ops.resolve_impl("stem", "space_to_depth", "gpu") == "space_to_depth"
    with pytest.raises(ValueError, match="unknown stem_impl"):
        ops.resolve_impl("stem", "winograd")
    assert tuple(choices_of(ModelConfig, "stem_impl")) == ops.STEM_IMPLS
    assert tuple(choices_of(ModelConfig, "pool_impl")) == ops.POOL_IMPLS
    assert tuple(choices_of(ModelConfig, "conv_impl")) == ops.CONV_IMPLS
    m = build_model("audio", (64, 64, 1), 3, width=2,
                    options={"stem_impl": "conv", "pool_impl": "masked", "conv_impl": "patches_when_small"})
    assert (m.encoder.stem_impl, m.encoder.pool_impl, m.encoder.conv_impl) == ("conv", "masked", "patches_when_small")
    info = describe_model(m)
    assert (info["stem_impl"], info["pool_impl"], info["conv_impl"]) == ("conv", "masked", "patches_when_small")
    assert build_model("audio", (64, 64, 1), 3, width=2).encoder.stem_impl == "auto"


def test_experiment_passes_the_config_to_resnets_only():
    from ucmkd_jax.config import ModelConfig
    from ucmkd_jax.experiment import backbone_options

    m = ModelConfig(stem_impl="space_to_depth", pool_impl="reduce_window", conv_impl="conv")
    assert backbone_options(m, "resnet18", "audio") == {"stem_impl": "space_to_depth", "pool_impl": "reduce_window",
                                                        "conv_impl": "conv"}
    assert backbone_options(m, "mlp", "vector") == {}


# ------------------------------------------------------------------------------ body convolutions
@pytest.mark.parametrize("shape,k,stride", [((3, 2, 4, 5), 3, 1), ((3, 2, 2, 4), 3, 1), ((2, 4, 7, 3), 3, 2),
                                            ((2, 3, 3, 4), 3, 2), ((2, 5, 6, 3), 1, 2), ((2, 9, 8, 2), 3, 1)])
def test_conv_patches_equal_the_plain_convolution(shape, k, stride):
    """Values and both gradients, on maps below and above the kernel's size (where XLA:CPU swaps
    the operands and where it does not)."""
    keys = jax.random.split(jax.random.PRNGKey(10), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = 0.3 * jax.random.normal(keys[1], (k, k, shape[-1], 6))
    pad = ((k // 2, k // 2),) * 2
    g = jax.random.normal(keys[2], (shape[0], (shape[1] - 1) // stride + 1, (shape[2] - 1) // stride + 1, 6))

    @jax.jit
    def value_and_grads(a, kk):
        out = []
        for impl in ("conv", "patches", "patches_when_small"):
            f = (lambda a, kk: ops.conv_patches(a, kk, (stride, stride), pad)) if impl == "patches" else (
                lambda a, kk, impl=impl: ops.conv2d(a, kk, (stride, stride), pad, impl))
            y, pull = jax.vjp(f, a, kk)
            out.append((y, *pull(g)))
        return out

    ref, *others = value_and_grads(x, kernel)
    for got in others:
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_patches_only_where_a_map_is_below_the_kernel():
    below = ops._spatial_below_kernel
    assert below((2, 4), (2, 4), (3, 3)) and below((2, 2), (2, 2), (3, 3)) and below((4, 8), (2, 4), (3, 3))
    assert not below((3, 3), (3, 3), (3, 3)) and not below((2, 2), (1, 1), (1, 1))


def test_flax_max_pool_is_the_reference():
    x = jax.random.normal(jax.random.PRNGKey(9), (1, 6, 6, 2))
    np.testing.assert_array_equal(ops.max_pool_reference(x), nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))))
