"""Every method with ViT backbones: each registered step traces with a ViT-B teacher and a
projected ViT-S student (shapes only: nothing compiled); the exact hypergradient (the attention
differentiated twice) runs two compiled steps; the combinations
that cannot apply (ReviewKD between a ResNet and a ViT, a ViT-only map index) are refused."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.methods import METHODS, BaselineConfig
from ucmkd_jax.methods.fitnet import FitNetConfig
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.train import build_step

VIT = {"width": 4, "options": {"depth": 1}}  # head width 4: ViT-B 48 wide, ViT-S 24 wide; one block


@pytest.fixture(scope="module")
def vits():
    """Audio ViT-B teacher on 16 x 32 spectrograms (a 1 x 2 patch grid) -> video ViT-S student
    on 2 frames of 16 x 16 (1 x 1), projected 24 -> 48 by Linear-BN-ReLU as in the release."""
    teacher = build_model("audio", (16, 32, 1), 3, backbone="vit_b16", name="teacher", **VIT)
    student = build_model("video", (2, 16, 16, 3), 3, backbone="vit_s16", latent_dim=48, projection="linear_bn_relu",
                          name="student", **VIT)
    with jax.default_prng_impl("unsafe_rbg"):  # threefry init kernels are slow to compile on 2 cores
        tv, sv = teacher.init(jax.random.PRNGKey(0)), student.init(jax.random.PRNGKey(1))
    r = np.random.default_rng(2)
    y = jnp.arange(6, dtype=jnp.int32) % 3
    batch = {"x_s": jnp.asarray(r.normal(size=(6, 2, 16, 16, 3)), jnp.float32), "y_s": y,
             "x_t": jnp.asarray(r.normal(size=(6, 16, 32, 1)), jnp.float32), "y_t": y}
    return teacher, student, tv, sv, batch


def _step(method, vits, **cfg):
    teacher, student, tv, sv, batch = vits
    train_step = build_step(method, student, teacher, method_config=BaselineConfig(**cfg),
                            optim=OptimConfig(warmup_epochs=0.0, optimizer="adamw", lr=1e-3),
                            steps_per_epoch=4, epochs=2)
    with jax.default_prng_impl("unsafe_rbg"):
        state = train_step.init_state(sv, tv, 0)
    return train_step.step, state


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_traces_with_vits(vits, method):
    step, state = _step(method, vits)
    new_state, metrics = jax.eval_shape(step, state, vits[2], vits[4])
    assert metrics["loss"].shape == () and jax.tree.structure(new_state.params) == jax.tree.structure(state.params)


def test_two_compiled_unrolled_steps(vits):
    step, state = _step("ucmkd", vits, hypergrad="unrolled")
    before = jax.tree.map(np.asarray, state.params)
    for _ in range(2):
        state, metrics = step(state, vits[2], vits[4])
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert int(state.nonfinite_step) == -1
    moved = max(float(np.abs(np.asarray(a) - b).max())
                for a, b in zip(jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(before["encoder"])))
    assert moved > 0  # the student's ViT trains (through the attention, the projection's BN)
    assert "projection_bn" in state.batch_stats


def test_what_cannot_apply_is_refused(vits):
    teacher, student, tv, sv, batch = vits
    resnet = build_model("audio", (16, 32, 1), 3, width=2, latent_dim=48, name="teacher")
    with pytest.raises(ValueError, match="reviewkd fuses student level i into teacher level i, but the student has 5 "
                                         "feature maps and the teacher 4"):
        build_step("reviewkd", student, resnet, steps_per_epoch=4, epochs=2)
    cfg = dataclasses.replace(BaselineConfig(), fitnet=FitNetConfig(stage=5))
    with pytest.raises(ValueError, match="fitnet stage must be in 1..4, got 5"):
        build_step("fitnet", student, resnet, method_config=cfg, steps_per_epoch=4, epochs=2)
    vec = build_model("vector", (5,), 3, name="teacher", latent_dim=48)
    with pytest.raises(ValueError, match="spatial feature maps \\(a ResNet or a ViT\\), not MLPEncoder"):
        build_step("c2kd", student, vec, steps_per_epoch=4, epochs=2)
