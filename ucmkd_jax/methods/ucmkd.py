r"""UCMKD: the bilevel step of Algorithm 1 (paper Sec. 3), and its Table 6 ablations.

One step, for a labelled student batch (x_S, y) and an independently drawn teacher-modality
batch x_T (unpaired):

    z_T = theta(x_T)                                        frozen teacher, no gradient
    (phi', p') = (phi, p_S)                                 Alg. 1 line 5
    n1 times:  phi' <- inner_opt(phi', grad_phi' lambda_1 FA(phi'(x_S), z_T))     lines 6-8, Eq. 14
    n2 times:  (phi', p') <- inner_opt(., grad lambda_2 LA(p', p_T; phi'(x_S), y)) lines 9-13, Eq. 15
               LA = mean_i[-log p'(y_i|z_i) + kappa_i log p_T(y_i|z_i)], kappa_i = p_T(y_i|z_i)
               held constant (App. D); la_grad="head" moves p' only (authors' code), "full"
               moves phi' too (line 11).
    L_out = CE(p'(phi'(x_S)), y)                            Eq. 2, lines 14-15
    g = dL_out / d(phi, p_S)                                hypergradient, then the outer update

``hypergrad="unrolled"`` is the exact total derivative: ``jax.grad`` of L_out as a function of
(phi, p_S) through every inner step (second order: Hessian-vector products through the ResNet,
BatchNorm and the unrolled Sinkhorn solve); by default (``hvp="forward_over_reverse"``) the FA
steps' second-order term is a forward-mode Hessian-vector product over the saved FA gradient
(``unrolled_hypergradient_fwd_rev``), the same number as reverse-over-reverse ``jax.grad``, which
``hvp="reverse_over_reverse"`` keeps. ``hypergrad="first_order"`` (the authors' code) is
dL_out/d(phi', p') evaluated at the adapted parameters and applied to (phi, p_S): here each inner
update is computed from ``stop_gradient`` inputs, so d(phi')/d(phi) = I and no second-order
work is traced at all. Both are the same function below.

BatchNorm running statistics are threaded through the adapted model's forward passes. With
``la_grad="head"`` the LA step does not move phi', so by default the features phi'(x_S) are
computed once and shared by the LA step and the outer loss; ``share_la_forward=False`` runs the
two forwards as the authors' code does (one more BatchNorm update a step). The inner optimiser
state is fresh per inner step or carried through the outer step (``inner_state``), and the inner
losses are weighted by lambda or not (``weight_inner_losses``): see ``MethodConfig``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.losses.feature_alignment import feature_alignment
from ucmkd_jax.losses.label_alignment import label_alignment, label_transport_kernel
from ucmkd_jax.methods.base import MethodConfig, check_bilevel_config, check_shared_latent, register, teacher_features
from ucmkd_jax.models.model import Model
from ucmkd_jax.optim import inner_optimizer

__all__ = ["build_ucmkd", "ucmkd_outer_loss", "unrolled_hypergradient_fwd_rev"]


class _Parts(NamedTuple):
    fa_loss: Callable  # (enc, stats) -> (weighted FA, (new stats, FA))
    inner_step: Callable  # (tree, grads, state | None) -> (updates, state) of the inner optimiser
    la_and_outer: Callable  # (enc, head, stats, enc_state) -> (outer CE, (new stats, metrics))


def _parts(student: Model, teacher: Model, config: MethodConfig, *, teacher_variables, batch, lr,
           n2: int) -> _Parts:
    """The pieces of L_out shared by the reverse-mode and forward-over-reverse hypergradients."""
    first_order = config.hypergrad == "first_order"
    sg = jax.lax.stop_gradient if first_order else (lambda t: t)
    fa_cfg = config.fa
    if not first_order:  # OTT's implicit/Danskin gradient is wrong under a second derivative
        fa_cfg = dataclasses.replace(fa_cfg, differentiation="unroll")
    inner_lr = config.inner_lr if config.inner_opt == "adamw" else lr
    lambda_fa = config.lambda_fa if config.weight_inner_losses else 1.0
    lambda_la = config.lambda_la if config.weight_inner_losses else 1.0
    fresh = config.inner_state == "per_step"

    def inner_step(tree, grads, state=None):
        # One optimiser state per parameter group (encoder, head): a fresh one every step, or the
        # one carried through the outer step (the release's single torch AdamW, whose per-parameter
        # state only advances for parameters that received a gradient).
        tx = inner_optimizer(config.inner_opt, inner_lr, config.inner_weight_decay, config.inner_eps_root)
        if fresh or state is None:
            state = tx.init(tree)
        updates, state = tx.update(grads, state, tree)
        return updates, (None if fresh else state)

    x_s, y = batch["x_s"], batch["y_s"]
    z_t = teacher_features(teacher, teacher_variables, batch["x_t"])
    t_head = teacher_variables["params"]["head"]

    def fa_loss(e, stats):
        z, new_stats = student.encode(e, stats, x_s, train=True)
        fa = feature_alignment(z, z_t, fa_cfg)
        return lambda_fa * fa, (new_stats, fa)

    def la_and_outer(enc, head, stats, enc_state=None):
        # Stage 2: label alignment on p' (and phi' with la_grad="full"), then the outer CE.
        metrics = {}
        z = None
        head_state = None
        for _ in range(n2):
            if config.la_grad == "head":
                if z is None or not config.share_la_forward:
                    z, stats = student.encode(enc, stats, x_s, train=True)

                def la_loss(h, zz):
                    t_logits = teacher.classify(t_head, zz)
                    la = label_alignment(student.classify(h, zz), t_logits, y)
                    return lambda_la * la, (la, label_transport_kernel(t_logits, y).mean())

                (_, (la, kappa)), g = jax.value_and_grad(la_loss, has_aux=True)(sg(head), sg(z))
                updates, head_state = inner_step(sg(head), g, head_state)
                head = optax.apply_updates(head, updates)
            else:
                kappa = None
                if not first_order:
                    # kappa is a constant of the inner gradient (App. D) but a function of phi for the
                    # outer derivative: compute it outside the inner grad (one extra forward pass).
                    z_k, _ = student.encode(enc, stats, x_s, train=True)
                    kappa = jax.nn.softmax(teacher.classify(t_head, z_k))[jnp.arange(y.shape[0]), y]

                def la_loss_full(eh, stats=stats, kappa=kappa):
                    zz, new_stats = student.encode(eh[0], stats, x_s, train=True)
                    t_logits = teacher.classify(t_head, zz)
                    la = label_alignment(student.classify(eh[1], zz), t_logits, y, kappa)
                    return lambda_la * la, (new_stats, la, label_transport_kernel(t_logits, y).mean())

                (_, (stats, la, kappa)), g = jax.value_and_grad(la_loss_full, has_aux=True)(sg((enc, head)))
                enc_updates, enc_state = inner_step(sg(enc), g[0], enc_state)
                head_updates, head_state = inner_step(sg(head), g[1], head_state)
                enc = optax.apply_updates(enc, enc_updates)
                head = optax.apply_updates(head, head_updates)
            metrics.update(la=la, kappa=kappa)

        # Outer loss at the adapted parameters.
        if z is None or not config.share_la_forward or config.la_grad == "full":
            z, stats = student.encode(enc, stats, x_s, train=True)
        ce = cross_entropy(student.classify(head, z), y)
        return ce, (stats, dict(metrics, ce=ce))

    return _Parts(fa_loss, inner_step, la_and_outer)


def ucmkd_outer_loss(student: Model, teacher: Model, config: MethodConfig, *, params, batch_stats,
                     teacher_variables, batch, lr, n1: int, n2: int):
    """L_out(phi, p_S) through the inner FA and LA steps (Algorithm 1, lines 5-15).

    Returns (outer CE, (new batch_stats, metrics)). Differentiate w.r.t. ``params`` for the
    hypergradient; with ``config.hypergrad == "first_order"`` that derivative is the gradient
    at the adapted parameters.
    """
    parts = _parts(student, teacher, config, teacher_variables=teacher_variables, batch=batch, lr=lr, n2=n2)
    sg = jax.lax.stop_gradient if config.hypergrad == "first_order" else (lambda t: t)
    enc, stats = params["encoder"], batch_stats
    fa_metrics = {}
    enc_state = None
    # Stage 1: feature alignment on phi'.
    for _ in range(n1):
        (_, (stats, fa)), g = jax.value_and_grad(parts.fa_loss, has_aux=True)(sg(enc), stats)
        updates, enc_state = parts.inner_step(sg(enc), g, enc_state)
        enc = optax.apply_updates(enc, updates)
        fa_metrics["fa"] = fa
    ce, (stats, metrics) = parts.la_and_outer(enc, params["head"], stats, enc_state)
    return ce, (stats, dict(fa_metrics, **metrics))


def unrolled_hypergradient_fwd_rev(student: Model, teacher: Model, config: MethodConfig, *, params,
                                   batch_stats, teacher_variables, batch, lr, n1: int, n2: int):
    """The exact hypergradient with forward-over-reverse Hessian-vector products for the FA steps.

    Each FA step is phi_{k+1} = phi_k + U(g(phi_k), phi_k), with g = grad(lambda_1 FA) and U the
    fresh inner optimiser update. Its transposed Jacobian applied to a cotangent c is

        c + (dU/dphi)^T c + H_k (dU/dg)^T c,       H_k = Hessian of lambda_1 FA at phi_k (symmetric),

    and ``jax.linearize`` of g at phi_k gives the tangent map v -> H_k v while computing g itself,
    so H_k is applied by a forward (JVP) pass over the saved gradient computation instead of a
    transpose of it. The LA stage and the outer CE (cheap second order: with la_grad="head" only
    through the head) stay in reverse mode. Returns ((outer CE, (batch_stats, metrics)), grads),
    equal to ``jax.value_and_grad(ucmkd_outer_loss, has_aux=True)`` up to rounding.
    """
    parts = _parts(student, teacher, config, teacher_variables=teacher_variables, batch=batch, lr=lr, n2=n2)
    enc, stats = params["encoder"], batch_stats
    tape = []
    fa = None
    for _ in range(n1):
        def fa_grad(e, stats=stats):
            g, aux = jax.grad(parts.fa_loss, has_aux=True)(e, stats)
            return g, aux

        g, hvp, (stats, fa) = jax.linearize(fa_grad, enc, has_aux=True)
        # a fresh inner state every step (build_ucmkd refuses a carried one on this path)
        updates, update_vjp = jax.vjp(lambda gg, ee: parts.inner_step(ee, gg)[0], g, enc)
        tape.append((hvp, update_vjp))
        enc = optax.apply_updates(enc, updates)

    (ce, (stats, metrics)), (c_enc, c_head) = jax.value_and_grad(
        parts.la_and_outer, argnums=(0, 1), has_aux=True)(enc, params["head"], stats)
    for hvp, update_vjp in reversed(tape):
        c_g, c_e = update_vjp(c_enc)
        c_enc = jax.tree.map(lambda a, b, c: a + b + c, c_enc, c_e, hvp(c_g))
    if fa is not None:
        metrics = dict(metrics, fa=fa)
    return (ce, (stats, metrics)), {"encoder": c_enc, "head": c_head}


def build_ucmkd(student: Model, teacher: Model, config: MethodConfig, n1: int | None = None,
                n2: int | None = None):
    """grads_fn of the UCMKD step; ``n1``/``n2`` override the config (ablations)."""
    check_shared_latent(student, teacher)
    check_bilevel_config(config)
    n1 = config.n1 if n1 is None else n1
    n2 = config.n2 if n2 is None else n2
    fwd_rev = config.hypergrad == "unrolled" and config.hvp == "forward_over_reverse"
    if fwd_rev and config.inner_state == "per_outer_step" and (n1 > 1 or config.la_grad == "full"):
        # the tape differentiates each FA update with a fresh optimiser state; a carried state
        # (n1 > 1, or an encoder LA step after FA) depends on phi through earlier gradients
        raise ValueError("inner_state='per_outer_step' with n1 > 1 or la_grad='full' needs "
                         "hvp='reverse_over_reverse' for the unrolled hypergradient")

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        kw = dict(batch_stats=batch_stats, teacher_variables=teacher_variables, batch=batch, lr=lr, n1=n1, n2=n2)
        if fwd_rev:
            (loss, (stats, metrics)), grads = unrolled_hypergradient_fwd_rev(
                student, teacher, config, params=params, **kw)
        else:
            (loss, (stats, metrics)), grads = jax.value_and_grad(
                lambda p: ucmkd_outer_loss(student, teacher, config, params=p, **kw), has_aux=True)(params)
        return grads, stats, dict(metrics, loss=loss)

    return grads_fn


def bn_updates(config: MethodConfig, n1: int, n2: int) -> int:
    """Train-mode student forwards that update the BatchNorm running averages in one step: one
    per FA step, then one shared by the LA steps and the outer loss with ``la_grad="head"`` and
    ``share_la_forward``, else one per LA step plus the outer one."""
    if config.la_grad == "head" and config.share_la_forward:
        return n1 + 1
    return n1 + n2 + 1


@register("ucmkd", uses_teacher=True, summary="bilevel: inner FA then LA, outer CE (Algorithm 1)",
          bn_updates=lambda c: bn_updates(c, c.n1, c.n2))
def _ucmkd(student, teacher, config):
    return build_ucmkd(student, teacher, config)


@register("ucmkd_fa_only", uses_teacher=True, summary="bilevel with the FA inner stage only (Table 6)",
          bn_updates=lambda c: bn_updates(c, c.n1, 0))
def _ucmkd_fa_only(student, teacher, config):
    return build_ucmkd(student, teacher, config, n2=0)


@register("ucmkd_la_only", uses_teacher=True, summary="bilevel with the LA inner stage only (Table 6)",
          bn_updates=lambda c: bn_updates(c, 0, c.n2))
def _ucmkd_la_only(student, teacher, config):
    return build_ucmkd(student, teacher, config, n1=0)
