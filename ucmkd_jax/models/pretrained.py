"""Pretrained ViT weights from checkpoint files the user downloads (nothing is fetched here).

    variables = initial_variables(model, jax.random.PRNGKey(0), "vit_b_16-c867db91.pth")

Two layouts are read, told apart by their keys:

* torchvision (``torchvision.models.vit_b_16(weights="IMAGENET1K_V1").state_dict()``, the
  ``.pth`` torchvision downloads): ``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
  ``encoder.layers.encoder_layer_{i}.{ln_1, self_attention.in_proj_*, self_attention.out_proj,
  ln_2, mlp.0, mlp.3}``, ``encoder.ln``;
* timm (``timm.create_model("vit_small_patch16_224", pretrained=True).state_dict()``, or the
  hub's ``model.safetensors``): ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``.

Both hold the same pre-LN ViT (``ucmkd_jax.models.vit``); the conversion to its Flax tree is

    patch_embed.kernel = W_conv (d, C, 16, 16) -> (16, 16, C, d) -> (256 C, d)  (``vit.patchify``'s order)
    Dense.kernel = W_linear^T;  LayerNorm.scale, .bias = weight, bias;  q | k | v rows as they are

and two adaptations to the model at hand, as timm makes them when it loads a checkpoint into a
model of another shape: a 3-channel patch embedding for a 1-channel model is summed over its
input channels (timm's ``adapt_input_conv``), and the position embeddings are resampled from the
checkpoint's grid (14 x 14 for 224 px) to the model's (``vit.resample_pos_embed``: bicubic,
antialiased, CLS kept). The classifier (``heads.head`` / ``head``) is dropped: the model keeps its
own randomly initialised head (K classes), and a projection after the trunk
(``ProjectedEncoder``) keeps its init too. Any other key, a depth or width that differs from the
model's, or a layout with parts this ViT lacks (layer scale, a pooled ``fc_norm``) is refused.

``.pth`` / ``.pt`` / ``.bin`` files need torch (``torch.load(weights_only=True)``);
``.safetensors`` files need the ``safetensors`` package only.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ucmkd_jax.models.model import Model
from ucmkd_jax.models.projection import ProjectedEncoder
from ucmkd_jax.models.vit import ViTEncoder, resample_pos_embed

__all__ = ["load_state_dict", "checkpoint_format", "vit_params", "trunk_from_file", "initial_variables",
           "encoder_trunk"]

_DROPPED = re.compile(r"^(heads?\.|fc_norm\.(weight|bias)$)")  # classifiers: the model keeps its own head


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """name -> float32 array of a checkpoint file: ``.safetensors`` or a torch pickle (a state
    dict, or one under "model" / "state_dict" / "module"; "module." prefixes dropped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path!r}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(f"reading {path} needs safetensors: pip install -e '.[vit]'") from e
        state = dict(load_file(path))
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path} (a torch checkpoint) needs torch: pip install -e '.[vit]'") from e
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict", "module"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        state = {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}
    return {(k[len("module."):] if k.startswith("module.") else k): np.asarray(v, np.float32) for k, v in state.items()}


def checkpoint_format(state: Dict[str, np.ndarray]) -> str:
    """"torchvision" or "timm", from the keys; ValueError for anything else."""
    if "conv_proj.weight" in state and "encoder.pos_embedding" in state:
        return "torchvision"
    if "patch_embed.proj.weight" in state and "pos_embed" in state:
        return "timm"
    raise ValueError("not a torchvision or timm ViT checkpoint (expected conv_proj.weight or patch_embed.proj.weight "
                     f"among its keys; it has {', '.join(sorted(state)[:6])}, ...)")


_TV_BLOCK = {"ln_1.weight": "ln1.weight", "ln_1.bias": "ln1.bias",
             "self_attention.in_proj_weight": "qkv.weight", "self_attention.in_proj_bias": "qkv.bias",
             "self_attention.out_proj.weight": "proj.weight", "self_attention.out_proj.bias": "proj.bias",
             "ln_2.weight": "ln2.weight", "ln_2.bias": "ln2.bias", "mlp.0.weight": "fc1.weight",
             "mlp.0.bias": "fc1.bias", "mlp.3.weight": "fc2.weight", "mlp.3.bias": "fc2.bias"}
_TIMM_BLOCK = {"norm1.weight": "ln1.weight", "norm1.bias": "ln1.bias", "attn.qkv.weight": "qkv.weight",
               "attn.qkv.bias": "qkv.bias", "attn.proj.weight": "proj.weight", "attn.proj.bias": "proj.bias",
               "norm2.weight": "ln2.weight", "norm2.bias": "ln2.bias", "mlp.fc1.weight": "fc1.weight",
               "mlp.fc1.bias": "fc1.bias", "mlp.fc2.weight": "fc2.weight", "mlp.fc2.bias": "fc2.bias"}
_LAYOUTS = {  # format -> (top-level key -> canonical name, block prefix pattern, block key map)
    "torchvision": ({"conv_proj.weight": "patch.weight", "conv_proj.bias": "patch.bias", "class_token": "cls",
                     "encoder.pos_embedding": "pos", "encoder.ln.weight": "ln.weight", "encoder.ln.bias": "ln.bias"},
                    re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$"), _TV_BLOCK),
    "timm": ({"patch_embed.proj.weight": "patch.weight", "patch_embed.proj.bias": "patch.bias", "cls_token": "cls",
              "pos_embed": "pos", "norm.weight": "ln.weight", "norm.bias": "ln.bias"},
             re.compile(r"^blocks\.(\d+)\.(.+)$"), _TIMM_BLOCK),
}


def _canonical(state: Dict[str, np.ndarray]):
    """(top-level arrays by canonical name, list of per-block dicts) of either layout."""
    fmt = checkpoint_format(state)
    top_map, block_re, block_map = _LAYOUTS[fmt]
    top, blocks, unknown = {}, {}, []
    for key, value in state.items():
        if key in top_map:
            top[top_map[key]] = value
        elif (m := block_re.match(key)) and m.group(2) in block_map:
            blocks.setdefault(int(m.group(1)), {})[block_map[m.group(2)]] = value
        elif not _DROPPED.match(key):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{fmt} checkpoint: parts this ViT does not have: {', '.join(sorted(unknown)[:5])}"
                         + (" ..." if len(unknown) > 5 else ""))
    missing = sorted(set(top_map.values()) - set(top))
    if missing or sorted(blocks) != list(range(len(blocks))) or any(len(b) != 12 for b in blocks.values()):
        raise ValueError(f"{fmt} checkpoint is incomplete (missing {missing or 'block parameters'})")
    return fmt, top, [blocks[i] for i in range(len(blocks))]


def _dense(w, b):
    return {"kernel": np.ascontiguousarray(w.T), "bias": b}


def _ln(w, b):
    return {"scale": w, "bias": b}


def vit_params(state: Dict[str, np.ndarray], encoder: ViTEncoder, in_chans: int,
               grid: Optional[tuple] = None) -> dict:
    """The Flax params of ``encoder`` (a ``ViTEncoder`` of ``in_chans``-channel inputs) from a
    torchvision or timm state dict (see the module docstring).

    grid: the checkpoint's position-embedding grid (default: square, e.g. 14 x 14 for 224 px).
    Raises ValueError for a checkpoint of another depth, width, patch size or channel count."""
    fmt, top, blocks = _canonical(state)
    w = top["patch.weight"]  # (d, C, p, p)
    d, c, ph, pw = w.shape
    where = f"{fmt} checkpoint"
    if (d, len(blocks)) != (encoder.dim, encoder.depth):
        raise ValueError(f"the {where} is a ViT of width {d} and {len(blocks)} blocks; the model's {encoder.arch} has "
                         f"width {encoder.dim} and {encoder.depth} blocks (choose the matching backbone and depth)")
    if (ph, pw) != (encoder.patch, encoder.patch):
        raise ValueError(f"the {where} has {ph} x {pw} patches, the model {encoder.patch} x {encoder.patch}")
    if c != in_chans:
        if c == 3 and in_chans == 1:  # timm's adapt_input_conv: the RGB filters summed
            w = w.sum(axis=1, keepdims=True)
        else:
            raise ValueError(f"the {where} takes {c} input channels, the model {in_chans} (only 3 -> 1 is adapted)")
    pos = top["pos"]
    n_grid = pos.shape[1] - 1
    if grid is None:
        side = int(round(n_grid ** 0.5))
        if side * side != n_grid:
            raise ValueError(f"the {where}'s {n_grid} position embeddings are not a square grid: pass grid=(h, w)")
        grid = (side, side)
    new_grid = tuple(encoder.pos_grid)
    pos = np.asarray(resample_pos_embed(jnp.asarray(pos), new_grid, tuple(grid)), np.float32)
    params = {"patch_embed": {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, d)),
                              "bias": top["patch.bias"]},
              "cls_token": top["cls"].reshape(1, 1, d), "pos_embed": pos,
              "ln": _ln(top["ln.weight"], top["ln.bias"])}
    for i, b in enumerate(blocks):
        params[f"block{i + 1}"] = {
            "ln1": _ln(b["ln1.weight"], b["ln1.bias"]), "ln2": _ln(b["ln2.weight"], b["ln2.bias"]),
            "attn": {"qkv": _dense(b["qkv.weight"], b["qkv.bias"]), "proj": _dense(b["proj.weight"], b["proj.bias"])},
            "fc1": _dense(b["fc1.weight"], b["fc1.bias"]), "fc2": _dense(b["fc2.weight"], b["fc2.bias"])}
    return params


def encoder_trunk(model: Model):
    """(the encoder's trunk, the path of its params under params["encoder"]): a projected
    encoder's trunk sits under "trunk"."""
    enc = model.encoder
    return (enc.trunk, ("trunk",)) if isinstance(enc, ProjectedEncoder) else (enc, ())


@functools.lru_cache(maxsize=2)
def _converted(path: str, stamp: tuple, encoder: ViTEncoder, in_chans: int) -> dict:
    del stamp  # part of the key: a rewritten file is read again
    return vit_params(load_state_dict(path), encoder, in_chans)


def trunk_from_file(model: Model, init_path: str) -> dict:
    """The Flax params of ``model``'s ViT trunk converted from the checkpoint ``init_path``,
    checked against the model's own parameter shapes (``jax.eval_shape``: nothing is compiled).
    The conversion of a file is cached (the two most recent), so the seeds and methods of a run,
    and the check before it, read it once. Raises ValueError naming the model when the file does
    not fit it."""
    trunk, path = encoder_trunk(model)
    if not isinstance(trunk, ViTEncoder):
        raise ValueError(f"{model.name}: {init_path} would initialise a ViT, but the {model.name}'s encoder is a "
                         f"{type(trunk).__name__} (choose a vit_* backbone, or drop the init file)")
    path_abs = os.path.abspath(init_path)
    if not os.path.isfile(path_abs):
        raise ValueError(f"{model.name}: no checkpoint file {init_path!r}")
    st = os.stat(path_abs)
    try:
        loaded = _converted(path_abs, (st.st_mtime_ns, st.st_size), trunk, int(model.input_shape[-1]))
    except ValueError as e:
        raise ValueError(f"{model.name}: {init_path}: {e}") from None
    target = jax.eval_shape(model.init, jax.random.PRNGKey(0))["params"]["encoder"]
    for key in path:
        target = target[key]
    want = jax.tree.map(lambda a: tuple(a.shape), target)
    got = jax.tree.map(lambda a: tuple(a.shape), loaded)
    if want != got:
        raise ValueError(f"{model.name}: {init_path} converts to a parameter tree that does not match the model's "
                         f"({sorted(got)[:4]} ... vs {sorted(want)[:4]} ...)")
    return loaded


def initial_variables(model: Model, rng: jax.Array, init_path: Optional[str] = None) -> dict:
    """``model.init(rng)``, with the encoder's trunk loaded from the checkpoint ``init_path`` when
    one is given (``trunk_from_file``: a ViT trunk; its head and projection keep their random
    init). Raises ValueError (naming the model) when the file does not fit the model."""
    if not init_path:
        return model.init(rng)
    loaded = trunk_from_file(model, init_path)  # before init: a file that does not fit costs no compilation
    variables = model.init(rng)
    params = variables["params"]["encoder"]
    new = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), loaded)
    encoder = {**params, "trunk": new} if isinstance(model.encoder, ProjectedEncoder) else new
    return {**variables, "params": {**variables["params"], "encoder": encoder}}
