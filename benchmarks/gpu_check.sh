#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (shared/DEVICE.md, issue 4).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
#   SMALL=1 bash benchmarks/gpu_check.sh         # CPU-only rehearsal (small shapes)
#
# 1. installs the wheels the GPU image lacks (ott-jax, jaxopt, POT) from the carried .whl/ folder
#    into $SITE (default /tmp/site) and puts it and the repository on PYTHONPATH;
# 2. runs the GPU-marked tests (the files under tests/ that use the gpu marker; pytest exit 5, "no tests
#    collected", counts as a pass; without a GPU backend they are only collected);
# 3. runs step_bench --vs-torch at full CREMA-D shapes (batch 64, audio 257x1004, video 2x224x224,
#    ResNet-18 width 64) in bfloat16 and float32, cases in priority order, under a deadline of
#    $BENCH_SECONDS (default 240) seconds from the start of this phase: a case that would start later
#    is recorded as skipped (a case already running finishes: on an H200 each full-shape case took
#    under 30 s to compile, so give the run's timeout BENCH_SECONDS + about 60 s + the tests' time);
# 4. prints the table and the issue's target ratios last.
# JSON lands in ${OUT:-./gpu_out}/step_bench.json (rewritten after every case) and the logs beside it.
#
# Environment: OUT, SMALL=1, STEPS (default 10), WARMUP (3), BENCH_SECONDS (240),
#   METHODS (default "ucmkd,ce,teacher_fwd,feature_kd,ucmkd_unrolled,sumall": priority order),
#   DTYPES (default "bfloat16,float32"), BENCH_ARGS (extra step_bench arguments), SITE,
#   JAX_COMPILATION_CACHE_DIR (default /tmp/jax_cache),
#   PROFILE=1 (then PROFILE_METHODS, PROFILE_DTYPE, PROFILE_SECONDS: a traced run after the benchmark,
#   e.g. PROFILE_METHODS=ucmkd_fa_only_unrolled,fa_solve_unrolled to attribute the unrolled step's cost).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"
SITE="${SITE:-/tmp/site}"
SMALL="${SMALL:-0}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
BENCH_SECONDS="${BENCH_SECONDS:-240}"
METHODS="${METHODS:-ucmkd,ce,teacher_fwd,feature_kd,ucmkd_unrolled,sumall}"
DTYPES="${DTYPES:-bfloat16,float32}"
BENCH_ARGS="${BENCH_ARGS:-}"
mkdir -p "$OUT"
t_start=$(date +%s)
status=0
say() { echo "[gpu_check $(( $(date +%s) - t_start ))s] $*"; }

# ---------------------------------------------------------------- 1. wheels
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch shares the device in the same process
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.75}"
# A persistent compilation cache: the optional profile phase (a second process) then reuses the
# benchmark's executables instead of compiling them again (records' compile_s there are cache hits).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"
export POT_BACKEND_DISABLE_TENSORFLOW=1 POT_BACKEND_DISABLE_JAX=1 POT_BACKEND_DISABLE_CUPY=1
if python3 -c "import ott, jaxopt, ot" 2>/dev/null; then
  say "ott-jax, jaxopt and POT already importable: no wheels installed"
elif ls .whl/*.whl >/dev/null 2>&1; then
  say "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
  python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl || { say "wheel install FAILED"; status=1; }
else
  say "ott-jax/jaxopt/POT missing and no .whl/ folder carried: see shared/DEVICE.md"; status=1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import jax, sys
print("python", sys.version.split()[0], "| jax", jax.__version__, "| devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
except ImportError as e:
    print("torch missing:", e)
for name in ("ott", "jaxopt", "ot", "flax", "optax"):
    try:
        m = __import__(name); print(name, getattr(m, "__version__", "?"))
    except ImportError as e:
        print(name, "MISSING", e)
EOF

# ---------------------------------------------------------------- 2. GPU-marked tests
# Only the files that carry the gpu marker are collected: the data tests need the data extra
# (tensorflow, av), which the GPU image lacks by design.
gpu_files=$(grep -rlE "mark\.gpu" tests --include='*.py' | sort | tr '\n' ' ')
backend=$(python3 -c "import jax; print(jax.default_backend())" 2>/dev/null)
if [ -z "$gpu_files" ]; then
  say "no GPU-marked test files under tests/"
elif [ "$backend" != "gpu" ]; then
  say "backend is '$backend', not gpu: only collecting the GPU-marked tests ($gpu_files)"
  # shellcheck disable=SC2086
  python3 -m pytest -q --collect-only -m gpu -p no:cacheprovider $gpu_files > "$OUT/pytest_gpu.log" 2>&1
  rc=$?
  tail -n 2 "$OUT/pytest_gpu.log"
  if [ "$rc" -ne 0 ]; then say "collecting the GPU-marked tests FAILED (exit $rc)"; status=1; fi
else
  say "pytest -m gpu $gpu_files"
  # shellcheck disable=SC2086
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider $gpu_files > "$OUT/pytest_gpu.log" 2>&1
  rc=$?
  tail -n 3 "$OUT/pytest_gpu.log"
  if [ "$rc" -eq 5 ]; then
    say "pytest -m gpu: no GPU-marked tests collected (exit 5, counted as a pass)"
  elif [ "$rc" -ne 0 ]; then
    say "pytest -m gpu FAILED (exit $rc), log in $OUT/pytest_gpu.log"; status=1
  fi
fi

# ---------------------------------------------------------------- 3. step benchmark
size_args=()
if [ "$SMALL" = "1" ]; then size_args=(--small); fi
deadline=$(( $(date +%s) + BENCH_SECONDS ))
say "step_bench ${size_args[*]} --dtype $DTYPES --methods $METHODS, deadline in ${BENCH_SECONDS}s"
# shellcheck disable=SC2086
python3 benchmarks/step_bench.py "${size_args[@]}" --vs-torch --dtype "$DTYPES" --methods "$METHODS" \
  --steps "$STEPS" --warmup "$WARMUP" --deadline "$deadline" --json "$OUT/step_bench.json" $BENCH_ARGS \
  > "$OUT/step_bench.log" 2>&1
rc=$?
grep -v -i "onednn\|absl::InitializeLog" "$OUT/step_bench.log" | grep "^  \|^#\|^!" | head -n 60
if [ "$rc" -ne 0 ]; then say "step_bench exit $rc (a case failed or the run died), log in $OUT/step_bench.log"; status=1; fi

# ---------------------------------------------------------------- 3b. optional profile
# PROFILE=1: trace a few steps of $PROFILE_METHODS (default ucmkd,ucmkd_unrolled) in bfloat16, JAX only,
# and print where the device time goes, by kernel and by category (see benchmarks/profile_summary.py).
if [ "${PROFILE:-0}" = "1" ]; then
  pdeadline=$(( $(date +%s) + ${PROFILE_SECONDS:-120} ))
  say "profiling ${PROFILE_METHODS:-ucmkd,ucmkd_unrolled} (deadline in ${PROFILE_SECONDS:-120}s)"
  # shellcheck disable=SC2086
  python3 benchmarks/step_bench.py "${size_args[@]}" --dtype "${PROFILE_DTYPE:-bfloat16}" \
    --methods "${PROFILE_METHODS:-ucmkd,ucmkd_unrolled}" --steps 5 --warmup 2 --no-peak --profile "$OUT/prof" \
    --deadline "$pdeadline" --json "$OUT/profile.json" $BENCH_ARGS > "$OUT/profile.log" 2>&1 \
    || { say "profile run failed, log in $OUT/profile.log"; status=1; }
  grep -A13 "^## profile" "$OUT/profile.log" | grep -v "^--$" | head -n 120
fi

# ---------------------------------------------------------------- 4. table last
say "done in $(( $(date +%s) - t_start ))s, status $status; table:"
if [ -s "$OUT/step_bench.json" ]; then
  python3 benchmarks/step_bench.py --report "$OUT/step_bench.json" | tee "$OUT/table.txt"
else
  echo "no step_bench records were written"; status=1
fi
exit "$status"
