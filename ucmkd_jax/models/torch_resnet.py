"""PyTorch ResNet weights (torchvision's ``state_dict`` layout) as the Flax variables of a ResNet ``Model``.

    import torch, torchvision
    state = torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict()
    variables = torch_resnet_variables(state, head=None)            # the trunk only
    variables = load_torch_resnet(model, jax.random.PRNGKey(0), "resnet18-f37072fd.pth", head=None)

The layout read (torchvision's ``ResNet``, and any module that names its parts the same way):

    conv1.weight, bn1.{weight, bias, running_mean, running_var[, num_batches_tracked]}
    layer{s}.{b}.conv{1,2[,3]}.weight, layer{s}.{b}.bn{1,2[,3]}.*     s = 1..4, b = 0..
    layer{s}.{b}.downsample.0.weight, layer{s}.{b}.downsample.1.*     (a 1x1 projection shortcut)
    fc.weight, fc.bias                                                 (the classifier, optional)

and the conversion to ``ucmkd_jax.models.resnet.ResNetEncoder`` (and the ``Model``'s linear head):

    Conv2d.weight (O, I, kh, kw)  ->  kernel (kh, kw, I, O)                 (OIHW -> HWIO)
    BatchNorm2d.weight, .bias      ->  scale, bias                           (params)
    BatchNorm2d.running_mean, _var ->  mean, var                             (batch_stats)
    Linear.weight (K, D), .bias    ->  head kernel (D, K), bias
    conv1 / bn1                    ->  stem_conv / stem_bn
    layer{s}.{b}                   ->  stage{s}_block{b + 1}
    downsample.0 / downsample.1    ->  proj_conv / proj_bn

``num_batches_tracked`` is dropped (Flax's BatchNorm has a fixed momentum; torch uses the count
only with ``momentum=None``). Both libraries normalise with eps 1e-5 and pad the 7x7 stem, the
3x3 convolutions and the 3x3 max-pool the same way, so the converted model's inference-mode
forward is the torch model's ``eval()`` forward (tested to 1e-5 in float32). The block kind is read
from the keys (``conv3`` present: bottleneck), the width from ``conv1``, the blocks per stage from
the ``layer`` indices; ``load_torch_resnet`` checks them against the model's.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from ucmkd_jax.models.model import Model

__all__ = ["torch_resnet_variables", "torch_resnet_layout", "load_torch_resnet"]

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_BLOCK_MODULES = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "conv3": "conv3", "bn3": "bn3",
                  "downsample.0": "proj_conv", "downsample.1": "proj_bn"}
_CONVS = ("stem_conv", "conv1", "conv2", "conv3", "proj_conv")
_BN_PARTS = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
             "running_var": ("batch_stats", "var")}


def _numpy(value, dtype) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            value = value.float()
        value = value.numpy()
    return np.asarray(value, dtype)


def _split(key: str) -> Tuple[str, str]:
    module, _, part = key.rpartition(".")
    return module, part


def torch_resnet_layout(state_dict: Mapping[str, object], prefix: str = "") -> dict:
    """What a torchvision-layout ResNet state dict holds: {"stage_sizes": (blocks per stage),
    "block": "basic" | "bottleneck", "width": conv1's output channels, "in_channels": conv1's
    input channels, "num_classes": fc's outputs or None}. Raises ValueError for another layout."""
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if "conv1.weight" not in keys:
        raise ValueError(f"not a torchvision-layout ResNet state dict: no {prefix}conv1.weight among its keys "
                         f"({', '.join(sorted(state_dict)[:5])}, ...)")
    blocks: Dict[int, set] = {}
    bottleneck = False
    for k in keys:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            bottleneck |= m.group(3).startswith("conv3.")
    stages = sorted(blocks)
    if not stages or stages != list(range(1, len(stages) + 1)) or any(
            sorted(blocks[s]) != list(range(len(blocks[s]))) for s in stages):
        found = {s: sorted(b) for s, b in blocks.items()}
        raise ValueError(f"ResNet state dict with gaps in its layers/blocks: {found}")
    w = _numpy(state_dict[prefix + "conv1.weight"], np.float32)
    fc = state_dict.get(prefix + "fc.weight")
    return {"stage_sizes": tuple(len(blocks[s]) for s in stages), "block": "bottleneck" if bottleneck else "basic",
            "width": int(w.shape[0]), "in_channels": int(w.shape[1]),
            "num_classes": None if fc is None else int(np.shape(_numpy(fc, np.float32))[0])}


def torch_resnet_variables(state_dict: Mapping[str, object], *, prefix: str = "", head: Optional[str] = "fc",
                           dtype=np.float32) -> dict:
    """The Flax variables ``{"params": {"encoder": ..., "head": ...}, "batch_stats": ...}`` of a
    ResNet ``Model`` from a torchvision-layout state dict (module docstring).

    Args:
      state_dict: name -> torch tensor or array (``model.state_dict()``, or ``torch.load`` of a
        ``.pth``; ``ucmkd_jax.models.pretrained.load_state_dict`` reads a file into one).
      prefix: the keys' common prefix (e.g. "module." or "backbone."); other keys are ignored.
      head: the classifier's key (under ``prefix``): "fc" (torchvision), another name, or None to
        leave "head" out of the result (an ImageNet classifier does not fit a K-class model).
      dtype: of the arrays returned (numpy float32 by default; float64 for float64 checks).
    Raises ValueError for a key of the trunk this ResNet has no place for, or a missing part.
    """
    torch_resnet_layout(state_dict, prefix)  # refuses another layout
    params: dict = {}
    stats: dict = {}

    def put(tree: dict, path: Tuple[str, ...], value):
        for p in path[:-1]:
            tree = tree.setdefault(p, {})
        tree[path[-1]] = value

    for full_key, value in state_dict.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix):]
        if head is not None and key.startswith(head + "."):
            continue
        module, part = _split(key)
        if part == "num_batches_tracked":
            continue
        if module == "conv1":
            flax_module = ("stem_conv",)
        elif module == "bn1":
            flax_module = ("stem_bn",)
        else:
            m = _BLOCK.match(module + "." + part)
            inner = m and _BLOCK_MODULES.get(m.group(3).rpartition(".")[0])
            if not inner:
                if head is None and module == "fc":
                    continue  # torchvision's classifier, left out
                raise ValueError(f"ResNet state dict: {full_key!r} has no place in ucmkd_jax's ResNetEncoder")
            flax_module = (f"stage{int(m.group(1))}_block{int(m.group(2)) + 1}", inner)
        array = _numpy(value, dtype)
        if flax_module[-1] in _CONVS:
            if part != "weight" or array.ndim != 4:
                raise ValueError(f"ResNet state dict: {full_key!r} is not a bias-free convolution weight")
            put(params, flax_module + ("kernel",), np.ascontiguousarray(array.transpose(2, 3, 1, 0)))
        else:
            if part not in _BN_PARTS:
                raise ValueError(f"ResNet state dict: unknown BatchNorm entry {full_key!r}")
            collection, name = _BN_PARTS[part]
            put(params if collection == "params" else stats, flax_module + (name,), array)
    variables = {"params": {"encoder": params}, "batch_stats": stats}
    if head is not None:
        w, b = state_dict.get(f"{prefix}{head}.weight"), state_dict.get(f"{prefix}{head}.bias")
        if w is None or b is None:
            raise ValueError(f"ResNet state dict has no classifier {prefix}{head}.weight/.bias (pass head=None to "
                             f"convert the trunk alone)")
        variables["params"]["head"] = {"kernel": np.ascontiguousarray(_numpy(w, dtype).T), "bias": _numpy(b, dtype)}
    return variables


def load_torch_resnet(model: Model, rng: jax.Array, state: Union[str, Mapping[str, object]], *, prefix: str = "",
                      head: Optional[str] = "fc", in_channels: str = "strict") -> dict:
    """The variables of ``model`` with the encoder and its BatchNorm statistics (and, with ``head``,
    the linear head) from the torch ResNet ``state`` (a state dict or a checkpoint file), checked
    against the model's shapes first (``jax.eval_shape``) and cast to its parameter dtype; with
    ``head=None`` the head is ``model.init(rng)``'s.

    in_channels: "strict" refuses a stem of another input width; "sum" turns a 3-channel stem into a
      1-channel one by summing its filters over the input channels (timm's ``adapt_input_conv``, for
      spectrograms). Raises ValueError naming the model when the weights do not fit it."""
    if isinstance(state, str):
        from ucmkd_jax.models.pretrained import load_state_dict
        state = load_state_dict(state)
    loaded = torch_resnet_variables(state, prefix=prefix, head=head)
    kernel = loaded["params"]["encoder"].get("stem_conv", {}).get("kernel")
    want_c = int(model.input_shape[-1])
    if kernel is not None and kernel.shape[2] != want_c:
        if in_channels == "sum" and kernel.shape[2] == 3 and want_c == 1:
            loaded["params"]["encoder"]["stem_conv"]["kernel"] = kernel.sum(axis=2, keepdims=True)
        else:
            raise ValueError(f"{model.name}: the ResNet's stem takes {kernel.shape[2]} input channels, the model "
                             f"{want_c} (in_channels='sum' adapts 3 -> 1)")
    shapes = jax.eval_shape(model.init, rng)  # nothing compiled before the check
    target = {"params": {"encoder": shapes["params"]["encoder"]}, "batch_stats": shapes["batch_stats"]}
    if head is not None:
        target["params"]["head"] = shapes["params"]["head"]
    want = jax.tree.map(lambda a: tuple(a.shape), target)
    got = jax.tree.map(lambda a: tuple(a.shape), loaded)
    if want != got:
        flat_w = dict(jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, tuple))[0])
        flat_g = dict(jax.tree_util.tree_flatten_with_path(got, is_leaf=lambda x: isinstance(x, tuple))[0])
        diff = sorted({jax.tree_util.keystr(k) for k in set(flat_w) ^ set(flat_g)}
                      | {jax.tree_util.keystr(k) for k in set(flat_w) & set(flat_g) if flat_w[k] != flat_g[k]})
        raise ValueError(f"{model.name}: the torch ResNet does not fit the model (layout "
                         f"{torch_resnet_layout(state, prefix)}); differing entries: {', '.join(diff[:6])}"
                         + (" ..." if len(diff) > 6 else ""))
    loaded = jax.tree.map(lambda a, ref: jnp.asarray(a, ref.dtype), loaded, target)
    head_params = loaded["params"]["head"] if head is not None else model.init(rng)["params"]["head"]
    return {"params": {"encoder": loaded["params"]["encoder"], "head": head_params},
            "batch_stats": loaded["batch_stats"]}
