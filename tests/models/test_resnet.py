"""Encoders: shapes, latent sizes, input checks, train/eval BatchNorm behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.models import build_model


@pytest.mark.parametrize("backbone,width,latent", [("resnet18", 4, 32), ("resnet50", 2, 64)])
def test_latent_sizes(backbone, width, latent):
    m = build_model("audio", (16, 20, 1), 5, backbone=backbone, width=width)
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0))  # shapes only: nothing to compile
    logits, z, _ = jax.eval_shape(m.apply, v, jnp.ones((3, 16, 20, 1)))
    assert z.shape == (3, latent) and logits.shape == (3, 5) and m.latent_dim == latent


def test_paper_resnet18_has_512_latent_and_11m_params():
    m = build_model("audio", (64, 64, 1), 6, width=64)
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0))
    n = sum(np.prod(s.shape) for s in jax.tree.leaves(shapes["params"]))
    assert m.latent_dim == 512
    # torchvision resnet18 has 11.69M params with a 3-channel stem and 1000 classes; with a
    # 1-channel stem (-6272) and 6 classes (-509k) that is 11.17M.
    assert 11.1e6 < n < 11.2e6


def test_video_is_mean_over_frames_of_per_frame_features():
    m = build_model("video", (3, 8, 8, 3), 4, "resnet10", width=2)
    v = m.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 8, 3))
    z, _ = jax.jit(lambda p, s, x: m.encode(p, s, x, train=False))(v["params"]["encoder"], v["batch_stats"], x)
    single = build_model("image", (8, 8, 3), 4, "resnet10", width=2)
    frame = jax.jit(lambda p, s, x: single.encode(p, s, x, train=False)[0])
    per_frame = [frame(v["params"]["encoder"], v["batch_stats"], x[:, t]) for t in range(3)]
    np.testing.assert_allclose(z, np.mean(per_frame, axis=0), rtol=1e-5, atol=1e-6)


def test_train_mode_updates_batch_stats_eval_mode_does_not():
    m = build_model("image", (8, 8, 3), 4, "resnet10", width=2)
    v = m.init(jax.random.PRNGKey(0))
    x = 3 + jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    encode = jax.jit(m.encode, static_argnames="train")
    _, s_train = encode(v["params"]["encoder"], v["batch_stats"], x, train=True)
    _, s_eval = encode(v["params"]["encoder"], v["batch_stats"], x, train=False)
    changed = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s_train), jax.tree.leaves(v["batch_stats"]))]
    assert max(changed) > 0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s_eval), jax.tree.leaves(v["batch_stats"])))


@pytest.mark.parametrize("shape,match", [
    ((2, 8, 8, 3), "expected \\(N, T, H, W, C\\) frame stacks"),
    ((2, 2, 8, 8, 1), "channels mismatch"),
    ((2, 2, 9, 8, 3), "per-sample shape mismatch"),
])
def test_bad_inputs_are_named(shape, match):
    m = build_model("video", (2, 8, 8, 3), 4, width=2, name="student")
    v = m.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=match):
        m.apply(v, jnp.ones(shape))


def test_stem_auto_and_mlp():
    assert build_model("image", (32, 32, 3), 3, width=2).encoder.stem == "small"
    assert build_model("image", (64, 64, 3), 3, width=2).encoder.stem == "imagenet"
    mlp = build_model("vector", (7,), 3, backbone="mlp", width=2, latent_dim=12)
    v = mlp.init(jax.random.PRNGKey(0))
    assert mlp.apply(v, jnp.ones((2, 7)))[1].shape == (2, 12)
    with pytest.raises(ValueError, match="mlp backbone takes \\(N, D\\) vectors"):
        build_model("image", (8, 8, 3), 3, backbone="mlp")
