r"""``c2kd``: Bridging the Modality Gap for Cross-Modal Knowledge Distillation (Huo, Xu, Guo, Wang,
Guo, CVPR 2024), paired.

Teacher AND student are trained jointly (the teacher starts from its pre-trained variables).
Each network gets a proxy head on its stage-3 map,

    proxy(F) = Linear(LeakyReLU_0.1(BN(conv1x1(avgpool(F)))))

and with KL(a <- b) = KL(softmax(b) || softmax(a)) with b detached, per network N in {T, S}:

    L_N = CE(N(x_N), y) + KL(proxy_N <- N) + KL(N <- proxy_N)           (bidirectional, network <-> proxy)
          + mean_i m_i NTKL(proxy_N <- proxy_other)_i                   (cross-modal, proxies only)
    L = L_T + L_S

NTKL is the KL between the proxies' distributions over the NON-target classes (the label masked
out on both sides, as DKD's NCKD), and m_i = [tau_i > 0] is the on-the-fly selection: tau_i is
Kendall's rank correlation (tau-b, ties handled) between the two proxies' logit vectors of sample
i, computed in the compiled step by ``kendall_tau`` (pure JAX, no host callback) and carrying no
gradient. The mean runs over the whole batch (unselected samples contribute 0), as the authors'
code does.

Defaults (the authors' release, huofushuo/C2KD): temperature 1 (every KL term carries a T^2
factor, 1 at the default), all weights 1, Kendall threshold
0, proxies on stage 3 (256 channels at width 64; a ViT's third map, the tokens after block 8 of
12 or 17 of 24), LeakyReLU slope 0.1, BatchNorm in train mode on
both sides, teacher and proxies updated by the same outer optimiser as the student (one SGD in
the release). State: the jointly trained teacher's params and BatchNorm statistics are in
``params["extra"]["teacher"]`` / ``batch_stats["extra"]["teacher"]``, the proxies in
``params["extra"]["proxy_s" | "proxy_t"]``. Deviation from the release, following the paper:
its ``ntkl`` zeroes the target logit (the target keeps a share of the softmax); here the target
class is removed from both distributions. Labels: paired batches share them, so ``y_s`` serves
both networks.

Paired only (``needs_paired``).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.methods._common import (check_feature_maps, check_teacher, kl_from_logits, masked_kl, options,
                                       per_sample_maps, split_extra, stage_channels)
from ucmkd_jax.methods.base import MethodConfig, register
from ucmkd_jax.models.model import Model
from ucmkd_jax.precision import at_least_f32

__all__ = ["C2KDConfig", "ProxyHead", "kendall_tau", "non_target_kl", "build_c2kd"]


@dataclasses.dataclass(frozen=True)
class C2KDConfig:
    """stage: 1-based stage feeding the proxies; krc_threshold: select samples with tau > it;
    temperature: of every KL term; leaky_slope: of the proxies' LeakyReLU."""

    stage: int = 3
    krc_threshold: float = 0.0
    temperature: float = 1.0
    leaky_slope: float = 0.1
    ce_weight: float = 1.0
    proxy_weight: float = 1.0
    ntkl_weight: float = 1.0


class ProxyHead(nn.Module):
    """(n, c) pooled map -> (n, K): 1x1 conv (no bias; a Dense on the pooled vector) + BN +
    LeakyReLU + Linear. Kaiming-normal (fan_out) conv init, as the release."""

    num_classes: int
    leaky_slope: float = 0.1

    @nn.compact
    def __call__(self, pooled, train: bool):
        c = pooled.shape[-1]
        x = nn.Dense(c, use_bias=False, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                     name="conv")(pooled)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        x = nn.leaky_relu(x, self.leaky_slope)
        return nn.Dense(self.num_classes, name="fc")(x)


def kendall_tau(x, y):
    """Kendall's tau-b between x[..., :] and y[..., :] along the last axis, pure JAX:

        tau_b = sum_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(n_x n_y),
        n_x = #{i<j : x_i != x_j},  n_y likewise

    (``scipy.stats.kendalltau``'s default; tied pairs count in neither numerator nor the
    respective n). NaN where x or y is constant, as scipy. x, y (..., K) -> (...). O(K^2) memory."""
    x, y = at_least_f32(x), at_least_f32(y)
    sx = jnp.sign(x[..., :, None] - x[..., None, :])
    sy = jnp.sign(y[..., :, None] - y[..., None, :])
    num = jnp.sum(sx * sy, axis=(-2, -1))  # ordered pairs: every unordered pair twice, the ratio is unchanged
    den = jnp.sum(sx * sx, axis=(-2, -1)) * jnp.sum(sy * sy, axis=(-2, -1))
    ok = den > 0
    return jnp.where(ok, num / jnp.sqrt(jnp.where(ok, den, 1.0)), jnp.nan)


def non_target_kl(target_logits, logits, labels, temperature: float = 1.0):
    """Per-sample T^2 KL(softmax(target / T) || softmax(logits / T)) over the non-target classes
    (label masked out on both sides). The target side carries no gradient. Returns (n,)."""
    mask = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    t = temperature
    return t**2 * masked_kl(jax.lax.stop_gradient(target_logits) / t, logits / t, mask)


def _kl_to(logits, target_logits, temperature):
    """T^2 mean_i KL(softmax(target / T) || softmax(logits / T)), target detached."""
    t = temperature
    return t**2 * jnp.mean(kl_from_logits(jax.lax.stop_gradient(target_logits) / t, logits / t))


def _pool(model: Model, stage_map, n: int):
    return per_sample_maps(model, [stage_map], n)[0].mean(axis=(1, 2))


def init_c2kd(key, student, teacher, teacher_variables, config):
    opts: C2KDConfig = options(config, "c2kd", C2KDConfig())
    k = opts.stage - 1
    ks, kt = jax.random.split(key)
    proxy = ProxyHead(student.num_classes, opts.leaky_slope)
    vs = proxy.init(ks, jnp.zeros((2, stage_channels(student)[k]), jnp.float32), train=False)
    vt = proxy.init(kt, jnp.zeros((2, stage_channels(teacher)[k]), jnp.float32), train=False)
    tv = jax.tree.map(jnp.array, teacher_variables)  # a copy: the teacher is trained from here on
    return {"params": {"teacher": tv["params"], "proxy_s": vs["params"], "proxy_t": vt["params"]},
            "batch_stats": {"teacher": tv["batch_stats"], "proxy_s": vs["batch_stats"],
                            "proxy_t": vt["batch_stats"]}}


@register("c2kd", uses_teacher=True, needs_paired=True, init_extra=init_c2kd,
          summary="C2KD (Huo et al. 2024): joint teacher+student, proxies, Kendall-selected non-target KL, paired")
def build_c2kd(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("c2kd", student, teacher)
    check_feature_maps("c2kd", student, teacher)
    opts: C2KDConfig = options(config, "c2kd", C2KDConfig())
    n_stages = min(len(stage_channels(student)), len(stage_channels(teacher)))  # 4 ResNet stages, 5 ViT maps
    if not 1 <= opts.stage <= n_stages:
        raise ValueError(f"c2kd stage must be in 1..{n_stages}, got {opts.stage}")
    k = opts.stage - 1
    proxy = ProxyHead(student.num_classes, opts.leaky_slope)
    T = opts.temperature

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del teacher_variables, lr  # the frozen copy is not used: the trained one is in params["extra"]
        stats, ex = split_extra(batch_stats)
        x_s, x_t, y = batch["x_s"], batch["x_t"], batch["y_s"]

        def loss_fn(p):
            pe = p["extra"]
            z, s_stats, s_maps = student.encode(p["encoder"], stats, x_s, train=True, return_stages=True)
            s_logits = student.classify(p["head"], z)
            zt, t_stats, t_maps = teacher.encode(pe["teacher"]["encoder"], ex["teacher"], x_t, train=True,
                                                 return_stages=True)
            t_logits = teacher.classify(pe["teacher"]["head"], zt)
            ps_logits, ps_stats = proxy.apply({"params": pe["proxy_s"], "batch_stats": ex["proxy_s"]},
                                              _pool(student, s_maps[k], x_s.shape[0]), train=True,
                                              mutable=["batch_stats"])
            pt_logits, pt_stats = proxy.apply({"params": pe["proxy_t"], "batch_stats": ex["proxy_t"]},
                                              _pool(teacher, t_maps[k], x_t.shape[0]), train=True,
                                              mutable=["batch_stats"])
            tau = kendall_tau(jax.lax.stop_gradient(pt_logits), jax.lax.stop_gradient(ps_logits))
            sel = (tau > opts.krc_threshold).astype(jnp.float32)  # NaN (a constant vector) -> not selected
            ce_s, ce_t = cross_entropy(s_logits, y), cross_entropy(t_logits, y)
            bi_s = _kl_to(ps_logits, s_logits, T) + _kl_to(s_logits, ps_logits, T)
            bi_t = _kl_to(pt_logits, t_logits, T) + _kl_to(t_logits, pt_logits, T)
            nt_s = jnp.mean(sel * non_target_kl(pt_logits, ps_logits, y, T))
            nt_t = jnp.mean(sel * non_target_kl(ps_logits, pt_logits, y, T))
            loss_s = opts.ce_weight * ce_s + opts.proxy_weight * bi_s + opts.ntkl_weight * nt_s
            loss_t = opts.ce_weight * ce_t + opts.proxy_weight * bi_t + opts.ntkl_weight * nt_t
            new_ex = {"teacher": t_stats, "proxy_s": ps_stats["batch_stats"], "proxy_t": pt_stats["batch_stats"]}
            metrics = {"ce": ce_s, "teacher_ce": ce_t, "proxy_kl": bi_s, "teacher_proxy_kl": bi_t,
                       "ntkl": nt_s, "teacher_ntkl": nt_t, "selected": sel.mean(),
                       "kendall": jnp.sum(jnp.where(jnp.isnan(tau), 0.0, tau))
                       / jnp.maximum(jnp.sum(~jnp.isnan(tau)), 1)}
            return loss_s + loss_t, ({**s_stats, "extra": new_ex}, metrics)

        (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, new_stats, dict(metrics, loss=loss)

    return grads_fn
