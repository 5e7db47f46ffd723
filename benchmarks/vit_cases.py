"""The ViT cases of ``step_bench.py --arch vit_b_to_s | vit_l_to_s`` (Tables 8 and 10).

Teacher ViT-B/16 (or ViT-L/16), student ViT-S/16 with its CLS token projected to the teacher's
width by Linear -> BatchNorm -> ReLU, as the authors' release (ave/utils/model_res.py); spectrograms
(257 x 1004) resized to 256 x 1024 (1024 patches), clips of 2 frames of 224 x 224 averaged in pixel
space before one pass (the release's ``x.mean(dim=2)``; 196 patches), batch 32. The JAX models come
from ``ucmkd_jax.models.build_model``, the eager torch ones from torchvision / timm
(``benchmarks/torch_vit.py``) through ``torch_reference.TorchCase(vit=...)``: the same work.

``--small`` (a 2-core CPU): 32 x 64 spectrograms and 2 frames of 32 x 32 (8 and 4 patches), batch 8,
head width 8 (ViT-S 48, ViT-B 96, ViT-L 128 wide) and a sixth of the blocks (2, 2, 4).

Attention: ``--vit-attention auto`` (default) is cuDNN's fused kernel on a GPU in bfloat16 and
XLA's elsewhere; the unrolled hypergradient differentiates the student's attention twice, which
the fused kernel cannot, so its student always takes XLA's (``student_attention``). XLA's cost
analysis cannot count a cuDNN custom call: a bf16 record with cuDNN attention may have no FLOP
count, and ``target_checks`` then takes the FLOPs of the same case's float32 record.
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional, Sequence

__all__ = ["ARCHS", "shapes_for", "jax_model_kwargs", "torch_vit_kwargs", "for_case", "target_checks", "remat_cost"]

# --arch -> (teacher backbone, student backbone, latent width = the teacher's)
ARCHS = {"vit_b_to_s": ("vit_b16", "vit_s16", 768), "vit_l_to_s": ("vit_l16", "vit_s16", 1024)}
_BLOCKS = {"vit_s16": 12, "vit_b16": 12, "vit_l16": 24}
FULL = {"batch": 32, "audio_hw": (257, 1004), "video_thw": (2, 224, 224), "width": 64, "audio_size": (256, 1024),
        "depth_div": 1}
SMALL = {"batch": 8, "audio_hw": (32, 64), "video_thw": (2, 32, 32), "width": 8, "audio_size": None, "depth_div": 6}


def shapes_for(arch: str, small: bool, attention: str = "auto", remat: bool = False) -> dict:
    """step_bench's ``shapes`` dict of a ViT ``arch`` (hashable values: it keys the model cache);
    ``remat``: both sides' blocks under ``jax.checkpoint``."""
    teacher, student, latent = ARCHS[arch]
    base = SMALL if small else FULL
    latent = latent * base["width"] // 64
    return dict(base, arch=arch, teacher_backbone=teacher, student_backbone=student, latent_dim=latent,
                attention=attention, student_attention=attention, remat=bool(remat))


def for_case(shapes: dict, hypergrad: Optional[str]) -> dict:
    """``shapes`` for one case: an unrolled student takes XLA's attention (see the module doc)."""
    if "arch" not in shapes or hypergrad != "unrolled" or shapes["attention"] != "auto":
        return shapes
    return dict(shapes, student_attention="xla")


def _depth(shapes: dict, backbone: str) -> int:
    return max(_BLOCKS[backbone] // shapes["depth_div"], 1)


def jax_model_kwargs(shapes: dict, role: str, modality: str) -> dict:
    """Keywords of ``build_model`` for the teacher or student of a ViT case."""
    backbone = shapes[f"{role}_backbone"]
    attention = shapes["student_attention"] if role == "student" else shapes["attention"]
    options = {"depth": _depth(shapes, backbone), "attention": attention, "remat": shapes.get("remat", False),
               "input_size": shapes["audio_size"] if modality == "audio" else None}
    return {"backbone": backbone, "latent_dim": shapes["latent_dim"], "projection": "linear_bn_relu",
            "video_frames": "mean_pixels", "options": options}


def torch_vit_kwargs(shapes: dict) -> dict:
    """``torch_reference.TorchCase(vit=...)``: per role, ``torch_vit.build_vit_model`` keywords."""
    out = {}
    for role in ("teacher", "student"):
        backbone = shapes[f"{role}_backbone"]
        out[role] = {"size": backbone, "depth": _depth(shapes, backbone), "head_width": shapes["width"],
                     "latent_dim": shapes["latent_dim"], "audio_size": shapes["audio_size"],
                     "video_frames": "mean_pixels"}
    return out


def target_checks(records: List[dict]) -> List[str]:
    """The issue's ViT targets (GPU, bfloat16, one run): first-order UCMKD >= 4x the eager torch
    step, the unrolled step within one 80 GB GPU (the executable's own footprint: arguments,
    outputs and temporaries; the device peak is a running maximum over the process), ViT-S
    student steps (``ce``) at >= 40 % of the measured bf16 matmul peak."""
    out = []
    by: Dict[tuple, dict] = {(r.get("arch"), r["case"], r["direction"], r["dtype"]): r for r in records
                             if r.get("arch") in ARCHS and r.get("ms_per_step_median")}
    for arch, case, d, dt in sorted(by):
        r, tag = by[(arch, case, d, dt)], f"[{arch} {d} {dt}]"
        if case == "ucmkd" and r.get("speedup"):
            out.append(f"{tag} torch / jax ucmkd first_order = {r['speedup']:.2f}x (GPU bf16 target >= 4x)")
        if case == "ucmkd_unrolled" and r.get("compiled_mem_bytes"):
            remat = " (remat)" if r.get("remat") else ""
            out.append(f"{tag} ucmkd unrolled{remat}: XLA footprint {r['compiled_mem_bytes'] / 2**30:.1f} GiB "
                       f"(target: fits 80 GB = 74.5 GiB)")
        frac, note = r.get("frac_of_matmul_peak"), ""
        twin = by.get((arch, case, d, "float32"), {})
        if case == "ce" and dt != "float32" and twin.get("flops_per_step") and r.get("matmul_peak_flops_per_s"):
            # cuDNN's fused attention is a custom call that XLA's cost analysis does not count (the
            # bf16 record's own count lacks the attention, or is missing): the same step's FLOPs
            # from its float32 record (XLA attention; the count is dtype-free)
            frac = twin["flops_per_step"] / (r["ms_per_step_median"] / 1e3) / r["matmul_peak_flops_per_s"]
            note = ", FLOPs of the float32 record"
        if case == "ce" and frac:
            out.append(f"{tag} ViT-S student ce step at {100 * frac:.1f} % of the matmul peak{note} "
                       f"(GPU bf16 target >= 40 %)")
    return out


def remat_cost(records: List[dict]) -> List[str]:
    """For each timed record with ``remat`` (step_bench --vit-remat), its time and XLA footprint
    against the same (arch, case, direction, dtype) without remat: what ``jax.checkpoint`` costs
    and saves (the issue: the unrolled ViT-L step within 80 GB, "remat if needed, with its
    measured cost")."""
    plain = {(r.get("arch"), r["case"], r["direction"], r["dtype"]): r for r in records
             if not r.get("remat") and r.get("ms_per_step_median")}
    out = []
    for r in records:
        if not (r.get("remat") and r.get("ms_per_step_median")):
            continue
        key = (r.get("arch"), r["case"], r["direction"], r["dtype"])
        tag = f"[{key[0]} {key[2]} {key[3]}] {key[1]} remat"
        gib = (r.get("compiled_mem_bytes") or 0) / 2**30
        base = plain.get(key)
        if base is None:
            out.append(f"{tag}: {r['ms_per_step_median']:.1f} ms/step, XLA footprint {gib:.1f} GiB "
                       f"(no record without remat to compare)")
            continue
        gib0 = (base.get("compiled_mem_bytes") or 0) / 2**30
        out.append(f"{tag}: {r['ms_per_step_median']:.1f} ms/step vs {base['ms_per_step_median']:.1f} without "
                   f"(x{r['ms_per_step_median'] / base['ms_per_step_median']:.2f} time), XLA footprint "
                   f"{gib:.2f} vs {gib0:.2f} GiB (target: fits 80 GB = 74.5 GiB)")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/vit_cases.py --remat-cost A.json B.json ...``: ``remat_cost`` of the
    step_bench records of the files together (gpu_check.sh prints it after the ViT tables)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "--remat-cost":
        print("usage: python benchmarks/vit_cases.py --remat-cost STEP_BENCH.json ...", file=sys.stderr)
        return 2
    records: List[dict] = []
    for path in args[1:]:
        with open(path) as f:
            records.extend(json.load(f))
    lines = remat_cost(records)
    print("\n".join(lines) if lines else "# no timed remat record (step_bench --vit-remat) to compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
