"""benchmarks/vit_cases.py and step_bench --arch: the ViT cases' shapes and models, their target
lines, and one tiny case against the eager torchvision/timm reference so the scripts cannot rot."""
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import step_bench, vit_cases  # noqa: E402


def test_full_shapes_are_the_releases():
    args = step_bench.parse_args(["--arch", "vit_l_to_s", "--methods", "ce,ucmkd_unrolled", "--vit-remat"])
    s = args.shapes
    assert (s["batch"], s["audio_hw"], s["audio_size"], s["video_thw"], s["latent_dim"]) == \
        (32, (257, 1004), (256, 1024), (2, 224, 224), 1024)
    kw = vit_cases.jax_model_kwargs(s, "teacher", "audio")
    assert kw["backbone"] == "vit_l16" and kw["options"] == {"depth": 24, "attention": "auto", "remat": True,
                                                             "input_size": (256, 1024)}
    assert kw["video_frames"] == "mean_pixels" and kw["projection"] == "linear_bn_relu"
    assert vit_cases.jax_model_kwargs(s, "student", "video")["options"]["input_size"] is None
    assert vit_cases.for_case(s, "unrolled")["student_attention"] == "xla"
    assert vit_cases.for_case(s, "first_order") is s
    small = vit_cases.shapes_for("vit_l_to_s", small=True)
    assert [vit_cases._depth(small, b) for b in ("vit_s16", "vit_b16", "vit_l16")] == [2, 2, 4]
    assert vit_cases.torch_vit_kwargs(small)["teacher"] == {"size": "vit_l16", "depth": 4, "head_width": 8,
                                                            "latent_dim": 128, "audio_size": None,
                                                            "video_frames": "mean_pixels"}


def test_target_lines():
    recs = [{"arch": "vit_b_to_s", "case": "ucmkd", "direction": "a2v", "dtype": "bfloat16", "ms_per_step_median": 10,
             "speedup": 4.5},
            {"arch": "vit_b_to_s", "case": "ce", "direction": "a2v", "dtype": "bfloat16", "ms_per_step_median": 5,
             "frac_of_matmul_peak": 0.42},
            {"arch": "vit_l_to_s", "case": "ucmkd_unrolled", "direction": "v2a", "dtype": "bfloat16",
             "ms_per_step_median": 50, "compiled_mem_bytes": 60 * 2**30, "remat": True}]
    recs += [{"arch": "vit_l_to_s", "case": "ce", "direction": "a2v", "dtype": "bfloat16", "ms_per_step_median": 10,
              "flops_per_step": None, "matmul_peak_flops_per_s": 1e12},   # cuDNN attention: no FLOP count
             {"arch": "vit_l_to_s", "case": "ce", "direction": "a2v", "dtype": "float32", "ms_per_step_median": 20,
              "flops_per_step": 5e9}]
    lines = vit_cases.target_checks(recs)
    assert lines == ["[vit_b_to_s a2v bfloat16] ViT-S student ce step at 42.0 % of the matmul peak (GPU bf16 target "
                     ">= 40 %)",
                     "[vit_b_to_s a2v bfloat16] torch / jax ucmkd first_order = 4.50x (GPU bf16 target >= 4x)",
                     "[vit_l_to_s a2v bfloat16] ViT-S student ce step at 50.0 % of the matmul peak, FLOPs of the "
                     "float32 record (GPU bf16 target >= 40 %)",
                     "[vit_l_to_s v2a bfloat16] ucmkd unrolled (remat): XLA footprint 60.0 GiB (target: fits 80 GB "
                     "= 74.5 GiB)"]


def test_remat_cost_lines(tmp_path, capsys):
    """gpu_check.sh's last ViT line: a --vit-remat record against the same case without remat."""
    key = {"arch": "vit_l_to_s", "case": "ucmkd_unrolled", "direction": "v2a", "dtype": "bfloat16"}
    plain = dict(key, ms_per_step_median=100.0, compiled_mem_bytes=90 * 2**30, remat=False)
    remat = dict(key, ms_per_step_median=130.0, compiled_mem_bytes=45 * 2**30, remat=True)
    lone = dict(key, direction="a2v", ms_per_step_median=80.0, compiled_mem_bytes=2**30, remat=True)
    assert vit_cases.remat_cost([plain, remat, lone, dict(remat, ms_per_step_median=None)]) == [
        "[vit_l_to_s v2a bfloat16] ucmkd_unrolled remat: 130.0 ms/step vs 100.0 without (x1.30 time), XLA "
        "footprint 45.00 vs 90.00 GiB (target: fits 80 GB = 74.5 GiB)",
        "[vit_l_to_s a2v bfloat16] ucmkd_unrolled remat: 80.0 ms/step, XLA footprint 1.0 GiB (no record without "
        "remat to compare)"]
    import json
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([plain]))
    b.write_text(json.dumps([remat]))
    assert vit_cases.main(["--remat-cost", str(a), str(b)]) == 0
    assert "x1.30 time" in capsys.readouterr().out
    assert vit_cases.main([]) == 2


def test_tiny_vit_case_against_torch(tmp_path):
    pytest.importorskip("torch")
    try:
        from benchmarks import torch_vit
        torch_vit.import_timm()
    except ImportError as e:
        pytest.skip(f"needs the vit extra: pip install -e '.[vit]' ({e})")
    (r,) = step_bench.main(["--arch", "vit_b_to_s", "--small", "--batch", "4", "--methods", "ce",
                            "--directions", "v2a", "--vs-torch", "--steps", "1", "--warmup", "0", "--no-peak",
                            "--json", str(tmp_path / "b.json")])
    assert r["error"] is None, r["error"]
    assert r["arch"] == "vit_b_to_s" and r["torch_method"] == "ce"
    assert math.isfinite(r["loss"]) and math.isfinite(r["torch_loss"]) and r["speedup"] > 0
