"""Outer schedule against its closed form; inner optimisers."""
import math

import jax.numpy as jnp
import pytest

from ucmkd_jax.optim import OptimConfig, inner_optimizer, learning_rate_schedule


def test_warmup_then_cosine_closed_form():
    cfg = OptimConfig(lr=1e-2, warmup_epochs=5, init_lr=1e-5, end_lr=1e-5)
    s = learning_rate_schedule(cfg, steps_per_epoch=10, epochs=100)
    assert float(s(0)) == pytest.approx(1e-5, rel=1e-4)  # float32 schedule
    assert float(s(25)) == pytest.approx(1e-5 + (1e-2 - 1e-5) * 25 / 50, rel=1e-5)
    assert float(s(50)) == pytest.approx(1e-2, rel=1e-5)
    t = 525  # cosine over the remaining 950 steps
    expected = 1e-5 + (1e-2 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (t - 50) / 950))
    assert float(s(t)) == pytest.approx(expected, rel=1e-4)
    assert float(s(1000)) == pytest.approx(1e-5, rel=1e-3)


def test_inner_sgd_is_a_plain_step_and_adamw_first_step_is_sign_like():
    g = {"w": jnp.array([0.3, -2.0])}
    p = {"w": jnp.array([1.0, 1.0])}
    upd, _ = inner_optimizer("sgd", 0.1).update(g, inner_optimizer("sgd", 0.1).init(p), p)
    assert jnp.allclose(upd["w"], -0.1 * g["w"])
    tx = inner_optimizer("adamw", 1e-3, weight_decay=0.0)
    upd, _ = tx.update(g, tx.init(p), p)
    assert jnp.allclose(upd["w"], -1e-3 * jnp.sign(g["w"]), rtol=1e-3)
    with pytest.raises(ValueError, match="unknown inner optimiser"):
        inner_optimizer("lbfgs", 1.0)


def test_epoch_schedule_is_torch_linearlr_then_cosine():
    """schedule_unit="epoch" against torch's LinearLR + CosineAnnealingLR (SequentialLR), stepped
    once per epoch as the release does; constant within an epoch, exactly init_lr in the first."""
    import torch  # the bench extra (CI installs it)
    cfg = OptimConfig(lr=1e-2, init_lr=1e-5, end_lr=1e-5, warmup_epochs=5, schedule_unit="epoch")
    epochs, spe = 20, 3
    sched = learning_rate_schedule(cfg, spe, epochs)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-2, momentum=0.9)
    torch_sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-5 / 1e-2, total_iters=5),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - 5, eta_min=1e-5)], milestones=[5])
    for e in range(epochs):
        want = opt.param_groups[0]["lr"]
        for i in range(spe):
            assert float(sched(e * spe + i)) == pytest.approx(want, rel=1e-5, abs=1e-9), (e, i)
        opt.step()
        torch_sched.step()
    assert float(sched(0)) == float(jnp.float32(1e-5))  # not 9.99961e-6 as per-step warm-up gives


def test_clip_with_epsilon_is_torch_clip_grad_norm():
    import numpy as np
    import torch  # the bench extra (CI installs it)
    from ucmkd_jax.optim import clip_by_global_norm_eps
    rng = np.random.default_rng(0)
    for scale in (0.1, 10.0):  # below and above the max norm
        g = [rng.normal(size=(3, 4)) * scale, rng.normal(size=(5,)) * scale]
        tg = [torch.tensor(a) for a in g]
        ps = [torch.zeros_like(a, requires_grad=True) for a in tg]
        for p, a in zip(ps, tg):
            p.grad = a.clone()
        torch.nn.utils.clip_grad_norm_(ps, max_norm=5.0)
        tx = clip_by_global_norm_eps(5.0, 1e-6)
        out, _ = tx.update([jnp.asarray(a) for a in g], tx.init(None))
        for a, p in zip(out, ps):
            np.testing.assert_allclose(np.asarray(a), p.grad.numpy(), rtol=1e-6)


def test_poly_schedule_is_the_release_adjust_lr():
    from ucmkd_jax.optim import poly_schedule
    sched = poly_schedule(OptimConfig(lr=1e-2), steps_per_epoch=4)
    for e in (0, 1, 37, 99, 100, 120):
        want = 1e-4 + (1e-2 - 1e-4) * max(0.0, 1 - e / 100) ** 0.9
        for i in range(4):
            assert float(sched(4 * e + i)) == pytest.approx(want, rel=1e-5)
    assert learning_rate_schedule(OptimConfig(schedule="poly"), 4, 10)(8) == sched(8)
