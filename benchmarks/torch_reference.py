"""Eager PyTorch replica of one training step of the authors' release (``--protocol authors``).

Two uses: the yardstick of ``step_bench.py --vs-torch`` (the same per-step work as the compiled JAX
step, in the eager style of the release, so the speed ratio is honest), and the reference side of
``tests/test_release_parity.py``, which loads IDENTICAL weights into this replica and into the JAX
model (``ucmkd_jax.models.torch_resnet_variables``) and checks, in float64, that one step of each
method below gives the same parameter update, loss and BatchNorm statistics as the compiled JAX step
under ``--protocol authors`` (docs/protocol.md lists what ``clean`` changes).

Each step follows the release's training function of ``cremad/utils/helper.py`` (Duckduck-05/UCMKD at
2658b06) statement by statement; only the data plumbing differs (a prepared batch instead of a loader,
the outer optimiser and its schedulers built in ``make_step``):

* Backbone (``TorchModel``): a ResNet in torchvision's layout and parameter names (``conv1``, ``bn1``,
  ``maxpool``, ``layer1..4`` of basic blocks with ``downsample``, ``fc``), the release's
  ``model_res.py`` ResNet-18 (7x7/2 stem + 3x3/2 max-pool, ``width * 2**k`` channels; ``stem="small"``
  is this project's 3x3 stem). Audio spectrograms are ``(B, 1, H, W)``; video clips ``(B, 3, T, H, W)``
  have their frames folded into the batch and the pooled feature is the mean over frames and space
  (``adaptive_avg_pool3d``, as the release's ``_ResNetImageNet``). ``forward_encoder`` /
  ``forward_head`` / ``fc`` are the release's interface. torchvision itself is not used (it is not
  installable beside the pinned torch here).
* Outer optimiser (``make_step``): SGD, momentum 0.9, over the student's parameters, with the release's
  ``LinearLR(start_factor=min_lr / lr, total_iters=warmup)`` then ``CosineAnnealingLR(T_max=epochs -
  warmup, eta_min=min_lr)`` in a ``SequentialLR``, stepped once per EPOCH (``step.end_epoch()``): the
  learning rate is exactly ``min_lr`` through the first epoch. Every step clips with
  ``clip_grad_norm_(max_norm=5)``.
* BatchNorm: ``make_step`` calls ``student.train()`` once, as the release's training functions do
  before their epoch loop; the steps never call it again. The release's ``evaluate()`` calls
  ``net.eval()`` after every epoch, so its single-level baselines train with frozen running statistics
  from the second epoch on (docs/protocol.md, row 6): call ``student.eval()`` between epochs to
  reproduce that. The bilevel step calls ``.train()`` on its copy every step. The teacher is frozen:
  ``eval()``, ``requires_grad=False``.
* ``ce`` (``train_network_distill_unpair_ce``): CE backward, clip, SGD step.
* ``feature_kd`` (``_fea``): CE + fa_weight FA, FA = ``ot.sinkhorn2(a, b, clamp(M, 0), reg=0.1,
  numItermax=100)`` with ``M = 1 - cos`` between the student's and the teacher's pooled features
  (``pairwise_ot_cost``, ``metric="cosine"``), uniform weights; autograd through POT's loop.
* ``sumall`` (``_sumall``): CE + fa_weight FA + la_weight LA, LA = ``nll_loss(log p_S - kappa log p_T,
  y)`` with p_T the teacher's head ``fc`` on the student's features, NOT detached (its gradient reaches
  the encoder through log p_S and log p_T), kappa = p_T detached.
* ``vanilla_kd`` (``_vanillaKD``): (1 - alpha) CE + alpha T^2 KL(softmax(t / T) || softmax(s / T))
  (``KLDivLoss(reduction="batchmean")``) on the teacher's logits of the paired batch, T = 4, alpha = 0.9.
* ``ucmkd`` (``_bilevel``, first order): ``net_tmp = deepcopy(net)``, ``net_tmp.train()``, ONE
  ``AdamW(net_tmp.parameters(), lr=inner_lr, weight_decay=inner_wd)`` (eps 1e-8) for the outer step;
  n1 FA steps (a full forward of the copy, FA on its features, backward, AdamW step: the head gets no
  gradient and so no step), n2 LA steps (``forward_encoder``, features detached, LA = mean(CE(p') -
  kappa CE(p_T)) with kappa = p_T(y) and the teacher's head under ``no_grad``, backward, AdamW step:
  only the head moves), the inner losses unweighted; the outer CE on a third forward of the copy,
  its gradients copied to the student (where not None), ``clip_grad_norm_(max_norm=5)``, the outer
  SGD step, and the copy's buffers (BatchNorm running statistics) copied back: three running-average
  updates a step.
* ``teacher_fwd``: the frozen teacher's forward alone (a floor for the other methods).
* ViTs (``TorchCase(vit=...)``, ``step_bench.py --arch vit_b_to_s``): the release's torchvision
  (images) and timm (spectrograms) ViTs of ``benchmarks/torch_vit.py`` instead of the ResNet-18s,
  the same steps.

Mixed precision (``dtype="bfloat16"``) uses ``torch.autocast`` for the networks; the cost matrix and
Sinkhorn run in float32 (float64 stays float64: ``model.double()`` gives a float64 replica). On CUDA,
PyTorch's defaults are kept (TF32 convolutions, no cudnn.benchmark), as in the authors' code.
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

__all__ = ["TorchModel", "TorchConfig", "TorchCase", "build_model", "make_step", "make_batch", "time_step",
           "run_case", "torch_config", "METHODS"]

METHODS = ("ce", "feature_kd", "sumall", "ucmkd", "vanilla_kd", "teacher_fwd")


# ---------------------------------------------------------------------------- backbone
class BasicBlock(nn.Module):
    """torchvision's basic block: conv1, bn1, conv2, bn2, optional downsample (1x1 conv, BN)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchModel(nn.Module):
    """A ResNet classifier of one modality in torchvision's layout (its ``state_dict`` converts with
    ``ucmkd_jax.models.torch_resnet_variables``) with the release's interface.

    audio: x (B, 1, H, W); video: x (B, 3, T, H, W), frames folded into the batch, features averaged
    over frames and space. ``forward(x)`` returns the logits; ``forward_encoder(x)`` the pooled feature
    (B, 8 * width); ``forward_head(z)`` and ``fc(z)`` (the release's teacher head) the logits of a
    feature; ``encode`` and ``head`` are the same two (the interface ``TorchViTModel`` shares).
    """

    def __init__(self, modality: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                 stages: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if modality not in ("audio", "video"):
            raise ValueError(f"unknown modality {modality!r}; expected 'audio' or 'video'")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'small'")
        self.modality = modality
        cin = 1 if modality == "audio" else 3
        k, s, p = (7, 2, 3) if stem == "imagenet" else (3, 1, 1)
        self.conv1 = nn.Conv2d(cin, width, k, s, p, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        c = width
        for i, n in enumerate(stages):
            cout = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, cout, 2 if (i > 0 and j == 0) else 1))
                c = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_stages = len(stages)
        self.out_dim = c
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _trunk(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_encoder(self, x):
        if self.modality == "video":
            b, c, t, h, w = x.shape
            frames = x.permute(0, 2, 1, 3, 4).contiguous().view(b * t, c, h, w)
            v = self._trunk(frames)
            _, cc, hh, ww = v.shape
            v = v.view(b, t, cc, hh, ww).permute(0, 2, 1, 3, 4)  # (B, C, T, H', W')
            return torch.flatten(F.adaptive_avg_pool3d(v, 1), 1)
        return torch.flatten(F.adaptive_avg_pool2d(self._trunk(x), 1), 1)

    def forward_head(self, z):
        return self.fc(z)

    encode = forward_encoder

    @property
    def head(self) -> nn.Linear:
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_encoder(x))


def build_model(modality: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                device: str | torch.device = "cpu", stages: Sequence[int] = (2, 2, 2, 2)) -> TorchModel:
    return TorchModel(modality, num_classes, width, stem, stages).to(device)


# ---------------------------------------------------------------------------- losses
def _pot():
    # POT probes every array backend it finds at import; TensorFlow (on the CPU machine for
    # data_prep) and JAX (already holding the device) are not wanted here.
    for name in ("TENSORFLOW", "JAX", "CUPY"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{name}", "1")
    import ot  # noqa: PLC0415  (optional dependency, extra "bench")
    return ot


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


def cosine_cost(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """The release's ``pairwise_ot_cost(metric="cosine")``: M[i, j] = 1 - <z_s_i / |z_s_i|, z_t_j / |z_t_j|>."""
    stu = F.normalize(_f32(z_s), p=2, dim=1)
    tea = F.normalize(_f32(z_t), p=2, dim=1)
    return 1.0 - stu @ tea.T


def feature_alignment(z_s: torch.Tensor, z_t: torch.Tensor, reg: float = 0.1, iters: int = 100) -> torch.Tensor:
    """The release's FA: ``ot.sinkhorn2(a, b, clamp(M, 0), reg, numItermax=iters)`` on the cosine cost,
    uniform weights (in M's dtype: the release's default-dtype ones are the same numbers in float32),
    POT's default stop threshold; differentiated by autograd through POT's loop."""
    ot = _pot()
    m = torch.clamp(cosine_cost(z_s, z_t), min=0.0)
    n = z_s.size(0)
    a = torch.ones(n, device=m.device, dtype=m.dtype) / n
    b = torch.ones(n, device=m.device, dtype=m.dtype) / n  # the release sizes both by the student batch
    return torch.mean(ot.sinkhorn2(a, b, m, reg=reg, numItermax=iters))


def label_alignment(student_logits, teacher_logits, y):
    """The release's sumall LA: ``nll_loss(log p_S - kappa log p_T, y)`` = mean_i[-log p_S(y_i|z_i) +
    kappa_i log p_T(y_i|z_i)], kappa = p_T detached."""
    log_probs_s = F.log_softmax(_f32(student_logits), dim=-1)
    log_probs_t = F.log_softmax(_f32(teacher_logits), dim=-1)
    kappa = F.softmax(_f32(teacher_logits), dim=-1).detach()
    return F.nll_loss(log_probs_s - kappa * log_probs_t, y)


def hinton_kd(s_logits, t_logits, y, temperature: float = 4.0, alpha: float = 0.9):
    """The release's vanilla KD: (1 - alpha) CE + alpha T^2 KLDivLoss(batchmean)(log_softmax(s / T),
    softmax(t / T))."""
    ce = F.cross_entropy(_f32(s_logits), y)
    soft_student = F.log_softmax(_f32(s_logits) / temperature, dim=-1)
    soft_teacher = F.softmax(_f32(t_logits).detach() / temperature, dim=-1)
    kd = F.kl_div(soft_student, soft_teacher, reduction="batchmean") * (temperature * temperature)
    return (1.0 - alpha) * ce + alpha * kd


# ---------------------------------------------------------------------------- steps
@dataclasses.dataclass(frozen=True)
class TorchConfig:
    """The release's arguments (``main_overlap_tag.py`` defaults): lr, min_lr, warmup_epoch,
    num_epochs (the outer SGD and its per-epoch schedule), max_norm, fa_weight, la_weight (feature
    KD and sumall only), inner_lr, inner_wd, n1, n2 (the bilevel step), ot_reg, ot_iter, kd_temp,
    kd_alpha; dtype "float32" or "bfloat16" (autocast; a float64 model runs in float64)."""

    lr: float = 1e-2
    min_lr: float = 1e-5
    warmup_epochs: int = 5
    epochs: int = 100
    momentum: float = 0.9
    clip_norm: float = 5.0
    lambda_fa: float = 1.0
    lambda_la: float = 1.0
    inner_lr: float = 1e-5
    inner_weight_decay: float = 0.05
    n1: int = 1
    n2: int = 1
    sinkhorn_reg: float = 0.1
    sinkhorn_iters: int = 100
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    dtype: str = "float32"  # or "bfloat16" (autocast)


def torch_config(method_config, optim_config, epochs: int, dtype: str = "float32") -> TorchConfig:
    """The ``TorchConfig`` of a JAX run's ``MethodConfig`` and ``OptimConfig`` (the fields the
    release has; read by attribute, so nothing of ucmkd_jax is imported here)."""
    return TorchConfig(lr=optim_config.lr, min_lr=optim_config.init_lr,
                       warmup_epochs=int(round(optim_config.warmup_epochs)), epochs=epochs, momentum=optim_config.momentum, clip_norm=optim_config.clip_norm,
                       lambda_fa=method_config.lambda_fa, lambda_la=method_config.lambda_la,
                       inner_lr=method_config.inner_lr, inner_weight_decay=method_config.inner_weight_decay,
                       n1=method_config.n1, n2=method_config.n2, sinkhorn_reg=method_config.fa.epsilon,
                       sinkhorn_iters=method_config.fa.num_iterations, kd_temperature=method_config.kd_temperature,
                       kd_alpha=method_config.kd_alpha, dtype=dtype)


def _outer_optimizer(student: nn.Module, config: TorchConfig):
    """SGD(momentum 0.9) with the release's LinearLR warm-up and cosine, stepped per epoch."""
    optimizer = torch.optim.SGD(list(student.parameters()), lr=config.lr, momentum=config.momentum)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=config.min_lr / config.lr, end_factor=1.0,
                                               total_iters=config.warmup_epochs)
    main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs - config.warmup_epochs,
                                                      eta_min=config.min_lr)
    schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers=[warmup, main],
                                                     milestones=[config.warmup_epochs])
    return optimizer, schedule


def make_step(method: str, student: nn.Module, teacher: Optional[nn.Module],
              config: TorchConfig = TorchConfig()) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """Returns ``step(batch) -> loss`` (a detached tensor; no host sync of its own), the loss the
    release accumulates (ce: CE; feature_kd, sumall, vanilla_kd: the total; ucmkd: the outer CE).

    batch: {"x_s", "y_s" (int64), "x_t"} in torch layout (see ``make_batch``).
    The student is updated in place; its optimiser lives in the closure (``step.optimizer``), and
    ``step.end_epoch()`` steps the per-epoch learning-rate schedule (``lr_scheduler.step()``).
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
    optimizer, lr_scheduler = _outer_optimizer(student, config)

    def fa_loss(stu_f, tea_f):
        return feature_alignment(stu_f, tea_f, config.sinkhorn_reg, config.sinkhorn_iters)

    def outer_update(loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm=config.clip_norm)
        optimizer.step()

    def finish(step):
        step.optimizer, step.end_epoch = optimizer, lr_scheduler.step
        return step

    if method == "teacher_fwd":
        def step(batch):
            with torch.no_grad(), autocast():
                return _f32(teacher.encode(batch["x_t"])).sum()
        return finish(step)

    if method == "ce":  # train_network_distill_unpair_ce
        def step(batch):
            with autocast():
                outputs_final = student(batch["x_s"])
            optimizer.zero_grad()
            loss = F.cross_entropy(_f32(outputs_final), batch["y_s"])
            outer_update(loss)
            return loss.detach()
        return finish(step)

    if method == "vanilla_kd":  # train_network_distill_unpair_vanillaKD (paired batches)
        def step(batch):
            with autocast():
                outputs_final = student(batch["x_s"])
                tea_final = teacher(batch["x_t"])
            optimizer.zero_grad()
            loss = hinton_kd(outputs_final, tea_final, batch["y_s"], config.kd_temperature, config.kd_alpha)
            outer_update(loss)
            return loss.detach()
        return finish(step)

    if method in ("feature_kd", "sumall"):  # train_network_distill_unpair_fea / _sumall
        def step(batch):
            labels = batch["y_s"]
            with autocast():
                stu_f = student.encode(batch["x_s"])
                outputs = student.head(stu_f)
                tea_f = teacher.encode(batch["x_t"])
            optimizer.zero_grad()
            ce_loss = F.cross_entropy(_f32(outputs), labels, reduction="none")
            loss = ce_loss.mean() + config.lambda_fa * fa_loss(stu_f, tea_f)
            if method == "sumall":  # LA on the features themselves (not detached)
                stu_latent_2_tea = teacher.head(_f32(stu_f))
                loss = loss + config.lambda_la * label_alignment(outputs, stu_latent_2_tea, labels)
            outer_update(loss)
            return loss.detach()
        return finish(step)

    # method == "ucmkd": train_network_distill_unpair_bilevel, the first-order bilevel step.
    def step(batch):
        x_s, labels, x_t = batch["x_s"], batch["y_s"], batch["x_t"]
        net_tmp = copy.deepcopy(student)
        net_tmp.train()
        optimizer_tmp = torch.optim.AdamW(list(net_tmp.parameters()), lr=config.inner_lr,
                                          weight_decay=config.inner_weight_decay)
        fa = la = None
        for _ in range(config.n1):  # feature alignment: only the encoder receives a gradient
            optimizer_tmp.zero_grad()
            with autocast():
                stu_f_tmp = net_tmp.encode(x_s)
                net_tmp.head(stu_f_tmp)  # the release's full forward net_tmp(x): the logits go unused
                tea_f = teacher.encode(x_t)
            fa = fa_loss(stu_f_tmp, tea_f)
            fa.backward()
            optimizer_tmp.step()
        for _ in range(config.n2):  # label alignment on detached features: only the head moves
            optimizer_tmp.zero_grad()
            with autocast():
                stu_f_tmp = net_tmp.encode(x_s)
            stu_f_fixed = _f32(stu_f_tmp.detach())
            outputs_tmp = net_tmp.head(stu_f_fixed)
            with torch.no_grad():
                stu_latent_2_tea = teacher.head(_f32(stu_f_tmp))
            cross_entropy = torch.nn.CrossEntropyLoss(reduction="none")
            probs_t = F.softmax(stu_latent_2_tea, dim=-1)
            kappa = probs_t.gather(dim=1, index=labels.unsqueeze(1)).squeeze(1)
            la = (cross_entropy(outputs_tmp, labels) - kappa * cross_entropy(stu_latent_2_tea, labels)).mean()
            la.backward()
            optimizer_tmp.step()
        with autocast():
            outputs_final_tmp = net_tmp(x_s)
        ce_loss = F.cross_entropy(_f32(outputs_final_tmp), labels)
        net_tmp.zero_grad()
        ce_loss.backward()
        optimizer.zero_grad()
        for real_param, tmp_param in zip(student.parameters(), net_tmp.parameters()):
            if tmp_param.grad is not None:
                real_param.grad = tmp_param.grad.clone()
        torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm=config.clip_norm)
        optimizer.step()
        with torch.no_grad():  # the adapted copy's running statistics
            for real_buffer, tmp_buffer in zip(student.buffers(), net_tmp.buffers()):
                real_buffer.data.copy_(tmp_buffer.data)
        return ce_loss.detach()

    return finish(step)


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
                 seed: int = 0, vit: Optional[dict] = None, stages: Sequence[int] = (2, 2, 2, 2)):
        if direction not in ("a2v", "v2a"):
            raise ValueError(f"direction must be 'a2v' or 'v2a', got {direction!r}")
        torch.manual_seed(seed)
        s_mod, t_mod = ("video", "audio") if direction == "a2v" else ("audio", "video")
        self.device = device
        if vit is None:
            self.student = build_model(s_mod, num_classes, width, stem, device, stages)
            self.teacher = build_model(t_mod, num_classes, width, stem, device, stages)
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
