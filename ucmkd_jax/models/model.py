"""An encoder + linear head pair, applied as pure functions of explicit pytrees.

``Model`` splits a classifier into ``encode(x) -> z`` and ``classify(z) -> logits`` so that the
teacher's head can score student features, p_T(y | phi(x_S)) (paper, Sec. 2.1). Variables are a
dict ``{"params": {"encoder": ..., "head": ...}, "batch_stats": {...}}``; every method takes and
returns plain pytrees, so it can be jitted and differentiated through inner update steps.
Models are built by ``ucmkd_jax.models.build.build_model``.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucmkd_jax.precision import at_least_f32

__all__ = ["Model", "MODALITIES", "VIDEO_FRAMES"]

VIDEO_FRAMES = ("per_frame", "mean_pixels")

# Modality -> (input rank without batch, description used in error messages).
MODALITIES = {
    "audio": (3, "(N, H, W, C) spectrograms"),
    "image": (3, "(N, H, W, C) images"),
    "video": (4, "(N, T, H, W, C) frame stacks"),
    "vector": (1, "(N, D) vectors"),
}


def _unbiased_running_var(next_fun, args, kwargs, context):
    """``nn.intercept_methods`` hook: after a train-mode BatchNorm call, turn Flax's running-variance
    update r' = m r + (1 - m) v (v the biased batch variance over n positions) into PyTorch's
    m r + (1 - m) v n / (n - 1) = r' + (r' - m r) / (n - 1)."""
    module = context.module
    if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__") or module.is_initializing() \
            or not module.is_mutable_collection("batch_stats") \
            or kwargs.get("use_running_average", module.use_running_average):
        return next_fun(*args, **kwargs)
    old = module.get_variable("batch_stats", "var")
    out = next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    n = x.size // x.shape[module.axis if isinstance(module.axis, int) else -1]
    if n > 1:
        new = module.get_variable("batch_stats", "var")
        module.put_variable("batch_stats", "var", new + (new - module.momentum * old) / (n - 1))
    return out


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier of one modality, split into encoder and head.

    Attributes:
      encoder: Linen module, (N, *frame_shape) -> (N, latent_dim).
      num_classes: K, the head's output size.
      modality: one of ``MODALITIES``; "video" inputs are (N, T, H, W, C) and are encoded per
        frame, then averaged over frames (and space, inside the encoder).
      input_shape: the per-sample shape the model was built for (without the batch axis).
      name: used in error messages ("teacher", "student").
      video_frames: how video is encoded: "per_frame" (above) or "mean_pixels" (the T frames
        averaged in pixel space, then ONE encoder pass: the authors' ViT release, ``x.mean(dim=2)``).
      bn_running_var: how a train-mode forward updates the encoder's BatchNorm running variance:
        with the batch's "biased" variance (Flax) or the "unbiased" one, times n / (n - 1) with n
        the positions per channel (PyTorch, the release). Normalisation in train mode uses the
        biased one either way, as both libraries do.
    """

    encoder: nn.Module
    num_classes: int
    modality: str
    input_shape: Tuple[int, ...]
    name: str = "model"
    video_frames: str = "per_frame"
    bn_running_var: str = "biased"
    train_bn: str = "batch"

    def __post_init__(self):
        if self.video_frames not in VIDEO_FRAMES:
            raise ValueError(f"video_frames must be one of {VIDEO_FRAMES}, got {self.video_frames!r}")
        if self.bn_running_var not in ("biased", "unbiased"):
            raise ValueError(f"bn_running_var must be 'biased' or 'unbiased', got {self.bn_running_var!r}")
        if self.train_bn not in ("batch", "frozen"):
            raise ValueError(f"train_bn must be 'batch' or 'frozen', got {self.train_bn!r}")

    @property
    def latent_dim(self) -> int:
        return int(self.encoder.out_dim)

    @property
    def head(self) -> nn.Dense:
        return nn.Dense(self.num_classes, name="head")

    # ------------------------------------------------------------------ checks
    def check_input(self, x) -> None:
        """Raise ValueError naming the model if ``x`` does not fit (rank, trailing shape)."""
        rank, desc = MODALITIES[self.modality]
        shape = tuple(x.shape)
        if len(shape) != rank + 1:
            raise ValueError(
                f"{self.name} ({self.modality}) input has shape {shape}: expected {desc}, "
                f"i.e. rank {rank + 1} with per-sample shape {self.input_shape}")
        if shape[1:] != tuple(self.input_shape):
            what = ("channels" if self.modality != "vector" and shape[-1] != self.input_shape[-1]
                    else "per-sample shape")
            raise ValueError(
                f"{self.name} ({self.modality}) input has {what} mismatch: got per-sample shape "
                f"{shape[1:]}, the model was built for {tuple(self.input_shape)}")

    # ------------------------------------------------------------------ pure functions
    def init(self, rng: jax.Array) -> dict:
        """Returns variables ``{"params": {"encoder", "head"}, "batch_stats"}``.

        Jitted once per model (eagerly, Flax's init dispatches and compiles a few hundred small
        ops: seconds of compile time on a CPU for every new model)."""
        init = self.__dict__.get("_jit_init")
        if init is None:
            init = jax.jit(self._init)
            object.__setattr__(self, "_jit_init", init)  # a cache, not a field: eq/hash ignore it
        return init(rng)

    def _init(self, rng: jax.Array) -> dict:
        k_enc, k_head = jax.random.split(rng)
        x = jnp.zeros((2,) + tuple(self.input_shape), jnp.float32)
        enc_vars = self.encoder.init(k_enc, self._frames(x), train=False)
        head_params = self.head.init(k_head, jnp.zeros((1, self.latent_dim)))["params"]
        return {"params": {"encoder": enc_vars["params"], "head": head_params},
                "batch_stats": enc_vars.get("batch_stats", {})}

    def _frames(self, x):
        """What the encoder sees: frames folded into the batch axis (video, per frame), the
        clip's mean frame (video, mean_pixels) or ``x`` itself."""
        if self.modality != "video":
            return x
        if self.video_frames == "mean_pixels":
            return x.mean(axis=1)
        return x.reshape((-1,) + x.shape[2:])

    def encode(self, encoder_params, batch_stats, x, train: bool, return_stages: bool = False):
        """z = phi(x). Args: x (N, *input_shape). Returns (z (N, latent_dim) float32,
        new batch_stats) and, with ``return_stages``, the per-stage feature maps as a third
        element (frames folded into the batch axis for video). In eval mode batch_stats are
        returned unchanged."""
        self.check_input(x)
        n = x.shape[0]
        variables = {"params": encoder_params, "batch_stats": batch_stats}
        if train and self.train_bn == "frozen":  # eval-mode BatchNorm inside a training step
            train = False
        if train:
            apply = lambda: self.encoder.apply(variables, self._frames(x), train=True,  # noqa: E731
                                               return_stages=return_stages, mutable=["batch_stats"])
            if self.bn_running_var == "unbiased":
                with nn.intercept_methods(_unbiased_running_var):
                    out, updates = apply()
            else:
                out, updates = apply()
            new_stats = updates["batch_stats"]
        else:
            out = self.encoder.apply(variables, self._frames(x), train=False, return_stages=return_stages)
            new_stats = batch_stats
        z, stages = out if return_stages else (out, None)
        if self.modality == "video":  # mean over frames of the spatially pooled map
            z = z.reshape(n, -1, z.shape[-1]).mean(axis=1)
        return (z, new_stats, stages) if return_stages else (z, new_stats)

    def classify(self, head_params, z):
        """logits = head(z). Args: z (N, latent_dim). Returns (N, num_classes) float32."""
        return at_least_f32(self.head.apply({"params": head_params}, z))

    def apply(self, variables: dict, x, train: bool = False):
        """Full classifier. Returns (logits, z, new batch_stats)."""
        p = variables["params"]
        z, stats = self.encode(p["encoder"], variables["batch_stats"], x, train)
        return self.classify(p["head"], z), z, stats

