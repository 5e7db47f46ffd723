"""One builder for every classifier: a registry of backbones and ``build_model``.

    model = build_model("video", (2, 224, 224, 3), 6)                     # ResNet-18, latent 512
    model = build_model("vector", (32,), 3, latent_dim=64)                # "auto": an MLP for vectors
    model = build_model("image", (64, 64, 3), 5, backbone="resnet50", latent_dim=512)  # projected

A backbone is registered once (``register_backbone``) with the input kinds it can encode and a
function that makes its encoder; the CLI's choices, ``build_model`` and ``describe_model`` all
read ``BACKBONES``. When the encoder's natural width is not the requested ``latent_dim``, a
linear projection brings it there (``ProjectedEncoder``), so any two backbones can share a
latent space: the teacher's head must score student features.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Tuple

import jax.numpy as jnp

from ucmkd_jax.models.mlp import MLPEncoder
from ucmkd_jax.models.model import MODALITIES, Model
from ucmkd_jax.models.projection import ProjectedEncoder
from ucmkd_jax.models.resnet import STAGES, ResNetEncoder
from ucmkd_jax.models.vit import VIT_OPTIONS, VIT_SIZES, ViTEncoder, make_vit
from ucmkd_jax.registry import Registry

__all__ = ["BackboneSpec", "BACKBONES", "register_backbone", "DTYPES", "default_backbone", "build_model",
           "describe_model", "DEFAULT_LATENT_DIM"]

DEFAULT_LATENT_DIM = 512  # ResNet-18's pooled width at the paper's width 64
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
_SPATIAL = ("audio", "image", "video")
RESNET_OPTIONS = ("stem_impl", "pool_impl", "conv_impl")  # how the stem and the convolutions are computed (models.ops)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone. ``make(input_shape, width, stem, dtype, latent_dim, mlp_depth)``
    returns a Linen encoder (N, *frame_shape) -> (N, out_dim) with an ``out_dim`` and, when it
    has spatial feature maps, a ``stage_channels`` tuple; ``modalities``: the input kinds it
    encodes."""

    name: str
    make: Callable[..., Any]
    modalities: Tuple[str, ...]
    options: Tuple[str, ...] = ()  # further keywords ``make`` takes (``build_model(options=...)``)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(name: str, modalities: Tuple[str, ...], options: Tuple[str, ...] = ()):
    """Decorator: ``@register_backbone("resnet18", ("audio", "image", "video"))`` on a ``make``;
    ``options``: the names of further keywords ``make`` takes."""

    def deco(make):
        BACKBONES.add(name, BackboneSpec(name, make, tuple(modalities), tuple(options)))
        return make

    return deco


def _register_resnet(name: str):
    sizes, block = STAGES[name]

    @register_backbone(name, _SPATIAL, options=RESNET_OPTIONS)
    def make(input_shape, width, stem, dtype, latent_dim, mlp_depth, stem_impl="auto", pool_impl="auto",
             conv_impl="auto"):
        del latent_dim, mlp_depth
        if stem == "auto":  # the ImageNet stem divides the side by 4 before stage 1
            stem = "small" if min(input_shape[-3], input_shape[-2]) < 64 else "imagenet"
        return ResNetEncoder(stage_sizes=sizes, block=block, width=width, stem=stem, dtype=dtype,
                             stem_impl=stem_impl, pool_impl=pool_impl, conv_impl=conv_impl)


for _name in STAGES:
    _register_resnet(_name)


def _register_vit(name: str):
    depth0, heads = VIT_SIZES[name]

    @register_backbone(name, _SPATIAL, options=VIT_OPTIONS)
    def make(input_shape, width, stem, dtype, latent_dim, mlp_depth, depth=None, remat=False, attention="auto",
             input_size=None):
        del stem, latent_dim, mlp_depth  # no stem; projected by build_model when latent_dim differs
        return make_vit(name, input_shape, heads, width, depth or depth0, dtype, remat, attention, input_size)


for _name in VIT_SIZES:
    _register_vit(_name)


@register_backbone("mlp", ("vector",))
def _make_mlp(input_shape, width, stem, dtype, latent_dim, mlp_depth):
    del input_shape, stem
    return MLPEncoder(hidden=max(4 * width, 8), depth=mlp_depth, out_dim=latent_dim or 8 * width, dtype=dtype)


def default_backbone(modality: str, image_backbone: str = "resnet18") -> str:
    """What ``backbone="auto"`` means: "mlp" for vectors, ``image_backbone`` for images,
    spectrograms and frame stacks."""
    return "mlp" if modality == "vector" else image_backbone


def build_model(modality: str, input_shape, num_classes: int, backbone: str = "auto", *, width: int = 64,
                stem: str = "auto", dtype: Any = "float32", latent_dim: Optional[int] = None, mlp_depth: int = 2,
                name: str = "model", options: Optional[Mapping[str, Any]] = None, projection: str = "linear",
                video_frames: str = "per_frame", bn_running_var: str = "biased") -> Model:
    """Build the ``Model`` (encoder + linear head) of one modality.

    Args:
      modality: "audio", "image" (N, H, W, C), "video" (N, T, H, W, C: frames encoded one by one
        and averaged) or "vector" (N, D).
      input_shape: the per-sample shape (no batch axis).
      num_classes: K.
      backbone: a name in ``BACKBONES`` ("resnet10", "resnet18", "resnet34", "resnet50", "vit_s16", "vit_b16",
        "vit_l16", "mlp") or "auto" (``default_backbone``).
      width: first-stage ResNet channels (64 = the paper's ResNet-18, latent 512); the MLP's
        hidden size is max(4 * width, 8); a ViT's head width (64 = the standard ViT-S/B/L: 384,
        768, 1024 wide).
      stem: ResNet stem, "imagenet" (7x7 stride-2 conv + max-pool), "small" (3x3 stride-1 conv,
        no pool) or "auto" (small when min(H, W) < 64).
      dtype: compute dtype, a name in ``DTYPES`` or a jnp dtype (parameters stay float32).
      latent_dim: the latent size z must have (the MLP ends there; a ResNet of another pooled
        width is projected there); None: the encoder's own width (8 * width for an MLP).
      mlp_depth: layers of the MLP encoder.
      name: used in error messages ("teacher", "student").
      options: further keywords of the backbone's ``make`` (its ``BackboneSpec.options``; a ViT's
        ``depth``, ``remat``, ``attention``, ``input_size``: ``ucmkd_jax.models.vit.make_vit``).
      projection: how an encoder of another width reaches ``latent_dim``: "linear" or
        "linear_bn_relu" (the release's ViT-S head, ``ProjectedEncoder``).
      video_frames: "per_frame" (each frame encoded, z averaged) or "mean_pixels" (the frames
        averaged in pixel space, one pass: the authors' ViT release), ``Model.video_frames``.
      bn_running_var: "biased" (Flax) or "unbiased" (PyTorch) running-variance updates,
        ``Model.bn_running_var``.
    Raises:
      ValueError naming the model for an unknown modality or backbone, a backbone that cannot
      encode the modality, a shape of the wrong rank, K < 2 or sizes < 1.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITIES)}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != MODALITIES[modality][0]:
        raise ValueError(f"{name}: modality {modality!r} needs {MODALITIES[modality][1]}, "
                         f"got per-sample shape {input_shape}")
    if num_classes < 2:
        raise ValueError(f"{name}: num_classes must be >= 2, got {num_classes}")
    backbone = default_backbone(modality) if backbone in (None, "auto") else backbone
    spec = BACKBONES.get(backbone)
    if modality not in spec.modalities:
        if modality == "vector":
            raise ValueError(f"{name}: {backbone} cannot encode (N, D) vectors: use the mlp backbone "
                             f"(the default for vectors)")
        others = [b for b, s in BACKBONES.items() if modality in s.modalities]
        takes = " or ".join(MODALITIES[m][1] for m in spec.modalities)
        raise ValueError(f"{name}: the {backbone} backbone takes {takes}, not {modality} inputs of per-sample "
                         f"shape {input_shape}: use {', '.join(others)}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if (latent_dim is not None and latent_dim < 1) or width < 1 or mlp_depth < 1:
        raise ValueError(f"latent_dim, width and mlp_depth must be >= 1, got {latent_dim}, {width}, {mlp_depth}")
    unknown = sorted(set(options or {}) - set(spec.options))
    if unknown:
        raise ValueError(f"{name}: the {backbone} backbone takes no option {unknown[0]!r}"
                         + (f" (it takes {', '.join(spec.options)})" if spec.options else ""))
    encoder = spec.make(input_shape, width, stem, dtype, latent_dim, mlp_depth, **dict(options or {}))
    if latent_dim is not None and encoder.out_dim != latent_dim:
        encoder = ProjectedEncoder(encoder, latent_dim, dtype, kind=projection)
    return Model(encoder=encoder, num_classes=int(num_classes), modality=modality, input_shape=input_shape,
                 name=name, video_frames=video_frames, bn_running_var=bn_running_var)


def describe_model(model: Model) -> dict:
    """JSON-ready summary: kind, per-sample shape, backbone, its size settings, latent size and
    whether a projection ends it."""
    enc = model.encoder
    trunk = enc.trunk if isinstance(enc, ProjectedEncoder) else enc
    info = {"kind": model.modality, "sample_shape": list(model.input_shape), "latent_dim": model.latent_dim,
            "projection": isinstance(enc, ProjectedEncoder)}
    if isinstance(trunk, ResNetEncoder):
        name = next((k for k, (s, b) in STAGES.items() if tuple(s) == tuple(trunk.stage_sizes) and b == trunk.block),
                    "resnet")
        info.update(backbone=name, width=trunk.width, stem=trunk.stem, stem_impl=trunk.stem_impl,
                    pool_impl=trunk.pool_impl, conv_impl=trunk.conv_impl)
    elif isinstance(trunk, ViTEncoder):
        info.update(backbone=trunk.arch, dim=trunk.dim, depth=trunk.depth, heads=trunk.heads,
                    input_size=list(trunk.input_size or model.input_shape[-3:-1]))
    elif isinstance(trunk, MLPEncoder):
        info.update(backbone="mlp", hidden=trunk.hidden, depth=trunk.depth)
    else:
        info.update(backbone=type(trunk).__name__)
    return info
