"""Pieces shared by the published baselines (``dkd``, ``rkd``, ``rld``, ``fitnet``, ``reviewkd``,
``norm``, ``c2kd``): option lookup, input checks, teacher stage maps, frame folding and resizing
of feature maps, a step counter for KD-weight warm-ups, KL helpers and a separate optimiser for a
method's own modules. Private: each method module re-states what it uses in its docstring.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ucmkd_jax.losses.classification import cross_entropy
from ucmkd_jax.models.model import Model
from ucmkd_jax.precision import at_least_f32

__all__ = ["MASK_VALUE", "options", "check_teacher", "check_feature_maps", "stage_channels", "split_extra",
           "counter_extra", "warmup_weight", "adam_for_extra", "per_sample_maps", "resize_hw",
           "teacher_stage_maps", "adaptive_avg_pool", "kl_from_logits", "binary_log_probs", "binary_kl",
           "masked_kl"]

# Added to masked logits (after division by the temperature) before a softmax: finite, so that
# 0 * log 0 terms and their gradients stay 0 instead of NaN (the authors use -1000 or -1e9).
MASK_VALUE = -1e9


# ---------------------------------------------------------------------------- options and checks
def options(config, name: str, default):
    """A method's own hyperparameters: ``config.<name>`` when the ``MethodConfig`` carries them
    (``ucmkd_jax.methods.baselines.BaselineConfig`` does), else the method's defaults."""
    opts = getattr(config, name, None)
    return default if opts is None else opts


def check_teacher(method: str, student: Model, teacher: Optional[Model], same_classes: bool = True) -> None:
    if teacher is None:
        raise ValueError(f"{method} needs a teacher model")
    if same_classes and teacher.num_classes != student.num_classes:
        raise ValueError(f"{method}: teacher has {teacher.num_classes} classes, student {student.num_classes}")


def check_feature_maps(method: str, *models: Model) -> None:
    """Feature-map methods need encoders with spatial stage maps (a ResNet's four stages or a
    ViT's tapped patch tokens, projected or not; the MLP encoder of vectors has none)."""
    for m in models:
        if getattr(m.encoder, "stage_channels", None) is None:
            raise ValueError(f"{method} distils stage feature maps: {m.name} ({m.modality}) needs an encoder "
                             f"with spatial feature maps (a ResNet or a ViT), not {type(m.encoder).__name__}")


def stage_channels(model: Model) -> list:
    """Channels of the encoder's stage maps (a ResNet's four: width * 2^k, x4 for bottlenecks; a
    ViT's five: its token width)."""
    return list(model.encoder.stage_channels)


# ---------------------------------------------------------------------------- state of the extra modules
def split_extra(tree) -> Tuple[Any, Any]:
    """(tree without the key "extra", tree["extra"] or {}) for params / batch_stats dicts."""
    return {k: v for k, v in tree.items() if k != "extra"}, tree.get("extra", {})


def counter_extra(key, student, teacher, teacher_variables, config):
    """``init_extra`` of the methods whose only state of their own is a step counter (the
    KD-weight warm-up of ``dkd`` / ``rld``): no parameters, ``batch_stats["extra"]["step"]``."""
    del key, student, teacher, teacher_variables, config
    return {"params": {}, "batch_stats": {"step": jnp.zeros((), jnp.int32)}}


def warmup_weight(step, warmup_steps: int):
    """min((step + 1) / warmup_steps, 1) for the 0-based global ``step``; 1 when warmup_steps <= 0.

    The DKD/RLD code multiplies the KD term by min(epoch / warmup, 1) with 1-based epochs; this
    is the same ramp counted in steps (the step does not know the epoch length)."""
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum((step.astype(jnp.float32) + 1.0) / float(warmup_steps), 1.0)


def adam_for_extra(tx: optax.GradientTransformation, lr: float, weight_decay: float) -> optax.GradientTransformation:
    """``tx`` for the student (params "encoder", "head") and Adam for ``params["extra"]``, with
    PyTorch's coupled L2 weight decay (``torch.optim.Adam(weight_decay=...)`` adds wd * p to the
    gradient before the moments)."""
    extra_tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr)) if weight_decay > 0 \
        else optax.adam(lr)

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: "extra" if k == "extra" else "main", v) for k, v in params.items()}

    return optax.multi_transform({"main": tx, "extra": extra_tx}, labels)


# ---------------------------------------------------------------------------- feature maps
def per_sample_maps(model: Model, maps: Sequence[jax.Array], n: int) -> list:
    """Stage maps with one entry per sample, float32: video folds its frames into the batch axis
    ((n * T, h, w, c)), so those are averaged back over frames to (n, h, w, c)."""
    out = []
    for m in maps:
        m = at_least_f32(m)
        if model.modality == "video":
            m = m.reshape((n, -1) + m.shape[1:]).mean(axis=1)
        out.append(m)
    return out


def _align_corners_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights with the corners aligned: output i samples the
    input at i * (n_in - 1) / (n_out - 1) (PyTorch's ``align_corners=True``)."""
    w = np.zeros((n_out, n_in), np.float64)
    if n_in == 1 or n_out == 1:
        w[:, 0] = 1.0
        return w
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] += frac
    return w


def resize_hw(x: jax.Array, hw: Tuple[int, int], method: str = "bilinear") -> jax.Array:
    """(n, h, w, c) -> (n, hw[0], hw[1], c); unchanged when the size already matches. As PyTorch's
    ``F.interpolate``: "bilinear" with align_corners=False and no anti-aliasing;
    "bilinear_align_corners" with align_corners=True (two small matrix products with static
    weights); "nearest" takes source index floor(i * in / out) (two gathers with static indices)."""
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    if method == "bilinear_align_corners":
        wh = jnp.asarray(_align_corners_weights(x.shape[1], hw[0]), x.dtype)
        ww = jnp.asarray(_align_corners_weights(x.shape[2], hw[1]), x.dtype)
        return jnp.einsum("Hh,nhwc,Ww->nHWc", wh, x, ww)
    if method == "nearest":
        ih = (np.arange(hw[0]) * x.shape[1]) // hw[0]
        iw = (np.arange(hw[1]) * x.shape[2]) // hw[1]
        return x[:, ih][:, :, iw]
    return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), method=method, antialias=False)


def teacher_stage_maps(teacher: Model, teacher_variables, x_t):
    """Frozen teacher: (z_T (m, d), per-sample stage maps), inference-mode BatchNorm, no gradient."""
    p = teacher_variables["params"]
    z, _, stages = teacher.encode(p["encoder"], teacher_variables["batch_stats"], x_t, train=False,
                                  return_stages=True)
    return jax.lax.stop_gradient((z, per_sample_maps(teacher, stages, x_t.shape[0])))


def adaptive_avg_pool(x: jax.Array, out_hw: Tuple[int, int]) -> jax.Array:
    """PyTorch's ``adaptive_avg_pool2d`` on (n, h, w, c): bin i of an axis of size s covers
    [floor(i s / o), ceil((i + 1) s / o)). A reshape-mean when the sizes divide, else two small
    averaging matrices (static)."""
    n, h, w, c = x.shape
    oh, ow = out_hw
    if h % oh == 0 and w % ow == 0:
        return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))

    def matrix(s, o):
        a = np.zeros((o, s), np.float32)
        for i in range(o):
            lo, hi = (i * s) // o, -(-((i + 1) * s) // o)
            a[i, lo:hi] = 1.0 / (hi - lo)
        return jnp.asarray(a, x.dtype)

    x = jnp.einsum("ih,nhwc->niwc", matrix(h, oh), x)
    return jnp.einsum("jw,niwc->nijc", matrix(w, ow), x)


# ---------------------------------------------------------------------------- distributions
def kl_from_logits(target_logits, logits) -> jax.Array:
    """Per-sample KL(softmax(target) || softmax(logits)) over the last axis. No stop-gradient."""
    lt = jax.nn.log_softmax(at_least_f32(target_logits), axis=-1)
    ls = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
    return jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1)


def binary_log_probs(logits, index) -> Tuple[jax.Array, jax.Array]:
    """(log p_k, log(1 - p_k)) of softmax(logits) at class ``index`` per row, both computed in
    log space (log(1 - p_k) = logsumexp over the other classes - logsumexp over all)."""
    logits = at_least_f32(logits)
    onehot = jax.nn.one_hot(index, logits.shape[-1], dtype=bool)
    lse = jax.nn.logsumexp(logits, axis=-1)
    log_p = jnp.take_along_axis(logits, index[:, None], axis=-1)[:, 0] - lse
    log_rest = jax.nn.logsumexp(jnp.where(onehot, MASK_VALUE, logits), axis=-1) - lse
    return log_p, log_rest


def binary_kl(log_p_t, log_q_t, log_p_s, log_q_s) -> jax.Array:
    """KL([p_t, q_t] || [p_s, q_s]) per row from log-probabilities (q = 1 - p)."""
    return jnp.exp(log_p_t) * (log_p_t - log_p_s) + jnp.exp(log_q_t) * (log_q_t - log_q_s)


def masked_kl(target_logits, logits, mask) -> jax.Array:
    """Per-sample KL between the softmaxes restricted to the classes where ``mask`` is False
    (masked classes get ``MASK_VALUE`` logits, so probability 0 on both sides)."""
    t = jnp.where(mask, MASK_VALUE, at_least_f32(target_logits))
    s = jnp.where(mask, MASK_VALUE, at_least_f32(logits))
    return kl_from_logits(t, s)


def warmup_logit_kd_grads(student: Model, teacher: Model, ce_weight: float, warmup_steps: int, kd_fn):
    """The step of a paired logit-distillation method with a linearly warmed-up KD weight
    (DKD, RLD): loss = ce_weight * CE + w(t) * kd, w(t) = min((t + 1) / warmup_steps, 1), with the
    step counter t in ``batch_stats["extra"]["step"]`` (``counter_extra``).

    kd_fn(student_logits, teacher_logits, labels) -> (kd scalar, metrics dict, extra metrics
    that need no gradient, e.g. {"teacher_wrong": ...}). Returns a ``grads_fn``."""

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        del lr
        stats, extra = split_extra(batch_stats)
        t_logits, _, _ = teacher.apply(teacher_variables, batch["x_t"], train=False)
        t_logits = jax.lax.stop_gradient(t_logits)
        w = warmup_weight(extra["step"], warmup_steps)
        y = batch["y_s"]

        def loss_fn(p):
            z, new_stats = student.encode(p["encoder"], stats, batch["x_s"], train=True)
            logits = student.classify(p["head"], z)
            ce = cross_entropy(logits, y)
            kd, metrics = kd_fn(logits, t_logits, y)
            return ce_weight * ce + w * kd, (new_stats, dict(metrics, ce=ce, kd=kd))

        (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        new_stats = {**new_stats, "extra": {"step": extra["step"] + 1}}
        return grads, new_stats, dict(metrics, loss=loss, kd_weight=w)

    return grads_fn


def own_optimizer(name: str, default):
    """The ``optimizer`` hook of a method whose options (``default``'s type) carry
    ``own_optimizer``, ``extra_lr`` and ``extra_weight_decay``: Adam for its own modules when
    ``own_optimizer`` is set, the outer optimiser otherwise."""

    def optimizer(tx, config):
        opts = options(config, name, default)
        return adam_for_extra(tx, opts.extra_lr, opts.extra_weight_decay) if opts.own_optimizer else tx

    return optimizer
