"""ViT encoders (models/vit.py): sizes of the standard ViT-S/B/L, feature maps, input resizing,
position-embedding resampling, remat, bf16, frame handling and the release's projection.
The forward against torchvision and timm is tests/models/test_pretrained.py's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.models import build_model, describe_model
from ucmkd_jax.models.vit import (ViTEncoder, default_input_size, default_taps, patchify, resample_pos_embed,
                                  resolve_attention)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _z(model, train=False):
    """Jitted (encoder params, batch_stats, x) -> (z, new stats) (eagerly, every op compiles)."""
    return jax.jit(lambda p, s, x: model.encode(p, s, x, train=train))


@pytest.mark.parametrize("backbone,params", [
    # torchvision vit_b_16 / vit_l_16 and timm vit_small_patch16_224 without their 1000-class heads
    ("vit_s16", 22_050_664 - 385_000), ("vit_b16", 86_567_656 - 769_000), ("vit_l16", 304_326_632 - 1_025_000)])
def test_standard_sizes_match_the_published_models(backbone, params):
    model = build_model("image", (224, 224, 3), 5, backbone=backbone)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0))  # shapes only
    assert _count(variables["params"]["encoder"]) == params
    assert variables["params"]["encoder"]["pos_embed"].shape[1] == 1 + 14 * 14
    info = describe_model(model)
    assert info["backbone"] == backbone and info["latent_dim"] == model.encoder.dim and info["input_size"] == [224, 224]


def test_taps_are_the_releases():
    assert default_taps(12) == (2, 5, 8, 11) and default_taps(24) == (5, 11, 17, 23)
    assert default_taps(2) == (0, 0, 1, 1) and default_taps(1) == (0, 0, 0, 0)


def test_patchify_matches_a_stride_16_convolution(rng):
    x = rng.normal(size=(2, 32, 48, 3)).astype(np.float32)
    w = rng.normal(size=(16, 16, 3, 5)).astype(np.float32)
    conv = jax.lax.conv_general_dilated(x, w, (16, 16), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(patchify(jnp.asarray(x)) @ w.reshape(-1, 5), conv, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def tiny():
    """A depth-2 ViT-S of head width 4 (24 wide) on 32 x 48 images, its variables and a batch."""
    model = build_model("image", (32, 48, 3), 3, backbone="vit_s16", width=4, options={"depth": 2})
    variables = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 48, 3))
    return model, variables, x


def test_feature_maps_and_latent(tiny):
    model, v, x = tiny
    z, stats, maps = jax.jit(lambda p, x: model.encode(p, {}, x, train=True, return_stages=True))(
        v["params"]["encoder"], x)
    assert z.shape == (2, 24) and z.dtype == jnp.float32 and stats == {}
    assert model.encoder.stage_channels == (24,) * 5 and [m.shape for m in maps] == [(2, 2, 3, 24)] * 5
    np.testing.assert_array_equal(maps[0], maps[1])  # depth 2: blocks 0, 0, 1, 1 are tapped
    np.testing.assert_array_equal(maps[2], maps[3])
    assert not np.allclose(maps[1], maps[2]) and not np.allclose(maps[3], maps[4])


def test_remat_and_bfloat16(tiny):
    model, v, x = tiny
    remat = build_model("image", (32, 48, 3), 3, backbone="vit_s16", width=4, options={"depth": 2, "remat": True})
    half = build_model("image", (32, 48, 3), 3, backbone="vit_s16", width=4, dtype="bfloat16",
                       options={"depth": 2})

    def loss(m):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.encode(p, {}, x, train=True)[0] ** 2)))

    (l0, g0), (l1, g1) = loss(model)(v["params"]["encoder"]), loss(remat)(v["params"]["encoder"])
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    # Recomputing the forward in the backward pass fuses it differently: float32 rounding moves
    # an entry by up to ~1e-4 of the array's largest (the plain program itself moves that much
    # between two XLA optimisation settings, measured); a wrong rematerialisation moves it by O(1).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3 * float(np.max(np.abs(b)))), g1, g0)
    z_half, _ = _z(half)(v["params"]["encoder"], {}, x)
    z, _ = _z(model)(v["params"]["encoder"], {}, x)
    assert z_half.dtype == jnp.float32
    np.testing.assert_allclose(z_half, z, atol=0.1)  # bf16 compute, float32 params


def test_position_embeddings_follow_the_input_grid(tiny):
    """Another input size than the build's: the embeddings are resampled in the forward, as
    resample_pos_embed does to the parameter itself."""
    model, v, x = tiny
    p = v["params"]["encoder"]
    other = ViTEncoder(dim=24, depth=2, heads=6, pos_grid=(2, 3))  # same params, fed 64 x 32 inputs
    x2 = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 32, 3))
    z = jax.jit(other.apply)({"params": p}, x2)
    moved = dict(p, pos_embed=resample_pos_embed(p["pos_embed"], (4, 2), (2, 3)))
    z_ref = jax.jit(ViTEncoder(dim=24, depth=2, heads=6, pos_grid=(4, 2)).apply)({"params": moved}, x2)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-6)
    same = resample_pos_embed(p["pos_embed"], (2, 3), (2, 3))
    assert same is p["pos_embed"]


def test_inputs_are_resized_to_multiples_of_16():
    assert default_input_size((257, 1004)) == (256, 1008) and default_input_size((224, 224)) == (224, 224)
    audio = build_model("audio", (33, 60, 1), 3, backbone="vit_s16", width=4, options={"depth": 1})
    assert audio.encoder.input_size == (32, 64) and audio.encoder.pos_grid == (2, 4)
    release = build_model("audio", (257, 1004, 1), 3, backbone="vit_s16", options={"input_size": (256, 1024)})
    assert release.encoder.pos_grid == (16, 64)
    shapes = jax.eval_shape(release.init, jax.random.PRNGKey(0))
    assert shapes["params"]["encoder"]["pos_embed"].shape == (1, 1 + 16 * 64, 384)
    assert shapes["params"]["encoder"]["patch_embed"]["kernel"].shape == (256, 384)  # one input channel
    with pytest.raises(ValueError, match="multiples of 16"):
        ViTEncoder(dim=8, depth=1, heads=2).init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 32, 1)))
    with pytest.raises(ValueError, match="takes no option 'depth'"):
        build_model("image", (32, 32, 3), 3, backbone="resnet18", options={"depth": 2})
    with pytest.raises(ValueError, match="cannot encode \\(N, D\\) vectors"):
        build_model("vector", (8,), 3, backbone="vit_b16")


def test_attention_choice():
    assert resolve_attention("auto", jnp.float32, 64) == "xla"  # and on a CPU whatever the dtype
    assert resolve_attention("cudnn", jnp.float32, 64) == "cudnn"
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("flash", jnp.float32, 64)


def test_video_frames_per_frame_or_mean_pixels(tiny):
    model, v, _ = tiny
    clip = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 32, 48, 3))
    kw = dict(backbone="vit_s16", width=4, options={"depth": 2})
    per_frame = build_model("video", (3, 32, 48, 3), 3, **kw)
    mean_px = build_model("video", (3, 32, 48, 3), 3, video_frames="mean_pixels", **kw)
    p, image = v["params"]["encoder"], _z(model)
    frames = [image(p, {}, clip[:, t])[0] for t in range(3)]
    np.testing.assert_allclose(_z(per_frame)(p, {}, clip)[0], sum(frames) / 3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_z(mean_px)(p, {}, clip)[0], image(p, {}, clip.mean(axis=1))[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="video_frames must be one of"):
        build_model("video", (3, 32, 48, 3), 3, video_frames="first", **kw)


def test_the_releases_projection_of_vit_s():
    """ViT-S's CLS token to the teacher's width by Linear -> BatchNorm1d -> ReLU."""
    model = build_model("image", (32, 32, 3), 3, backbone="vit_s16", width=4, latent_dim=48,
                        projection="linear_bn_relu", options={"depth": 1})
    v = model.init(jax.random.PRNGKey(0))
    assert set(v["params"]["encoder"]) == {"trunk", "projection", "projection_bn"}
    assert set(v["batch_stats"]) == {"projection_bn"}
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    z, stats = _z(model, train=True)(v["params"]["encoder"], v["batch_stats"], x)
    assert z.shape == (4, 48) and float(z.min()) >= 0.0
    trunk_z = jax.jit(model.encoder.trunk.apply)({"params": v["params"]["encoder"]["trunk"]}, x)
    h = trunk_z @ v["params"]["encoder"]["projection"]["kernel"] + v["params"]["encoder"]["projection"]["bias"]
    ref = np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5), 0.0)  # BN scale 1, bias 0 at init
    np.testing.assert_allclose(z, ref, rtol=1e-3, atol=1e-4)  # Flax's variance: E[h^2] - E[h]^2
    np.testing.assert_allclose(stats["projection_bn"]["mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)
