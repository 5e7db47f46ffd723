"""What every method shares: the train state, the registry and the one compiled train step.

A method is a function ``build(student, teacher, config) -> grads_fn`` with

    grads_fn(params, batch_stats, teacher_variables, batch, lr)
        -> (grads, new_batch_stats, metrics)

pure and traceable. ``make_train_step`` wraps it into ONE jitted step that applies the outer
optimiser, donates the state's buffers and records (without a host sync) the first step whose
loss or gradient was not finite, so the loop can stop with a message naming it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ucmkd_jax.losses.feature_alignment import FAConfig
from ucmkd_jax.models.model import Model
from ucmkd_jax.overrides import ConfigError, bounded, validate
from ucmkd_jax.registry import Registry

__all__ = ["TrainState", "MethodConfig", "MethodSpec", "register", "get_method", "METHODS",
           "make_train_step", "create_train_state", "check_shared_latent", "check_bilevel_config", "teacher_features", "with_extra"]


class TrainState(struct.PyTreeNode):
    """step: int32 scalar; params: {"encoder", "head"}; batch_stats; opt_state;
    nonfinite_step: int32 scalar, -1 until the first step with a non-finite loss or gradient
    (that step's update is skipped, so the state stays finite)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    nonfinite_step: jax.Array


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Hyperparameters of the distillation methods (defaults: Table 12 and the authors' code).

    Attributes:
      lambda_fa, lambda_la: lambda_1, lambda_2 of Algorithm 1 (also FA / LA weights of
        ``feature_kd`` / ``sumall``).
      n1, n2: inner FA and LA steps (Table 12 "FA epoch", "LA epoch").
      hypergrad: "first_order" (authors' code) or "unrolled" (exact total derivative).
      hvp: how the unrolled hypergradient differentiates through the FA inner steps:
        "forward_over_reverse" (``jax.linearize`` of the FA gradient, its tangent map applied to
        the outer cotangent: a Hessian-vector product) or "reverse_over_reverse" (``jax.grad``
        through the whole unrolled loss). The same number; ignored for "first_order".
      inner_opt: "adamw" (authors' code, lr ``inner_lr``, wd ``inner_weight_decay``, ``inner_eps_root``
        under the square root: > 0 to differentiate through it; 0 is PyTorch's AdamW, eps 1e-8
        added to sqrt(v) only) or "sgd" (Algorithm 1: the current outer learning rate).
      inner_state: "per_step" (a fresh optimiser state for every inner step) or "per_outer_step"
        (the release: one optimiser per outer step, shared by the n1 FA and n2 LA steps; as in
        PyTorch, a parameter's moments and step count advance only in steps that give it a
        gradient, so the encoder's and the head's states are kept apart). The two agree when
        n1 <= 1, n2 <= 1 and la_grad="head".
      weight_inner_losses: multiply the inner FA and LA losses by lambda_fa, lambda_la (Algorithm
        1); False: the release's bilevel step, whose inner losses carry no weight (then lambda
        has no effect on ucmkd and its ablations).
      share_la_forward: with la_grad="head", compute phi'(x_S) once for the LA steps and the outer
        loss (one train-mode forward, one BatchNorm update, fewer FLOPs); False: one forward per
        LA step and one for the outer loss, as the release (three BatchNorm updates a step at
        n1 = n2 = 1).
      la_grad: "head" (authors' code: the LA step moves only p') or "full" (Algorithm 1 line 11:
        it moves phi' too).
      fa: the OT solve (cost, epsilon, iterations).
      kd_temperature, kd_alpha: ``vanilla_kd``'s T and alpha.
    """

    lambda_fa: float = bounded(1.0, ge=0.0)
    lambda_la: float = bounded(1.0, ge=0.0)
    n1: int = bounded(1, ge=0)
    n2: int = bounded(1, ge=0)
    hypergrad: Literal["first_order", "unrolled"] = "first_order"
    hvp: Literal["forward_over_reverse", "reverse_over_reverse"] = "forward_over_reverse"
    inner_opt: Literal["adamw", "sgd"] = "adamw"
    inner_lr: float = bounded(1e-5, gt=0.0)
    inner_weight_decay: float = bounded(0.05, ge=0.0)
    inner_eps_root: float = bounded(1e-8, ge=0.0)
    inner_state: Literal["per_step", "per_outer_step"] = "per_step"
    weight_inner_losses: bool = True
    share_la_forward: bool = True
    la_grad: Literal["head", "full"] = "head"
    fa: FAConfig = FAConfig()
    kd_temperature: float = bounded(4.0, gt=0.0)
    kd_alpha: float = bounded(0.9, ge=0.0, le=1.0)

    def __post_init__(self):
        validate(self)


def check_bilevel_config(config: MethodConfig) -> None:
    """Refuse settings of the bilevel step that cannot be computed together (checked when a step
    is built and before a run starts, not per field, so that overrides may come in any order)."""
    if config.hypergrad == "unrolled" and config.inner_opt == "adamw" and config.inner_eps_root == 0:
        raise ConfigError("the unrolled hypergradient differentiates through AdamW's sqrt(v), which needs "
                          "method.inner_eps_root > 0 (e.g. --set method.inner_eps_root=1e-8; --protocol authors "
                          "sets 0, PyTorch's AdamW)")


GradsFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method. ``build(student, teacher, config) -> grads_fn``.

    uses_teacher: the step reads a teacher-modality batch ``x_t``;
    needs_paired: ``x_t`` must be the paired partner of ``x_s`` (vanilla KD).
    init_extra: for methods with trainable modules of their own (regressors, fusion modules,
      proxy heads, a jointly trained teacher): ``init_extra(key, student, teacher,
      teacher_variables, config) -> {"params": ..., "batch_stats": ...}``. They are trained in
      the state under ``params["extra"]`` and ``batch_stats["extra"]`` (the student's model
      ignores those keys, so evaluation and checkpoints need nothing special); ``grads_fn``
      must return a gradient for them and carry ``batch_stats["extra"]`` forward.
    optimizer: ``optimizer(tx, config) -> tx`` to replace the outer optimiser (e.g. a separate
      optimiser for ``params["extra"]`` via ``optax.multi_transform``).
    bn_updates: ``bn_updates(config) -> int``: how many train-mode forwards of the student update
      its BatchNorm running averages in one step (1: one forward per step). Evaluation uses those
      averages unless precise BatchNorm is on (``ucmkd_jax.precise_bn``); runs record it.
    """

    name: str
    build: Callable[[Model, Optional[Model], MethodConfig], GradsFn]
    uses_teacher: bool
    needs_paired: bool
    summary: str
    init_extra: Optional[Callable[..., Any]] = None
    optimizer: Optional[Callable[[optax.GradientTransformation, "MethodConfig"], optax.GradientTransformation]] = None
    bn_updates: Callable[["MethodConfig"], int] = lambda config: 1


METHODS: Registry[MethodSpec] = Registry("method")


def register(name: str, *, uses_teacher: bool, needs_paired: bool = False, summary: str = "",
             init_extra: Optional[Callable[..., Any]] = None, optimizer: Optional[Callable] = None,
             bn_updates: Callable[["MethodConfig"], int] = lambda config: 1):
    """Decorator: ``@register("ce", uses_teacher=False)`` on a ``build`` function."""

    def deco(build):
        METHODS.add(name, MethodSpec(name, build, uses_teacher, needs_paired, summary, init_extra, optimizer,
                                     bn_updates))
        return build

    return deco


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def check_shared_latent(student: Model, teacher: Optional[Model]) -> None:
    """Raise ValueError unless there is a teacher whose latent size is the student's: the
    teacher's head scores student features, p_T(y | phi(x_S))."""
    if teacher is None:
        raise ValueError("this method needs a teacher model")
    if student.latent_dim != teacher.latent_dim:
        raise ValueError(f"student latent dim {student.latent_dim} != teacher latent dim "
                         f"{teacher.latent_dim}: the teacher head must score student features")


def teacher_features(teacher: Model, teacher_variables, x_t):
    """z_T = theta(x_T), frozen: inference-mode BatchNorm, no gradient. Returns (m, d)."""
    p = teacher_variables["params"]
    z, _ = teacher.encode(p["encoder"], teacher_variables["batch_stats"], x_t, train=False)
    return jax.lax.stop_gradient(z)


def with_extra(spec: MethodSpec, variables, key, student: Model, teacher: Optional[Model],
               teacher_variables, config: MethodConfig):
    """``variables`` plus the method's own trainable modules (``spec.init_extra``) under the
    key "extra" of params and batch_stats; unchanged for methods without any."""
    if spec.init_extra is None:
        return variables
    extra = spec.init_extra(key, student, teacher, teacher_variables, config)
    return {"params": {**variables["params"], "extra": extra["params"]},
            "batch_stats": {**variables["batch_stats"], "extra": extra.get("batch_stats", {})}}


def create_train_state(variables, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state. The variables are copied: the train step donates (and so deletes) the
    state's buffers, which must not delete the caller's arrays."""
    variables = jax.tree.map(jnp.array, variables)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))


def make_train_step(grads_fn: GradsFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, donate: bool = True):
    """Compile ``grads_fn`` + the outer update into one step.

    Returns ``step(state, teacher_variables, batch) -> (state, metrics)``, jitted, with the
    state donated. ``metrics`` is a dict of float32 scalars (device arrays: no host sync).
    """

    def step(state: TrainState, teacher_variables, batch):
        lr = schedule(state.step)
        grads, new_stats, metrics = grads_fn(state.params, state.batch_stats, teacher_variables, batch, lr)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        gnorm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        metrics = dict(metrics, grad_norm=gnorm, lr=jnp.asarray(lr, jnp.float32))
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, state.params),
            batch_stats=keep(new_stats, state.batch_stats),
            opt_state=keep(new_opt, state.opt_state),
            nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step),
        )
        return new_state, metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())
