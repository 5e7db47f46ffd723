"""The training loop: teacher pre-training, distillation, evaluation, model selection.

This is the edge of the library. Read top to bottom:

  ``check_fit_inputs``  everything that can be refused before anything is compiled;
  ``build_step``        a method's ONE compiled step, its optimiser and schedule (``TrainStep``;
                        ``benchmarks/step_bench.py`` times exactly this);
  ``StepCache``         compiled steps and evaluators shared across seeds and methods of a run;
  ``fit``               the loop: batches to the device two steps ahead, the step, a progress bar,
                        precise BatchNorm statistics and validation every epoch, the
                        best-by-validation variables, checkpoints.

The step itself stays pure (``ucmkd_jax.methods``). Host syncs: the running loss every
``log_every`` steps (for the bar) and once per epoch.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ucmkd_jax import seeds
from ucmkd_jax.checkpoint import RunCheckpointer
from ucmkd_jax.config import TrainConfig
from ucmkd_jax.data.base import Split, validate_split
from ucmkd_jax.data.streams import eval_batches, steps_per_epoch, train_batches
from ucmkd_jax.fidelity import FROZEN_BN_BASELINES
from ucmkd_jax.losses.classification import accuracy_count
from ucmkd_jax.methods.base import (MethodConfig, MethodSpec, TrainState, create_train_state, get_method,
                                    make_train_step, with_extra)
from ucmkd_jax.models.model import Model
from ucmkd_jax.optim import OptimConfig, learning_rate_schedule, outer_optimizer
from ucmkd_jax.parallel import check_batch_divisible, local_rows, prefetch_to_device, replicate, shard_batch
from ucmkd_jax.precise_bn import PreciseBN

__all__ = ["NonFiniteLossError", "TrainResult", "TrainStep", "StepCache", "build_step", "check_fit_inputs",
           "make_evaluator", "placement", "evaluate", "precise_bn_batches", "check_last_batch", "fit"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient."""


@dataclasses.dataclass
class TrainResult:
    """variables: best-by-validation variables (numpy pytree; with precise BatchNorm statistics
    when those are on); history: one dict per epoch; precise_bn_s: seconds spent recomputing
    BatchNorm statistics in this process (the epochs it ran)."""

    variables: Any
    best_epoch: int
    best_val_acc: float
    history: List[dict]
    wall_s: float
    precise_bn_s: float = 0.0


# ---------------------------------------------------------------------------------------- checks
def check_fit_inputs(spec: MethodSpec, model: Model, train, val: Split, teacher: Optional[Model],
                     teacher_variables, teacher_train, pairing: str) -> str:
    """Refuse bad input before anything is compiled. ``train`` is a ``Split`` or a
    ``TrainStream``. Returns the pairing the loop uses ("none" for methods without a teacher)."""
    streaming = not isinstance(train, Split)
    if streaming:  # a TrainStream: checks its own data; its batches carry x_t when the method needs it
        if not hasattr(train, "epoch_batches") or not hasattr(train, "num_samples"):
            raise TypeError(f"train must be a Split or a TrainStream (num_samples, epoch_batches), got "
                            f"{type(train).__name__}")
        if spec.uses_teacher and teacher_train is not None:
            raise ValueError("with a TrainStream the teacher batches come from the stream: teacher_train must be None")
    else:
        validate_split(train, model.num_classes, f"{model.name} train")
        model.check_input(train.x)
    validate_split(val, model.num_classes, f"{model.name} val")
    if not spec.uses_teacher:
        return "none"
    if teacher is None or teacher_variables is None or (teacher_train is None and not streaming):
        raise ValueError(f"method {spec.name!r} needs a teacher, its variables and its train split")
    if spec.needs_paired and pairing != "paired":
        raise ValueError(f"method {spec.name!r} needs paired batches (the teacher sees the partner of each "
                         f"student sample): run it with the paired regime (--unpaired paired)")
    if not streaming:
        teacher.check_input(teacher_train.x)
    if teacher.num_classes != model.num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes but the student has {model.num_classes}")
    return pairing


# ---------------------------------------------------------------------------------------- the step
@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A method's compiled step with what it was built from.

    step: jitted ``step(state, teacher_variables, batch) -> (state, metrics)``, state donated.
    tx, schedule: the outer optimiser (the method's own, if it has one) and its learning rate.
    """

    spec: MethodSpec
    model: Model
    teacher: Optional[Model]
    method_config: MethodConfig
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    step: Callable

    def init_state(self, variables, teacher_variables, seed: int) -> TrainState:
        """A fresh ``TrainState`` from the model's ``variables``, with the method's own modules
        (if any) initialised from ``seeds.extra_init_seed(seed)``."""
        variables = with_extra(self.spec, variables, jax.random.PRNGKey(seeds.extra_init_seed(seed)), self.model,
                               self.teacher, teacher_variables, self.method_config)
        return create_train_state(variables, self.tx)


def build_step(method: str, model: Model, teacher: Optional[Model] = None, *,
               method_config: MethodConfig = MethodConfig(), optim: OptimConfig = OptimConfig(),
               steps_per_epoch: int, epochs: int) -> TrainStep:
    """The compiled step of ``method`` for ``model`` (and ``teacher``) under the outer optimiser
    ``optim``, whose schedule spans ``epochs`` epochs of ``steps_per_epoch`` steps."""
    spec = get_method(method)
    schedule = learning_rate_schedule(optim, steps_per_epoch, epochs)
    tx = outer_optimizer(optim, schedule)
    if spec.optimizer is not None:  # a method with modules that have an optimiser of their own
        tx = spec.optimizer(tx, method_config)
    step = make_train_step(spec.build(model, teacher, method_config), tx, schedule)
    return TrainStep(spec, model, teacher, method_config, tx, schedule, step)


def make_evaluator(model: Model) -> Callable:
    """jitted (variables, x, y, mask) -> (number correct, summed CE) in inference mode."""

    @jax.jit
    def evaluator(variables, x, y, mask):
        logits, _, _ = model.apply(variables, x, train=False)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)[:, 0]
        return accuracy_count(logits, y, mask), jnp.sum(jnp.where(mask, ce, 0.0))

    return evaluator


class StepCache:
    """Compiled steps and evaluators, built once per setting and then reused: a run keeps one
    for all its seeds and methods, so an identical step is traced and compiled once. Keys are
    the settings themselves (models and configs are frozen, hashable dataclasses)."""

    def __init__(self):
        self._steps: Dict[tuple, TrainStep] = {}
        self._evaluators: Dict[Model, Callable] = {}
        self._precise: Dict[Model, PreciseBN] = {}

    def train_step(self, method: str, model: Model, teacher: Optional[Model], *, method_config: MethodConfig,
                   optim: OptimConfig, steps_per_epoch: int, epochs: int) -> TrainStep:
        key = (method, model, teacher, method_config, optim, steps_per_epoch, epochs)
        if key not in self._steps:
            self._steps[key] = build_step(method, model, teacher, method_config=method_config, optim=optim,
                                          steps_per_epoch=steps_per_epoch, epochs=epochs)
        return self._steps[key]

    def evaluator(self, model: Model) -> Callable:
        if model not in self._evaluators:
            self._evaluators[model] = make_evaluator(model)
        return self._evaluators[model]

    def precise_bn(self, model: Model) -> PreciseBN:
        if model not in self._precise:
            self._precise[model] = PreciseBN(model)
        return self._precise[model]


def placement(mesh: Optional[Mesh], batch_size: int):
    """(rows, put) for batches of ``batch_size``: the global rows this process gathers (None: all)
    and the function that moves a (local) numpy batch to the devices (sharded over ``mesh``)."""
    if mesh is None:
        return None, jax.device_put
    rows = local_rows(mesh, batch_size)
    return rows, (lambda batch: shard_batch(batch, mesh, batch_size, rows))


def evaluate(model: Model, variables, split: Split, batch_size: int = 256, evaluator=None,
             mesh: Optional[Mesh] = None) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on ``split``. Returns {"acc", "ce", "n"}.
    With a ``mesh`` each batch is split over its devices (each process gathers its rows); the
    padded rows of the last batch are masked out, so every sample counts once."""
    evaluator = evaluator or make_evaluator(model)
    rows, put = placement(mesh, batch_size)
    correct, ce = 0, 0.0
    for x, y, mask in eval_batches(split, batch_size, rows):
        b = put({"x": x, "y": y, "mask": mask})
        c, l = evaluator(variables, b["x"], b["y"], b["mask"])
        correct, ce = correct + c, ce + l
    n = len(split)
    return {"acc": float(correct) / n, "ce": float(ce) / n, "n": n}


def precise_bn_batches(train, epoch: int, seed: int, batch_size: int, n: int, mesh: Optional[Mesh]) -> Iterator:
    """The ``n`` training inputs (device arrays) precise BatchNorm statistics are taken over after
    epoch ``epoch``: a seeded order of an in-memory split (``seeds.PRECISE_BN``), or the epoch's own
    batches of a ``TrainStream``; never more than one epoch's."""
    rows, put = placement(mesh, batch_size)
    if isinstance(train, Split):
        batches = train_batches(train, None, batch_size, np.random.SeedSequence([seed, epoch, seeds.PRECISE_BN]),
                                "none", rows=rows)
    else:
        batches = train.epoch_batches(epoch, batch_size, with_teacher=False, **({} if rows is None else {"rows": rows}))
    for batch in itertools.islice(batches, n):
        yield put({"x_s": batch["x_s"]})["x_s"]


# ---------------------------------------------------------------------------------------- the loop
def check_last_batch(train, n: int, batch_size: int, mesh: Optional[Mesh]) -> None:
    """Refuse ``train.last_batch="keep"`` where the partial batch (``n % batch_size`` rows) cannot
    run: a TrainStream without ``keep_last``, a remainder the mesh's devices do not divide, or
    several processes (each gathers the rows of a full batch)."""
    if not isinstance(train, Split) and "keep_last" not in inspect.signature(train.epoch_batches).parameters:
        raise ValueError(f"train.last_batch=keep: {type(train).__name__}.epoch_batches has no keep_last "
                         f"argument to yield the partial batch; use train.last_batch=drop")
    rest = n % batch_size
    if rest and mesh is not None:
        if jax.process_count() > 1:
            raise ValueError(f"train.last_batch=keep: the last batch has {rest} of {batch_size} rows, which "
                             f"{jax.process_count()} processes cannot split; use train.last_batch=drop")
        check_batch_divisible(rest, mesh, f"last partial batch (train.last_batch=keep, {n} samples)")


def fit(model: Model, variables, train, val: Split, *, method: str = "ce",
        method_config: MethodConfig = MethodConfig(), optim: OptimConfig = OptimConfig(),
        train_config: TrainConfig = TrainConfig(), epochs: Optional[int] = None,
        teacher: Optional[Model] = None, teacher_variables=None, teacher_train: Optional[Split] = None,
        pairing: str = "unpaired", seed: int = 0, desc: str = "", progress: bool = True,
        cache: Optional[StepCache] = None, checkpoint: Optional[RunCheckpointer] = None,
        on_epoch: Optional[Callable[[dict, list], None]] = None, mesh: Optional[Mesh] = None,
        stop_acc: Optional[float] = None) -> TrainResult:
    """Train ``model`` from ``variables`` with a registered method; select on ``val``.

    Args:
      model, variables: the network to train and its initial variables.
      train, val: the model's own modality; ``y`` int labels in [0, K). ``train`` may also be a
        ``TrainStream`` (e.g. ``ucmkd_jax.data.pipeline``): an object with ``num_samples`` (student
        samples per epoch) and ``epoch_batches(epoch, batch_size, with_teacher) -> iterator`` of
        numpy dicts {"x_s", "y_s"[, "x_t", "y_t"]} of exactly ``batch_size`` rows, deterministic
        for its seed and ``epoch`` (that is what makes resuming exact); it then supplies the
        teacher batches too (``teacher_train`` must be None). On several processes it is also
        called with ``rows=`` (``parallel.local_rows``) and yields only those rows of each batch.
      method: a name in ``ucmkd_jax.methods.METHODS``.
      epochs: default ``train_config.epochs``.
      teacher, teacher_variables, teacher_train: the frozen teacher and its modality's train
        split (the pool its batches are drawn from), for methods that use it. ``pairing`` says
        how teacher batches are drawn ("unpaired" or "paired").
      seed: seeds the batch order (epoch e's order is a function of (seed, e) alone) and the
        method's own modules; the variables carry the init seed.
      cache: a ``StepCache`` kept across calls (e.g. over seeds), so that the step and evaluator
        of an identical setting are compiled once.
      checkpoint: saves the state after every epoch and, if it holds a checkpoint of this run,
        resumes from it (the result equals an uninterrupted run's).
      on_epoch: called as ``on_epoch(record, history)`` after each epoch (its record and all
        records so far, restored ones included).
      mesh: a 1-d ("data",) device mesh (``ucmkd_jax.parallel.data_mesh``) for data-parallel
        training with single-device semantics; None: one device.
      stop_acc: stop after the first epoch whose best selection accuracy is >= this (the
        release's teacher pre-training stops at 0.70); None: train all ``epochs``.
    Raises:
      ValueError on bad input (before anything is compiled); NonFiniteLossError naming the
      method, epoch and step when a loss or gradient stops being finite; CheckpointError for a
      corrupt or foreign checkpoint.
    """
    spec = get_method(method)
    epochs = train_config.epochs if epochs is None else epochs
    pairing = check_fit_inputs(spec, model, train, val, teacher, teacher_variables, teacher_train, pairing)
    streaming = not isinstance(train, Split)
    if mesh is not None:
        check_batch_divisible(train_config.batch_size, mesh)
        check_batch_divisible(train_config.eval_batch_size, mesh, "evaluation batch size")
    keep_last = train_config.last_batch == "keep"
    n_train = train.num_samples if streaming else len(train)
    steps = steps_per_epoch(n_train, train_config.batch_size, keep_last)
    if keep_last:
        check_last_batch(train, n_train, train_config.batch_size, mesh)
    cache = StepCache() if cache is None else cache
    train_step = cache.train_step(method, model, teacher, method_config=method_config, optim=optim,
                                  steps_per_epoch=steps, epochs=epochs)
    evaluator = cache.evaluator(model)
    frozen_step = None  # the release's baselines: eval-mode BatchNorm after the first evaluation
    if train_config.baseline_bn == "frozen_after_first_eval" and method in FROZEN_BN_BASELINES:
        frozen_step = cache.train_step(method, dataclasses.replace(model, train_bn="frozen"), teacher,
                                       method_config=method_config, optim=optim, steps_per_epoch=steps, epochs=epochs)
    state = train_step.init_state(variables, teacher_variables, seed)
    t_vars = teacher_variables if spec.uses_teacher else {}

    best = (-1.0, 0, None)  # (val acc, epoch, variables)
    history, first_epoch, elapsed, precise_s = [], 0, 0.0, 0.0
    if checkpoint is not None:
        restored = checkpoint.restore(state)
        if restored is not None:
            state, meta = restored
            history, first_epoch, elapsed = meta["history"], meta["epoch"], meta.get("wall_s", 0.0)
            tqdm.write(f"{desc or method}: resuming after epoch {first_epoch}/{epochs} from {checkpoint.directory}")
            best = (meta["best_val_acc"], meta["best_epoch"],
                    checkpoint.restore_best(meta, {"params": state.params, "batch_stats": state.batch_stats}))
    state = replicate(state, mesh) if mesh is not None else jax.device_put(state)
    t_vars = replicate(t_vars, mesh) if mesh is not None else jax.device_put(t_vars)
    rows, put = placement(mesh, train_config.batch_size)  # a multi-host process gathers its rows only
    local = {} if rows is None else {"rows": rows}
    start = time.time()
    bar = tqdm(total=epochs * steps, initial=first_epoch * steps, desc=desc or method, unit="step",
               disable=not progress, dynamic_ncols=True, leave=True)
    if stop_acc is not None and best[2] is not None and best[0] >= stop_acc:
        first_epoch = epochs  # resumed after the epoch that met the target: nothing left to run
    for epoch in range(first_epoch, epochs):
        if streaming:
            batches = train.epoch_batches(epoch, train_config.batch_size, with_teacher=pairing != "none", **local,
                                          **({"keep_last": True} if keep_last else {}))
        else:
            batches = train_batches(train, teacher_train, train_config.batch_size,
                                    np.random.SeedSequence([seed, epoch]), pairing, keep_last=keep_last, **local)
        sums = None
        step_fn = frozen_step.step if (frozen_step is not None and epoch >= 1) else train_step.step
        for i, batch in enumerate(prefetch_to_device(batches, put=put)):
            state, metrics = step_fn(state, t_vars, batch)
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
            if (i + 1) % train_config.log_every == 0 or i + 1 == steps:
                # one small host sync per log_every steps, for the bar
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{float(metrics['loss']):.4f}")
            bar.update(1)
        bad = int(state.nonfinite_step)
        if bad >= 0:
            bar.close()
            raise NonFiniteLossError(
                f"method {method!r} ({desc or model.name}): the loss or gradient became NaN/inf at "
                f"epoch {bad // steps + 1}/{epochs}, step {bad % steps + 1}/{steps} (global step {bad}); "
                f"that update was skipped and training stopped. Lower the learning rate or check the inputs.")
        current = {"params": state.params, "batch_stats": state.batch_stats}
        t_bn = time.time()
        if train_config.precise_bn:  # population statistics for evaluation; the state keeps its own
            current = cache.precise_bn(model)(current, precise_bn_batches(
                train, epoch, seed, train_config.batch_size, train_config.precise_bn, mesh))
        t_bn = time.time() - t_bn
        val_metrics = evaluate(model, current, val, train_config.eval_batch_size, evaluator, mesh)
        if not np.isfinite(val_metrics["ce"]):  # finite weights, yet the inference-mode forward overflowed
            bar.close()
            raise NonFiniteLossError(
                f"method {method!r} ({desc or model.name}): the validation loss became NaN/inf after epoch "
                f"{epoch + 1}/{epochs} (the training losses were finite: inference-mode BatchNorm statistics or "
                f"an overflow in {model.name}'s forward). Lower the learning rate or check the inputs.")
        record = {"epoch": epoch + 1, "val_acc": val_metrics["acc"], "val_ce": val_metrics["ce"]}
        precise_s += t_bn
        record.update({f"train_{k}": float(v) / steps for k, v in jax.device_get(sums).items()})
        history.append(record)
        improved = (val_metrics["acc"] > best[0] or
                    (train_config.selection_ties == "later" and val_metrics["acc"] >= best[0]))
        if improved:
            best = (val_metrics["acc"], epoch + 1, jax.device_get(current))
        if checkpoint is not None:
            checkpoint.save(epoch + 1, state, {"history": history, "best_val_acc": best[0], "best_epoch": best[1],
                                               "wall_s": elapsed + time.time() - start},
                            best_variables=best[2] if improved else None)
        if on_epoch is not None:
            on_epoch(record, history)
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{record['train_loss']:.4f}",
                        val_acc=f"{val_metrics['acc']:.3f}")
        if stop_acc is not None and best[0] >= stop_acc:
            break
    bar.close()
    if best[2] is None:  # zero epochs
        best = (best[0], 0, jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
    return TrainResult(variables=best[2], best_epoch=best[1], best_val_acc=best[0], history=history,
                       wall_s=elapsed + time.time() - start, precise_bn_s=precise_s)
