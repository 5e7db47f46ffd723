r"""Precise BatchNorm: running statistics recomputed as population statistics before evaluation.

Evaluation normalises with the BatchNorm running averages, and methods update those a different
number of times per step (``MethodSpec.bn_updates``: one for ``ce``, two for UCMKD's bilevel
step, ...). On a short run the averages, not the method, can then decide a comparison. So, as
pycls and detectron2 do ("PreciseBN"), before each evaluation the running mean and variance of
every BatchNorm layer are replaced by the statistics of its inputs over ``N`` training batches
of the model's own modality, with the parameters frozen:

    for each BatchNorm layer l with input x_l (all positions of all samples of batch b):
        mu_b = mean(x_l),  v_b = mean((x_l - mu_b)^2)                    (biased, as Flax)
    running_mean_l = (1/N) sum_b mu_b
    running_var_l  = (1/N) sum_b v_b + [(1/N) sum_b mu_b^2 - running_mean_l^2]

With batches of equal size this is exactly the mean and the (biased) variance of the layer's
inputs over all N batches together (within-batch plus between-batch variance). The inputs are
those of a train-mode forward (each layer normalised by its own batch's statistics), as during
training. One jitted function per model accumulates a batch's moments (``PreciseBN``); the
train state's own running averages are left untouched, so training and resuming are unchanged.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ucmkd_jax.models.model import Model
from ucmkd_jax.precision import at_least_f32

__all__ = ["PreciseBN", "batchnorm_moments"]

Path = Tuple[str, ...]


def batchnorm_moments(model: Model, encoder_params, batch_stats, x) -> Dict[Path, Tuple[jax.Array, jax.Array]]:
    """{path of each BatchNorm layer in the encoder: (mean (C,), biased variance (C,))} of its
    input over the batch ``x`` (N, *input_shape) in a train-mode forward. Traceable."""
    moments = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
            v = at_least_f32(args[0] if args else kwargs["x"])
            feature = module.axis % v.ndim if isinstance(module.axis, int) else None
            if feature is None:
                raise NotImplementedError(f"BatchNorm over several feature axes ({module.axis}) at {module.path}")
            axes = tuple(i for i in range(v.ndim) if i != feature)
            mean = v.mean(axes)
            var = jnp.square(v - jnp.expand_dims(mean, axes)).mean(axes)
            moments[tuple(module.path)] = (mean, var)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.encode(encoder_params, batch_stats, x, train=True)
    return moments


def _get(tree: dict, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: Path, value: dict) -> dict:
    """A copy of the nested dict ``tree`` with ``tree[path[0]]...[path[-1]]`` updated by ``value``."""
    if not path:
        return {**tree, **value}
    return {**tree, path[0]: _set(tree.get(path[0], {}), path[1:], value)}


class PreciseBN:
    """The precise statistics of one model (see the module docstring).

        precise = PreciseBN(model)
        variables = precise(variables, batches)        # batches: iterable of (B, *input_shape)

    ``__call__`` returns ``variables`` with every encoder BatchNorm's ``mean`` / ``var``
    replaced; other collections (a method's own modules under "extra") are kept. The batches
    must have equal sizes (the loop's are). One compiled accumulation step per input shape."""

    def __init__(self, model: Model):
        self.model = model

        def accumulate(params, batch_stats, sums, x):
            m = batchnorm_moments(model, params["encoder"], batch_stats, x)
            step = {"/".join(p): (mean, var, jnp.square(mean)) for p, (mean, var) in m.items()}
            return jax.tree.map(jnp.add, sums, step)

        self._accumulate = jax.jit(accumulate, donate_argnums=(2,))
        self._shapes = {}

    def __call__(self, variables, batches: Iterable) -> dict:
        params, stats = variables["params"], variables["batch_stats"]
        sums, n = None, 0
        for x in batches:
            if sums is None:
                sums = self._zeros(params, stats, x)
            sums = self._accumulate(params, stats, sums, x)
            n += 1
        if n == 0:
            raise ValueError(f"precise BatchNorm statistics of {self.model.name} need at least one training batch")
        new_stats = stats
        for key, (s_mean, s_var, s_sq) in jax.device_get(sums).items():
            path = tuple(key.split("/"))
            mean = np.asarray(s_mean, np.float64) / n
            var = np.asarray(s_var, np.float64) / n + np.maximum(np.asarray(s_sq, np.float64) / n - np.square(mean), 0)
            dtype = _get(stats, path)["mean"].dtype  # the layer's own (float32; float64 in gradient checks)
            new_stats = _set(new_stats, path, {"mean": jnp.asarray(mean, dtype), "var": jnp.asarray(var, dtype)})
        return {"params": params, "batch_stats": new_stats}

    def _zeros(self, params, stats, x) -> dict:
        # the layers' moment shapes depend on the input's shape only: trace them once per shape
        key = (tuple(x.shape), str(x.dtype), str(jax.tree.leaves(params)[0].dtype))
        if key not in self._shapes:
            self._shapes[key] = jax.eval_shape(
                lambda p, s, xx: batchnorm_moments(self.model, p["encoder"], s, xx), params, stats, x)
        return {"/".join(p): tuple(jnp.zeros(a.shape, a.dtype) for a in (m, v, m))
                for p, (m, v) in self._shapes[key].items()}
