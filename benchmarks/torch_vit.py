"""The authors' PyTorch ViTs, built here with random weights (nothing is ever downloaded).

The release (ave/utils/model_res.py) encodes images with torchvision's ``vit_b_16`` / ``vit_l_16``
(ViT-S: torchvision's ``VisionTransformer`` class at ViT-S sizes, which the release accepts but
never builds) and spectrograms with timm's ``vit_small_patch16_224`` / ``vit_large_patch16_224``
(``in_chans=1``, ``img_size=(256, 1024)``). These builders make the same modules at any depth and
width, for the converter tests (``tests/models/test_pretrained.py``: their state_dicts, saved and
converted, must give the Flax forward) and for the eager reference step of ``torch_reference.py``.

``import_torchvision`` works around one packaging fault: PyPI's torchvision wheels are built
against CUDA torch, and with the CPU torch wheel their compiled detection ops (``nms``,
``roi_align``: nothing a ViT uses) fail to load, after which ``import torchvision`` itself fails
("operator torchvision::nms does not exist"). The two operator schemas it then needs are defined
first, so the pure-Python models import. Where torchvision's ops load (a matching build), nothing
is changed.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["import_torchvision", "import_timm", "SIZES", "torchvision_vit", "timm_vit", "TorchViTModel",
           "build_vit_model"]

# name -> (timm size name, blocks, heads); token width = 64 * heads at the standard head width
SIZES = {"vit_s16": ("small", 12, 6), "vit_b16": ("base", 12, 12), "vit_l16": ("large", 24, 16)}
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIB = []  # keeps the fallback operator library alive


def import_torchvision():
    """``import torchvision``, defining its two NMS operator schemas first when its compiled ops
    cannot load beside this torch (see the module docstring)."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        lib.define(schema)
    _LIB.append(lib)
    import torchvision
    return torchvision


def import_timm():
    """``import timm`` (which imports torchvision: see ``import_torchvision``)."""
    import_torchvision()
    import timm
    return timm


def torchvision_vit(size: str, image_size: int = 224, depth: Optional[int] = None, head_width: int = 64,
                    num_classes: int = 1000) -> nn.Module:
    """torchvision's ``VisionTransformer`` of ViT-{S,B,L}/16 (``vit_b_16`` / ``vit_l_16`` at the
    defaults), with ``depth`` blocks and heads of ``head_width``; square ``image_size`` inputs."""
    tv = import_torchvision()
    _, blocks, heads = SIZES[size]
    dim = heads * head_width
    return tv.models.vision_transformer.VisionTransformer(
        image_size=image_size, patch_size=16, num_layers=depth or blocks, num_heads=heads, hidden_dim=dim,
        mlp_dim=4 * dim, num_classes=num_classes)


def timm_vit(size: str, img_size=(224, 224), in_chans: int = 3, depth: Optional[int] = None, head_width: int = 64,
             num_classes: int = 1000) -> nn.Module:
    """timm's ``vit_{small,base,large}_patch16_224`` (random weights) at ``img_size``, with
    ``in_chans`` input channels, ``depth`` blocks and heads of ``head_width``."""
    timm = import_timm()
    name, blocks, heads = SIZES[size]
    return timm.create_model(f"vit_{name}_patch16_224", pretrained=False, img_size=tuple(img_size), in_chans=in_chans,
                             depth=depth or blocks, num_heads=heads, embed_dim=heads * head_width,
                             num_classes=num_classes)


class TorchViTModel(nn.Module):
    """One side of the release's ViT setup: encoder (CLS feature), optional projection
    (Linear -> BatchNorm1d -> ReLU, ViT-S's 384 to the teacher's width) and a linear head.

    audio: x (B, 1, H, W), resized bilinearly to ``img_size`` first; timm ViT.
    video: x (B, 3, T, H, W); "mean_pixels": frames averaged in pixel space (``x.mean(dim=2)``,
    the release), "per_frame": each frame encoded and the features averaged; torchvision ViT.
    """

    def __init__(self, modality: str, size: str, num_classes: int, *, img_size: Sequence[int], depth=None,
                 head_width: int = 64, latent_dim: Optional[int] = None, video_frames: str = "mean_pixels"):
        super().__init__()
        self.modality, self.video_frames, self.img_size = modality, video_frames, tuple(img_size)
        if modality == "audio":
            self.encoder = timm_vit(size, self.img_size, 1, depth, head_width, num_classes=0)
        else:
            if self.img_size[0] != self.img_size[1]:
                raise ValueError(f"torchvision's ViT takes square images, got {self.img_size}")
            self.encoder = torchvision_vit(size, self.img_size[0], depth, head_width)
            self.encoder.heads = nn.Identity()  # forward() -> the final-LN CLS token
        dim = SIZES[size][2] * head_width
        self.projection = None
        if latent_dim is not None and latent_dim != dim:
            self.projection = nn.Sequential(nn.Linear(dim, latent_dim), nn.BatchNorm1d(latent_dim), nn.ReLU())
            dim = latent_dim
        self.head = nn.Linear(dim, num_classes)

    def encode(self, x):
        if self.modality == "audio":
            if tuple(x.shape[-2:]) != self.img_size:
                x = F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False)
            z = self.encoder(x)
        elif self.video_frames == "mean_pixels":
            z = self.encoder(x.mean(dim=2))
        else:
            b, c, t, h, w = x.shape
            z = self.encoder(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)).view(b, t, -1).mean(dim=1)
        return self.projection(z) if self.projection is not None else z

    def forward(self, x):
        return self.head(self.encode(x))


def build_vit_model(modality: str, size: str, num_classes: int, *, input_hw: Tuple[int, int], depth=None,
                    head_width: int = 64, latent_dim: Optional[int] = None, audio_size=None,
                    video_frames: str = "mean_pixels", device="cpu") -> TorchViTModel:
    """``TorchViTModel`` for inputs of spatial size ``input_hw``; spectrograms are resized to
    ``audio_size`` (default: the nearest multiples of 16, as ``ucmkd_jax.models.vit``)."""
    if modality == "audio":
        img = tuple(audio_size) if audio_size else tuple(max(16, round(s / 16) * 16) for s in input_hw)
    else:
        img = tuple(input_hw)
    return TorchViTModel(modality, size, num_classes, img_size=img, depth=depth, head_width=head_width,
                         latent_dim=latent_dim, video_frames=video_frames).to(device)
