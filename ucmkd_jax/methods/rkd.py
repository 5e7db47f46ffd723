r"""``rkd``: Relational Knowledge Distillation (Park, Kim, Lu, Cho, CVPR 2019), paired.

On the pooled features (the latents z_S = phi(x_S), z_T = theta(x_T) of the PAIRED samples; the
dimensions may differ), RKD matches the structure of the batch, not the features themselves:

    distance-wise:  psi_D(t_i, t_j) = ||t_i - t_j|| / mu,
        mu = mean of the non-zero pairwise distances of the batch,
        L_D = mean_{i,j} huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))
    angle-wise:     psi_A(t_i, t_j, t_k) = <e_ij, e_ik>,  e_ij = (t_j - t_i) / ||t_j - t_i||,
        L_A = mean_{i,j,k} huber(psi_A(s) - psi_A(t))
    L = CE(z_S, y) + 25 L_D + 50 L_A

``huber`` is smooth-L1 with threshold 1 (PyTorch's ``smooth_l1_loss``, the paper's Huber loss);
the means run over all n^2 (n^3) entries, diagonals included, as in the authors' code. Defaults:
the paper (lambda_D = 25, lambda_A = 50) and mdistiller ``CFG.RKD`` (CE weight 1, non-squared
distances, eps = 1e-12 under the square root / in the normalisation). Both losses are invariant
to rotating, scaling and translating either feature cloud (tested).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.methods._common import check_teacher, options
from ucmkd_jax.methods.base import MethodConfig, register, teacher_features
from ucmkd_jax.models.model import Model
from ucmkd_jax.precision import at_least_f32

__all__ = ["RKDConfig", "pairwise_distances", "rkd_distance_loss", "rkd_angle_loss", "relational_kd", "build_rkd"]


@dataclasses.dataclass(frozen=True)
class RKDConfig:
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    ce_weight: float = 1.0
    eps: float = 1e-12


def pairwise_distances(f, eps: float = 1e-12):
    """||f_i - f_j|| with the squared distance clamped at ``eps`` before the root (a finite
    gradient at coincident points) and an exact 0 diagonal. f (n, d) -> (n, n)."""
    sq = jnp.sum(f * f, axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * f @ f.T
    d = jnp.sqrt(jnp.maximum(d2, eps))
    return jnp.where(jnp.eye(f.shape[0], dtype=bool), 0.0, d)


def _normalised_distances(f, eps):
    d = pairwise_distances(f, eps)
    pos = d > 0
    mu = jnp.sum(jnp.where(pos, d, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
    return d / mu


def _angles(f, eps):
    e = f[None, :, :] - f[:, None, :]  # e[i, j] = f_j - f_i
    norm = jnp.sqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), eps**2))  # max(||e||, eps)
    e = e / norm
    return jnp.einsum("ijd,ikd->ijk", e, e)


def rkd_distance_loss(f_s, f_t, eps: float = 1e-12):
    """L_D, the distance-wise loss: smooth-L1 between mean-normalised pairwise distances. The teacher
    term carries no gradient. f_s (n, d_s), f_t (n, d_t). Returns a scalar."""
    f_s, f_t = at_least_f32(f_s), jax.lax.stop_gradient(at_least_f32(f_t))
    return jnp.mean(optax.huber_loss(_normalised_distances(f_s, eps), _normalised_distances(f_t, eps), delta=1.0))


def rkd_angle_loss(f_s, f_t, eps: float = 1e-12):
    """L_A, the angle-wise loss: smooth-L1 between the cosines of all triplet angles. Returns a scalar."""
    f_s, f_t = at_least_f32(f_s), jax.lax.stop_gradient(at_least_f32(f_t))
    return jnp.mean(optax.huber_loss(_angles(f_s, eps), _angles(f_t, eps), delta=1.0))


def relational_kd(f_s, f_t, distance_weight: float = 25.0, angle_weight: float = 50.0, eps: float = 1e-12):
    """lambda_D L_D + lambda_A L_A (the RKD objective without the task loss). Returns a scalar."""
    return distance_weight * rkd_distance_loss(f_s, f_t, eps) + angle_weight * rkd_angle_loss(f_s, f_t, eps)


@register("rkd", uses_teacher=True, needs_paired=True,
          summary="Relational KD (Park et al. 2019): CE + 25 distance + 50 angle on pooled features, paired")
def build_rkd(student: Model, teacher: Model, config: MethodConfig):
    check_teacher("rkd", student, teacher, same_classes=False)
    opts: RKDConfig = options(config, "rkd", RKDConfig())

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        z_t = teacher_features(teacher, teacher_variables, batch["x_t"])

        def loss_fn(p):
            z, stats = student.encode(p["encoder"], batch_stats, batch["x_s"], train=True)
            ce = cross_entropy(student.classify(p["head"], z), batch["y_s"])
            dist = rkd_distance_loss(z, z_t, opts.eps)
            angle = rkd_angle_loss(z, z_t, opts.eps)
            loss = opts.ce_weight * ce + opts.distance_weight * dist + opts.angle_weight * angle
            return loss, (stats, {"ce": ce, "rkd_distance": dist, "rkd_angle": angle})

        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, stats, dict(metrics, loss=loss)

    return grads_fn
