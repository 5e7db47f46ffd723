"""The terms of the cross-modal generalisation bound (paper Section 2, Theorems 2.6 and 2.7).

    err_S(phi) <= err_T(theta) + FA(phi, theta) + LA(p_S, p_T)                         (Eq. 8)
    err_S(phi) <= err_T + FA_e + LA_e + tau sqrt(log(2/delta)/2) (1/sqrt(n_S) + 1/sqrt(n_T))
                  + O(n_S^(-1/s1)) + O(n_T^(-1/s2))
                  + O(2 sqrt(2 d log(n_S/d) / n_S) + sqrt(log(1/delta) / (2 n_S)))      (Eq. 11)

Pure functions of features, logits and head weights (numpy in, floats out), so that the
bound-tightness report (``experiments/bound.py``, Figure 3) only has to extract features.

**FA_e = tau_delta * W_delta** (Eq. 10: a minimum over cost metrics delta in Delta; this module
evaluates the two metrics for which tau has a closed form, l2 and l1, and the caller takes the
smaller product, which is still an upper bound of the minimum over Delta).

* tau (``head_lipschitz``): the teacher's CE at a feature z for a label distribution q,
  l_q(z) = -sum_y q_y log softmax(W^T z + b)_y, has gradient W (softmax(W^T z + b) - q). The
  difference of two probability vectors lies in the convex hull of {e_i - e_j}, and a norm is
  convex, so sup_z,q ||grad||_* = max_{i != j} ||w_i - w_j||_* (w_i = column i of the head
  kernel, ||.||_* the dual norm of delta: l2 for delta = l2, l-infinity for delta = l1). This is
  a global Lipschitz constant of l_q for EVERY fixed q, never an underestimate, and at most
  sqrt(2) ||W||_2 (the spectral-norm bound, ``spectral_lipschitz``). Assumption: Definition
  2.4's l_tau uses D^T(y | z); tau covers it when that conditional is held fixed along the
  transport (a z-dependent conditional would add the variation of q to the constant). ``lipschitz_ratios`` gives the empirical ratios
  |l_y(z) - l_y(z')| / delta(z, z') of sample pairs, a lower bound on the true constant.
  Cosine and angular costs admit no finite tau (the CE changes along a ray, where they are 0).
* W (``wasserstein``): OTT's Sinkhorn with a small epsilon (relative to the mean cost) gives a
  near-optimal plan; it is rounded onto the exact uniform marginals (Altschuler, Weed &
  Rigollet 2017, Alg. 2), and <P, C> of that feasible coupling is returned: an upper bound of
  the exact W_1 that tends to it as epsilon -> 0 (tests check it against the exact assignment).

**LA_e** (Eq. 9) with kappa_i = p_T(y_i | z_i) (Appendix D, ``label_transport_kernel``):
mean_i [-log p_S(y_i | z_i) + kappa_i log p_T(y_i | z_i)].

**Finite-sample terms** of Eq. 11 (Appendix B):
* ``wasserstein_concentration``: tau sqrt(log(2/delta)/2) (1/sqrt(n_S) + 1/sqrt(n_T)), as
  printed. Computable. The concentration it comes from (Eq. 39, McDiarmid) holds for a support
  of diameter 1; on a support of diameter D it is D times larger (``diameter`` argument).
* O(n_S^(-1/s1)) + O(n_T^(-1/s2)): constants C1, C2 and the upper Wasserstein dimensions
  s1, s2 are unknown; NOT computable (returned as None).
* ``label_alignment_generalisation``: Eq. 51 with its constant, 2 C3 sqrt(2 log Pi(n) / n) +
  C3 sqrt(log(1/delta) / (2 n)) with the Sauer-Shelah growth bound
  log Pi(n) <= d log(e n / d) for d <= n (Eq. 50; Eq. 51 prints log(n/d), dropping the e,
  which would make the term vanish as d -> n) and log Pi(n) <= n log 2 otherwise. Needs the
  bound C3 on |f| and the VC dimension d: both are assumptions of the caller.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import epsilon_scheduler, geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from ucmkd_jax.losses.feature_alignment import cost_matrix
from ucmkd_jax.losses.label_alignment import label_alignment, label_transport_kernel

__all__ = ["LIPSCHITZ_COSTS", "head_lipschitz", "spectral_lipschitz", "lipschitz_ratios",
           "pairwise_cost", "round_to_coupling", "wasserstein", "label_alignment_terms",
           "wasserstein_concentration", "label_alignment_generalisation", "bound_terms"]

# delta -> the dual norm of its gradient bound (np.linalg.norm ord)
LIPSCHITZ_COSTS = {"l2": 2, "l1": np.inf}


def _check_cost(cost: str):
    if cost not in LIPSCHITZ_COSTS:
        raise ValueError(f"no finite Lipschitz constant of the CE w.r.t. {cost!r} (cosine and angular "
                         f"costs ignore the feature norm, the CE does not); use one of {sorted(LIPSCHITZ_COSTS)}")


def head_lipschitz(kernel, cost: str = "l2") -> float:
    """tau_delta of the linear head's CE: max_{i != j} ||w_i - w_j||_* (see module doc).

    Args: kernel (d, K) head weights (Flax Dense layout); cost: "l2" or "l1" (delta).
    Returns: a global Lipschitz constant of z -> -sum_y q_y log p(y | z), for every q.
    """
    _check_cost(cost)
    w = np.asarray(kernel, np.float64)
    diffs = w[:, :, None] - w[:, None, :]  # (d, K, K): w_i - w_j
    return float(np.linalg.norm(diffs, ord=LIPSCHITZ_COSTS[cost], axis=0).max())


def spectral_lipschitz(kernel) -> float:
    """sqrt(2) * ||W||_2: the CE is sqrt(2)-Lipschitz in the logits (||p - q||_2 <= sqrt(2)); a
    looser l2 constant than ``head_lipschitz``, reported for comparison."""
    return float(math.sqrt(2.0) * np.linalg.norm(np.asarray(kernel, np.float64), ord=2))


def _log_softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def lipschitz_ratios(kernel, bias, z1, z2, cost: str = "l2") -> np.ndarray:
    """max_y |l_y(z1_i) - l_y(z2_i)| / delta(z1_i, z2_i) per pair (l_y = -log p(y | z)); the
    max over y covers every label distribution q. A lower bound on the Lipschitz constant.

    Args: kernel (d, K), bias (K,), z1, z2 (n, d) paired rows. Returns (n,) (pairs at distance
    0 are dropped)."""
    _check_cost(cost)
    w, b = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    gap = np.abs(_log_softmax(z1 @ w + b) - _log_softmax(z2 @ w + b)).max(axis=1)
    dist = np.linalg.norm(z1 - z2, ord={"l2": 2, "l1": 1}[cost], axis=1)
    keep = dist > 0
    return gap[keep] / dist[keep]


def pairwise_cost(x, y, cost: str) -> np.ndarray:
    """C[i, j] = delta(x_i, y_j) in float64 (l2, l1 exactly; cosine/angular via OTT)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if cost == "l2":
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
        return np.sqrt(np.maximum(sq, 0.0))
    if cost == "l1":  # in row blocks of about 4M elements
        step = max(1, 4_000_000 // max(1, y.shape[0] * y.shape[1]))
        return np.concatenate([np.abs(x[k:k + step, None, :] - y[None, :, :]).sum(-1)
                               for k in range(0, x.shape[0], step)]) if len(x) else np.zeros((0, len(y)))
    return np.asarray(cost_matrix(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), cost), np.float64)


def round_to_coupling(plan, a, b) -> np.ndarray:
    """Round a nonnegative matrix onto the transport polytope U(a, b) (Altschuler, Weed &
    Rigollet 2017, Algorithm 2): scale down rows, then columns, then add the rank-one fix.
    Returns a coupling with marginals exactly a and b (up to float64 rounding)."""
    f = np.maximum(np.asarray(plan, np.float64), 0.0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rows = f.sum(1)
    f = f * np.minimum(a / np.where(rows > 0, rows, 1.0), 1.0)[:, None]
    cols = f.sum(0)
    f = f * np.minimum(b / np.where(cols > 0, cols, 1.0), 1.0)[None, :]
    err_a, err_b = a - f.sum(1), b - f.sum(0)
    mass = err_a.sum()
    if mass > 0:
        f = f + np.outer(err_a, err_b) / mass
    return f


@functools.partial(jax.jit, static_argnames=("max_iterations", "threshold"))
def _sinkhorn(cm, eps_abs, *, max_iterations: int, threshold: float):
    """OTT Sinkhorn on a cost matrix, epsilon annealed from 100 x ``eps_abs`` (decay 0.95)."""
    eps = epsilon_scheduler.Epsilon(eps_abs, init=100.0, decay=0.95)
    solver = sinkhorn.Sinkhorn(max_iterations=max_iterations, threshold=threshold)
    out = solver(linear_problem.LinearProblem(geometry.Geometry(cost_matrix=cm, epsilon=eps)))
    return out.matrix, out.reg_ot_cost, out.n_iters, out.converged


def wasserstein(z_s, z_t, cost: str = "l2", epsilon: float = 1e-3, max_iterations: int = 20_000,
                threshold: float = 1e-4) -> dict:
    """W_delta between the uniform empirical measures of two clouds (upper bound, see module doc).

    Args:
      z_s: (n, d), z_t: (m, d) features; cost: "l2", "l1", "cosine" or "angular".
      epsilon: entropic regularisation RELATIVE to the mean cost (absolute = epsilon * mean C),
        reached by epsilon annealing (OTT's ``Epsilon`` scheduler: 100x, decay 0.95 per step).
      max_iterations, threshold: Sinkhorn stopping rule (marginal error, OTT's norm_error=1).
    Returns: {"w": <P_rounded, C> (>= exact W_1), "sinkhorn_cost": <P, C> of the unrounded plan,
      "reg_ot_cost": OTT's entropic cost, "epsilon_abs", "n_iters", "converged",
      "marginal_error": L1 error of the unrounded plan's marginals}.
    """
    c = pairwise_cost(z_s, z_t, cost)
    n, m = c.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    eps_abs = float(epsilon * c.mean()) if c.mean() > 0 else float(epsilon)
    plan, reg, n_iters, converged = _sinkhorn(jnp.asarray(c, jnp.float32), jnp.float32(eps_abs),
                                              max_iterations=int(max_iterations), threshold=float(threshold))
    plan = np.asarray(plan, np.float64)
    coupling = round_to_coupling(plan, a, b)
    return {"w": float((coupling * c).sum()), "sinkhorn_cost": float((plan * c).sum()),
            "reg_ot_cost": float(reg), "epsilon_abs": eps_abs, "n_iters": int(n_iters),
            "converged": bool(converged),
            "marginal_error": float(np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum())}


def label_alignment_terms(student_logits, teacher_logits, labels) -> dict:
    """LA_e (Eq. 9) with kappa_i = p_T(y_i | z_i), and what surrounds it.

    Args: student_logits (n, K) = p_S on student features; teacher_logits (n, K) = p_T on the
      SAME student features; labels (n,).
    Returns: {"la_e", "student_ce" (mean -log p_S(y_i | z_i)), "kappa_mean",
      "kappa_entropy" (mean -kappa_i log kappa_i, so la_e = student_ce - kappa_entropy),
      "f_abs_max" (max_i |f_i|, f_i the summand of LA_e)}.
    """
    s = jnp.asarray(student_logits, jnp.float32)
    t = jnp.asarray(teacher_logits, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    kappa = np.asarray(label_transport_kernel(t, y), np.float64)
    la = float(label_alignment(s, t, y, jnp.asarray(kappa, jnp.float32)))
    idx = np.asarray(labels)[:, None]
    log_ps = np.take_along_axis(_log_softmax(np.asarray(student_logits, np.float64)), idx, 1)[:, 0]
    log_pt = np.take_along_axis(_log_softmax(np.asarray(teacher_logits, np.float64)), idx, 1)[:, 0]
    f = -log_ps + kappa * log_pt
    return {"la_e": la, "student_ce": float(-log_ps.mean()), "kappa_mean": float(kappa.mean()),
            "kappa_entropy": float(-(kappa * log_pt).mean()), "f_abs_max": float(np.abs(f).max())}


def wasserstein_concentration(tau: float, n_s: int, n_t: int, delta: float, diameter: float = 1.0) -> float:
    """tau sqrt(log(2/delta)/2) (1/sqrt(n_S) + 1/sqrt(n_T)) (Eq. 11, second line), times the
    support diameter (1 as printed in the paper)."""
    if not 0.0 < delta < 1.0 / 3.0:
        raise ValueError(f"delta must be in (0, 1/3) (Theorem 2.7), got {delta}")
    return float(diameter * tau * math.sqrt(math.log(2.0 / delta) / 2.0) * (n_s ** -0.5 + n_t ** -0.5))


def label_alignment_generalisation(c3: float, vc_dim: int, n: int, delta: float) -> float:
    """2 C3 sqrt(2 log Pi(n) / n) + C3 sqrt(log(1/delta) / (2 n)) (Eqs. 47-51), with
    log Pi(n) <= d log(e n / d) for d <= n, else n log 2 (Sauer-Shelah)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if vc_dim < 1 or n < 1:
        raise ValueError(f"vc_dim and n must be >= 1, got {vc_dim}, {n}")
    log_growth = vc_dim * math.log(math.e * n / vc_dim) if vc_dim <= n else n * math.log(2.0)
    log_growth = min(log_growth, n * math.log(2.0))
    return float(2.0 * c3 * math.sqrt(2.0 * log_growth / n) + c3 * math.sqrt(math.log(1.0 / delta) / (2.0 * n)))


def bound_terms(*, teacher_kernel, teacher_bias, z_s, y_s, student_logits, z_t, err_t: float,
                delta: float = 0.05, vc_dims: Optional[dict] = None, costs: Sequence[str] = ("l2", "l1"),
                epsilon: float = 1e-3, max_iterations: int = 20_000, threshold: float = 1e-4,
                pairs: int = 4096, seed: int = 0) -> dict:
    """All terms of Theorems 2.6 and 2.7 for one teacher/student pair, on one split.

    Args:
      teacher_kernel (d, K), teacher_bias (K,): the teacher head p_T.
      z_s (n_S, d), y_s (n_S,): student features phi(x_S) and labels; student_logits (n_S, K).
      z_t (n_T, d): teacher features theta(x_T).
      err_t: the teacher's cross-entropy on its own split (err_T).
      delta: confidence of Theorem 2.7 (holds with probability >= 1 - 3 delta).
      vc_dims: {name: d} VC dimensions to evaluate the LA generalisation term with; the first
        one goes into ``bound_thm27``.
      costs: metrics delta evaluated for FA_e (the smallest tau * W is used, Eq. 10).
      epsilon, max_iterations, threshold: the Sinkhorn solve (``wasserstein``).
      pairs, seed: random pairs for the empirical Lipschitz ratios.
    Returns: a JSON-ready dict (see keys; ``None`` = not computable).
    """
    z_s, z_t = np.asarray(z_s, np.float64), np.asarray(z_t, np.float64)
    n_s, n_t = len(z_s), len(z_t)
    teacher_logits = z_s @ np.asarray(teacher_kernel, np.float64) + np.asarray(teacher_bias, np.float64)
    la = label_alignment_terms(student_logits, teacher_logits, y_s)
    rng = np.random.default_rng(seed)
    both = np.concatenate([z_s, z_t])
    i, j = rng.integers(0, len(both), pairs), rng.integers(0, len(both), pairs)
    fa = {}
    for cost in costs:
        tau = head_lipschitz(teacher_kernel, cost)
        ot = wasserstein(z_s, z_t, cost, epsilon, max_iterations, threshold)
        ratios = lipschitz_ratios(teacher_kernel, teacher_bias, both[i], both[j], cost)
        diam = float(max(pairwise_cost(both[k:k + 512], both, cost).max() for k in range(0, len(both), 512)))
        fa[cost] = {"tau": tau, "tau_empirical_max_ratio": float(ratios.max()) if len(ratios) else None,
                    "w": ot["w"], "fa_e": tau * ot["w"], "diameter": diam, "sinkhorn": ot}
    best = min(fa, key=lambda c: fa[c]["fa_e"])
    tau = fa[best]["tau"]
    w_conc = wasserstein_concentration(tau, n_s, n_t, delta)
    w_conc_diam = wasserstein_concentration(tau, n_s, n_t, delta, diameter=fa[best]["diameter"])
    c3 = la["f_abs_max"]
    la_gen = {name: label_alignment_generalisation(c3, int(d), n_s, delta) for name, d in (vc_dims or {}).items()}
    thm26 = err_t + fa[best]["fa_e"] + la["la_e"]
    first_gen = next(iter(la_gen.values())) if la_gen else 0.0
    return {
        "n_s": n_s, "n_t": n_t, "delta": delta, "err_t": float(err_t),
        "fa_cost": best, "tau": tau, "spectral_tau_l2": spectral_lipschitz(teacher_kernel),
        "w": fa[best]["w"], "fa_e": fa[best]["fa_e"], "fa_by_cost": fa,
        "la_e": la["la_e"], "kappa_mean": la["kappa_mean"], "kappa_entropy": la["kappa_entropy"],
        "student_ce": la["student_ce"],
        "finite_sample": {
            "w_concentration": w_conc, "w_concentration_diameter_scaled": w_conc_diam,
            "wasserstein_dimension_terms": None,
            "la_generalisation": la_gen, "c3_empirical": c3, "vc_dims": dict(vc_dims or {}),
        },
        "bound_thm26": thm26,
        "bound_thm27": thm26 + w_conc + first_gen,
    }
