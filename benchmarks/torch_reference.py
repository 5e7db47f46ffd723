"""Eager PyTorch reference of one training step, modelled on the authors' release.

This is the yardstick of ``step_bench.py --vs-torch``: the same per-step work as the compiled
JAX step, written in the eager style of the authors' PyTorch release, so that the speed ratio is
honest. It is a timing reference: a test that it computes the release's numbers step for step (on
identical weights) does not exist yet, so do not read its values as the release's (docs/protocol.md
lists the rows where the release differs).

* Backbone: a plain ``torch.nn`` ResNet-18 (torchvision's layout: 7x7/2 stem + 3x3/2 max-pool,
  basic blocks, ``width * 2**k`` channels), 1 input channel for audio spectrograms
  ``(B, 1, H, W)``; video clips ``(B, 3, T, H, W)`` have their frames folded into the batch,
  and the pooled feature is the mean over frames and space (``adaptive_avg_pool3d``), as in
  the OGM-GE-style backbone the authors build on. torchvision itself is not used (it is not
  installable beside the pinned torch here).
* BatchNorm stays in training mode for the student throughout (the authors' baselines fall
  into eval mode after their first evaluation by accident; that is not copied). The teacher
  is frozen: eval-mode BatchNorm, no gradient.
* ``ce``: CE backward, clip to norm 5, SGD(momentum 0.9) step.
* ``feature_kd``: CE + lambda FA, FA = POT's ``ot.sinkhorn2`` (100 iterations, reg 0.1,
  cosine cost 1 - cos between the student and teacher feature clouds, uniform weights),
  one backward on the sum (POT's loop is differentiated by autograd, with its host-side
  convergence checks).
* ``sumall``: CE + FA + LA jointly, LA on the features themselves (its gradient reaches the
  encoder through log p_S and log p_T; kappa is a constant), as the release's ``sumall``.
* ``ucmkd`` (first-order, the authors' bilevel step): deep-copy the student, build a fresh
  AdamW(lr 1e-5, wd 0.05) on the copy; FA inner step (forward, sinkhorn2, backward, AdamW
  step); LA inner step on detached features (second forward, head only); CE forward and
  backward on the copy; copy the gradients back to the original student, clip to norm 5,
  SGD step; copy the copy's BatchNorm buffers back.
* ``vanilla_kd``: (1 - alpha) CE + alpha T^2 KL on paired batches (T = 4, alpha = 0.9).
* ``teacher_fwd``: the frozen teacher's forward alone (a floor for the other methods).
* ViTs (``TorchCase(vit=...)``, ``step_bench.py --arch vit_b_to_s``): the release's torchvision
  (images) and timm (spectrograms) ViTs of ``benchmarks/torch_vit.py`` instead of the ResNet-18s,
  the same steps.

Mixed precision (``dtype="bfloat16"``) uses ``torch.autocast`` for the networks; the cost
matrix and Sinkhorn always run in float32. On CUDA, PyTorch's defaults are kept (TF32
convolutions, no cudnn.benchmark), as in the authors' code.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResNetEncoder", "TorchModel", "TorchConfig", "TorchCase", "build_model", "make_step", "make_batch",
           "time_step", "run_case", "METHODS"]

METHODS = ("ce", "feature_kd", "sumall", "ucmkd", "vanilla_kd", "teacher_fwd")


# ---------------------------------------------------------------------------- backbone
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18 trunk: (N, C, H, W) -> (N, 8 * width, h, w) feature maps (pooling is the model's)."""

    def __init__(self, in_channels: int, width: int = 64, stages: Sequence[int] = (2, 2, 2, 2),
                 stem: str = "imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        elif stem == "small":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'small'")
        layers, cin = [], width
        for i, n in enumerate(stages):
            cout = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.layers(self.stem(x))


class TorchModel(nn.Module):
    """Encoder + linear head for one modality.

    audio: x (B, 1, H, W); video: x (B, 3, T, H, W), frames folded into the batch, features
    averaged over frames and space.
    """

    def __init__(self, modality: str, num_classes: int, width: int = 64, stem: str = "imagenet"):
        super().__init__()
        if modality not in ("audio", "video"):
            raise ValueError(f"unknown modality {modality!r}; expected 'audio' or 'video'")
        self.modality = modality
        self.encoder = ResNetEncoder(1 if modality == "audio" else 3, width, stem=stem)
        self.head = nn.Linear(self.encoder.out_dim, num_classes)

    def encode(self, x):
        if self.modality == "video":
            b, c, t, h, w = x.shape
            frames = x.permute(0, 2, 1, 3, 4).contiguous().view(b * t, c, h, w)
            v = self.encoder(frames)
            _, cc, hh, ww = v.shape
            v = v.view(b, t, cc, hh, ww).permute(0, 2, 1, 3, 4)
            return torch.flatten(F.adaptive_avg_pool3d(v, 1), 1)
        return torch.flatten(F.adaptive_avg_pool2d(self.encoder(x), 1), 1)

    def forward(self, x):
        return self.head(self.encode(x))


def build_model(modality: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                device: str | torch.device = "cpu") -> TorchModel:
    return TorchModel(modality, num_classes, width, stem).to(device)


# ---------------------------------------------------------------------------- losses
def _pot():
    # POT probes every array backend it finds at import; TensorFlow (on the CPU machine for
    # data_prep) and JAX (already holding the device) are not wanted here.
    for name in ("TENSORFLOW", "JAX", "CUPY"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{name}", "1")
    import ot  # noqa: PLC0415  (optional dependency, extra "bench")
    return ot


def cosine_cost(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """C[i, j] = 1 - cos(z_s[i], z_t[j]), float32."""
    return 1.0 - F.normalize(z_s.float(), dim=1) @ F.normalize(z_t.float(), dim=1).t()


def feature_alignment(z_s: torch.Tensor, z_t: torch.Tensor, reg: float = 0.1, iters: int = 100) -> torch.Tensor:
    """POT's entropic OT loss ``ot.sinkhorn2`` on the cosine cost, uniform weights."""
    ot = _pot()
    m = cosine_cost(z_s, z_t)
    a = torch.full((m.shape[0],), 1.0 / m.shape[0], device=m.device, dtype=m.dtype)
    b = torch.full((m.shape[1],), 1.0 / m.shape[1], device=m.device, dtype=m.dtype)
    return ot.sinkhorn2(a, b, m, reg, numItermax=iters)


def label_alignment(student_logits, teacher_logits, y):
    """mean_i[-log p_S(y_i|z_i) + kappa_i log p_T(y_i|z_i)], kappa_i = p_T(y_i|z_i) detached."""
    log_ps = F.log_softmax(student_logits.float(), dim=1).gather(1, y[:, None])[:, 0]
    log_pt = F.log_softmax(teacher_logits.float(), dim=1).gather(1, y[:, None])[:, 0]
    kappa = log_pt.exp().detach()
    return torch.mean(-log_ps + kappa * log_pt)


def hinton_kd(s_logits, t_logits, y, temperature: float = 4.0, alpha: float = 0.9):
    t = t_logits.detach().float() / temperature
    s = s_logits.float() / temperature
    kl = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
    return (1 - alpha) * F.cross_entropy(s_logits.float(), y) + alpha * temperature**2 * kl


# ---------------------------------------------------------------------------- steps
@dataclasses.dataclass(frozen=True)
class TorchConfig:
    lr: float = 1e-2
    momentum: float = 0.9
    clip_norm: float = 5.0
    lambda_fa: float = 1.0
    lambda_la: float = 1.0
    inner_lr: float = 1e-5
    inner_weight_decay: float = 0.05
    sinkhorn_reg: float = 0.1
    sinkhorn_iters: int = 100
    dtype: str = "float32"  # or "bfloat16" (autocast)


def make_step(method: str, student: TorchModel, teacher: Optional[TorchModel],
              config: TorchConfig = TorchConfig()) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """Returns ``step(batch) -> loss`` (a detached tensor; no host sync of its own).

    batch: {"x_s", "y_s" (int64), "x_t"} in torch layout (see ``make_batch``).
    The student is updated in place; its SGD state lives in the closure.
    """
    if method not in METHODS:
        raise ValueError(f"unknown torch method {method!r}; expected one of {METHODS}")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    device_type = next(student.parameters()).device.type
    use_amp = config.dtype == "bfloat16"

    def autocast():
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=use_amp)

    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    student.train()
    outer = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum)

    def teacher_z(x_t):
        with torch.no_grad(), autocast():
            return teacher.encode(x_t).float()

    def outer_update(loss):
        outer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.clip_norm)
        outer.step()

    if method == "teacher_fwd":
        def step(batch):
            return teacher_z(batch["x_t"]).sum()
        return step

    if method == "ce":
        def step(batch):
            with autocast():
                logits = student(batch["x_s"])
            loss = F.cross_entropy(logits.float(), batch["y_s"])
            outer_update(loss)
            return loss.detach()
        return step

    if method == "vanilla_kd":
        def step(batch):
            with torch.no_grad(), autocast():
                t_logits = teacher(batch["x_t"])
            with autocast():
                logits = student(batch["x_s"])
            loss = hinton_kd(logits, t_logits, batch["y_s"])
            outer_update(loss)
            return loss.detach()
        return step

    if method in ("feature_kd", "sumall"):
        def step(batch):
            z_t = teacher_z(batch["x_t"])
            y = batch["y_s"]
            with autocast():
                z = student.encode(batch["x_s"])
                logits = student.head(z)
            loss = F.cross_entropy(logits.float(), y)
            loss = loss + config.lambda_fa * feature_alignment(z, z_t, config.sinkhorn_reg, config.sinkhorn_iters)
            if method == "sumall":
                zf = z.float()
                loss = loss + config.lambda_la * label_alignment(logits.float(), teacher.head(zf), y)
            outer_update(loss)
            return loss.detach()
        return step

    # method == "ucmkd": the authors' first-order bilevel step.
    def step(batch):
        x_s, y = batch["x_s"], batch["y_s"]
        z_t = teacher_z(batch["x_t"])
        fast = copy.deepcopy(student)
        fast.train()
        inner = torch.optim.AdamW(fast.parameters(), lr=config.inner_lr, weight_decay=config.inner_weight_decay)
        # Stage 1: feature alignment on the copy.
        with autocast():
            z = fast.encode(x_s)
        fa = config.lambda_fa * feature_alignment(z, z_t, config.sinkhorn_reg, config.sinkhorn_iters)
        inner.zero_grad()
        fa.backward()
        inner.step()
        # Stage 2: label alignment on detached features (only the head moves).
        with autocast():
            zd = fast.encode(x_s).detach()
        zd = zd.float()
        la = config.lambda_la * label_alignment(fast.head(zd), teacher.head(zd), y)
        inner.zero_grad()
        la.backward()
        inner.step()
        # Outer loss on the adapted copy; its gradient is applied to the original.
        with autocast():
            logits = fast(x_s)
        loss = F.cross_entropy(logits.float(), y)
        fast.zero_grad()
        loss.backward()
        outer.zero_grad()
        for p, q in zip(student.parameters(), fast.parameters()):
            p.grad = None if q.grad is None else q.grad.detach().clone()
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.clip_norm)
        outer.step()
        with torch.no_grad():
            for b, c in zip(student.buffers(), fast.buffers()):
                b.copy_(c)
        return loss.detach()

    return step


# ---------------------------------------------------------------------------- data, timing
def make_batch(student_modality: str, teacher_modality: str, batch: int, audio_hw, video_thw,
               num_classes: int, device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Synthetic batch in torch layout: audio (B, 1, H, W), video (B, 3, T, H, W)."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def x(modality):
        shape = (batch, 1) + tuple(audio_hw) if modality == "audio" else (batch, 3) + tuple(video_thw)
        return torch.randn(shape, generator=g).to(device)

    return {"x_s": x(student_modality), "x_t": x(teacher_modality),
            "y_s": torch.randint(0, num_classes, (batch,), generator=g).to(device)}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_step(step, batch, steps: int, warmup: int, device) -> dict:
    """Runs ``warmup`` untimed then ``steps`` timed steps, synchronising after each.

    Returns {"times_s": [...], "loss": float, "peak_mem_bytes": int | None}.
    """
    cuda = torch.device(device).type == "cuda"
    loss = None
    for _ in range(warmup):
        loss = step(batch)
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else None
    return {"times_s": times, "loss": float(loss) if loss is not None else math.nan, "peak_mem_bytes": peak}


class TorchCase:
    """One prepared case: fresh teacher and student, a synthetic batch and the step closure.

    ``step()`` runs one training step; ``sync()`` waits for the device. ``close()`` frees it.
    direction: "a2v" (audio teacher -> video student) or "v2a".
    """

    def __init__(self, method: str, direction: str, *, batch: int, audio_hw, video_thw, width: int,
                 num_classes: int = 6, stem: str = "imagenet", dtype: str = "float32", device: str = "cpu",
                 seed: int = 0, vit: Optional[dict] = None):
        if direction not in ("a2v", "v2a"):
            raise ValueError(f"direction must be 'a2v' or 'v2a', got {direction!r}")
        torch.manual_seed(seed)
        s_mod, t_mod = ("video", "audio") if direction == "a2v" else ("audio", "video")
        self.device = device
        if vit is None:
            self.student = build_model(s_mod, num_classes, width, stem, device)
            self.teacher = build_model(t_mod, num_classes, width, stem, device)
        else:  # {"teacher": ..., "student": ...}: torch_vit.build_vit_model keywords (benchmarks/vit_cases.py)
            from benchmarks.torch_vit import build_vit_model

            hw = {"audio": tuple(audio_hw), "video": tuple(video_thw)[1:]}
            self.student = build_vit_model(s_mod, num_classes=num_classes, input_hw=hw[s_mod], device=device,
                                           **vit["student"])
            self.teacher = build_vit_model(t_mod, num_classes=num_classes, input_hw=hw[t_mod], device=device,
                                           **vit["teacher"])
        self.batch = make_batch(s_mod, t_mod, batch, audio_hw, video_thw, num_classes, device, seed)
        self._step = make_step(method, self.student, self.teacher, TorchConfig(dtype=dtype))
        self.loss = None

    def step(self):
        self.loss = self._step(self.batch)

    def sync(self):
        _sync(self.device)

    def close(self):
        del self.student, self.teacher, self.batch, self._step
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()


def run_case(method: str, direction: str, *, batch: int, audio_hw, video_thw, width: int, num_classes: int = 6,
             stem: str = "imagenet", dtype: str = "float32", steps: int = 10, warmup: int = 2,
             device: str = "cpu", seed: int = 0) -> dict:
    """Builds a fresh case and times it (see ``time_step``)."""
    case = TorchCase(method, direction, batch=batch, audio_hw=audio_hw, video_thw=video_thw, width=width,
                     num_classes=num_classes, stem=stem, dtype=dtype, device=device, seed=seed)
    out = time_step(lambda b: case._step(b), case.batch, steps, warmup, device)
    case.close()
    return out
