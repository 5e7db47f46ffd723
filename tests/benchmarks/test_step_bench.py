"""Smoke tests of benchmarks/step_bench.py and benchmarks/torch_reference.py, so that the benchmark
scripts cannot rot. Tiny shapes: each test is a few compiles, well under a minute on 2 cores."""
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import step_bench  # noqa: E402

# --small, shrunk further (and ResNet-10 for ResNet-18): the point is the plumbing, not the numbers.
TINY = ["--small", "--arch", "resnet10", "--batch", "4", "--width", "8", "--audio-hw", "32x64",
        "--video-thw", "2x32x32", "--steps", "2", "--warmup", "1", "--no-peak"]
TINY_SHAPES = dict(batch=4, audio_hw=(32, 64), video_thw=(2, 32, 32), width=8)


def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("torch is not installed: the benchmark extra is needed, pip install -e '.[bench]'")


def _require_pot():
    try:
        import ot  # noqa: F401
    except ImportError:
        pytest.fail("POT is not installed: the benchmark extra is needed, pip install -e '.[bench]'")


def test_step_bench_small_writes_records(tmp_path, capsys):
    out = tmp_path / "bench.json"
    records = step_bench.main(TINY + ["--methods", "ce,ucmkd", "--directions", "a2v", "--json", str(out)])
    data = json.loads(out.read_text())
    assert [r["case"] for r in data] == ["ce", "ucmkd"] == [r["case"] for r in records]
    for r in data:
        assert r["error"] is None, r["error"]
        assert r["skipped"] is None
        for key in step_bench.REQUIRED_KEYS:
            assert key in r, key
        assert r["direction"] == "a2v" and r["dtype"] == "float32" and r["batch"] == 4
        assert r["arch"] == "resnet10"
        assert r["hypergrad"] == {"ce": None, "ucmkd": "first_order"}[r["case"]]
        assert r["device"].startswith(r["backend"] + ":")
        for key in ("compile_s", "ms_per_step_median", "ms_per_step_p10", "ms_per_step_p90",
                    "samples_per_s", "flops_per_step", "flops_per_s", "compiled_mem_bytes"):
            assert _positive_finite(r[key]), (key, r[key])
        assert r["ms_per_step_p10"] <= r["ms_per_step_median"] <= r["ms_per_step_p90"]
        assert math.isclose(r["samples_per_s"], 4 / (r["ms_per_step_median"] / 1e3))
        assert math.isfinite(r["loss"])
        assert "torch_ms_per_step_median" not in r
    # The bilevel step does strictly more work than CE on the same shapes.
    assert data[1]["flops_per_step"] > data[0]["flops_per_step"]
    table = capsys.readouterr().out
    assert "ms/step" in table and "ucmkd" in table
    # --report re-reads the JSON.
    assert len(step_bench.main(["--report", str(out)])) == 2


@pytest.mark.parametrize("interleave", ["on", "off"])
def test_step_bench_vs_torch_record(tmp_path, interleave):
    _require_torch()
    out = tmp_path / "bench.json"
    (r,) = step_bench.main(TINY + ["--methods", "ce", "--directions", "v2a", "--vs-torch", "--interleave", interleave,
                                   "--json", str(out)])
    assert r["error"] is None, r["error"]
    assert r["interleaved"] is (interleave == "on")
    assert json.loads(out.read_text())[0]["speedup"] == r["speedup"]
    for key in ("torch_ms_per_step_median", "torch_samples_per_s", "speedup"):
        assert _positive_finite(r[key]), (key, r[key])
    assert math.isclose(r["speedup"], r["torch_ms_per_step_median"] / r["ms_per_step_median"])
    assert r["torch_method"] == "ce" and math.isfinite(r["torch_loss"])


def test_step_bench_baseline_with_modules_of_its_own():
    """norm has a module of its own (init_extra) and an optimizer hook: the bench builds its state
    as the training loop does (the cheapest such baseline to compile)."""
    assert step_bench.parse_args(["--methods", "ce,baselines"]).cases == ["ce", *step_bench.BASELINE_CASES]
    (r,) = step_bench.main(TINY + ["--methods", "norm", "--directions", "v2a", "--steps", "1", "--warmup", "0"])
    assert r["error"] is None, r["error"]
    assert _positive_finite(r["ms_per_step_median"]) and math.isfinite(r["loss"])


def test_time_budget_skips_and_argument_errors(tmp_path):
    records = step_bench.main(TINY + ["--methods", "ce", "--time-budget", "-1"])
    assert records[0]["skipped"] and records[0]["ms_per_step_median"] is None
    with pytest.raises(SystemExit):
        step_bench.parse_args(["--methods", "ce,nope"])
    with pytest.raises(SystemExit):
        step_bench.parse_args(["--dtype", "float16"])


def test_helpers():
    assert step_bench.flops_of({"flops": 3.0}) == 3.0
    assert step_bench.flops_of([{"flops": 1.0}, {"flops": 2.0}]) == 3.0
    assert step_bench.flops_of(None) is None and step_bench.flops_of([{}]) is None
    assert step_bench._percentile([1, 2, 3, 4, 5], 50) == 3
    assert step_bench._percentile([1.0, 3.0], 10) == pytest.approx(1.2)
    # The CPU-lowering fallback (for a GPU without a lowered cost analysis) counts a matmul as
    # 2 n^3 FLOPs: an independent closed form, not the direct path's own number.
    import jax
    import jax.numpy as jnp

    x = jnp.ones((32, 32))
    assert step_bench.cpu_lowered_flops(jax.jit(lambda a, b: a @ b), (x, x)) == 2 * 32 ** 3
    assert step_bench.cpu_lowered_flops(lambda a: a, (x,)) is None  # not a jitted function


def test_torch_reference_ce_step():
    _require_torch()
    from benchmarks import torch_reference as tr

    out = tr.run_case("ce", "a2v", steps=1, warmup=0, **TINY_SHAPES)
    assert math.isfinite(out["loss"]) and out["loss"] > 0
    assert len(out["times_s"]) == 1 and out["times_s"][0] > 0


def test_torch_reference_ucmkd_step_updates_student():
    _require_torch()
    _require_pot()
    import torch

    from benchmarks import torch_reference as tr

    torch.manual_seed(0)
    student = tr.build_model("audio", 3, width=4)
    teacher = tr.build_model("video", 3, width=4)
    batch = tr.make_batch("audio", "video", 6, (32, 32), (2, 32, 32), 3, "cpu")
    before = [p.detach().clone() for p in student.parameters()]
    step = tr.make_step("ucmkd", student, teacher)
    loss = step(batch)
    assert math.isfinite(float(loss))
    # The outer SGD step moved the original student, and it took the copy's BatchNorm statistics.
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    bn = student.bn1
    assert int(bn.num_batches_tracked) == 3  # FA, LA and outer forward passes of the copy
    assert float(bn.running_mean.abs().sum()) > 0
    for method in ("feature_kd", "sumall", "vanilla_kd", "teacher_fwd"):
        assert math.isfinite(float(tr.make_step(method, student, teacher)(batch)))


def test_step_bench_script_entry_point(tmp_path):
    """As the CLI runs it (a fresh process, so --threads can size XLA's pools), exit status 0."""
    import subprocess

    _require_torch()
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_bench.py"), *TINY, "--methods", "teacher_fwd",
           "--directions", "a2v", "--threads", "1", "--vs-torch", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "speedup" in proc.stdout and "1 compute thread" in proc.stdout
    (r,) = json.loads(out.read_text())
    assert r["threads"] == 1 and r["error"] is None and _positive_finite(r["speedup"])


def test_step_bench_fa_solve_cases_with_profile(tmp_path):
    records = step_bench.main(TINY + ["--methods", "fa_solve,fa_solve_unrolled", "--directions", "a2v",
                                      "--profile", str(tmp_path / "prof"), "--profile-steps", "2", "--keep-traces"])
    assert [r["hypergrad"] for r in records] == ["first_order", "unrolled"]
    for r in records:
        assert r["error"] is None, r["error"]
        assert _positive_finite(r["ms_per_step_median"]) and math.isfinite(r["loss"])
        prof = r["profile"]
        assert prof["source"] in ("host", "device") and prof["ms_per_step"] > 0 and prof["top"]
        assert Path(r["profile_trace"]).is_file()
