#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (docs/gpu_check.md, issue 4).
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
# 3c. VIT=1 (issue 14, Tables 8 and 10): step_bench --arch vit_l_to_s / vit_b_to_s --vs-torch at the
#    release's shapes (batch 32, spectrograms 257x1004 resized to 256x1024, 2 frames of 224x224
#    averaged in pixel space; benchmarks/vit_cases.py), the runs of $VIT_RUNS in priority order under
#    one deadline of $VIT_SECONDS (default 300) from the start of this phase: ViT-L first-order UCMKD
#    and ce in bf16 (the >= 4x and >= 40 %-of-peak targets), the ViT-L unrolled step without and with
#    remat (fits 80 GB? the remat cost), ce in fp32 (the FLOP count the bf16 cuDNN attention hides),
#    then ViT-B and the rest. JSON per run in $OUT/vit_<n>_<arch>[_remat].json, tables after it.
#    The issue-14 GPU check alone: RESNET=0 VIT=1 bash benchmarks/gpu_check.sh (about 7 minutes);
#    its CPU rehearsal: SMALL=1 RESNET=0 VIT=1 VIT_SECONDS=120 STEPS=3 WARMUP=1 bash benchmarks/gpu_check.sh.
# 3d. PERF2=1 (issue 16, the stem and max-pool variants and the whole epoch), in $PERF2_DTYPE (bfloat16):
#    op_bench of the stem convolution and the max-pool alone, every variant, JAX only (timeout
#    $OPS_SECONDS, default 60); step_bench of $VARIANT_METHODS (default ucmkd,ce) with each STEM:POOL
#    pair of $VARIANTS (default "space_to_depth_pad8:masked conv_pad8:masked conv:masked"), JAX only,
#    under one deadline of $VARIANT_SECONDS (default 120; the plain ops, which "auto" means on a GPU,
#    and torch come from phase 3 of the same run); then epoch_bench (shards of $EPOCH_CLIPS synthetic
#    clips, default 768, at full CREMA-D sizes -> ShardStream -> the compiled ucmkd step, 2 epochs;
#    timeout $EPOCH_SECONDS, default 150) where tensorflow and tensorflow-datasets import (the lent
#    GPU image has neither, docs/gpu_check.md: then it says so and skips). The issue-16 GPU check:
#    METHODS=ucmkd,ce,teacher_fwd DTYPES=bfloat16 BENCH_SECONDS=150 PERF2=1 bash benchmarks/gpu_check.sh
#    (budgets: wheels and tests about 100 s, then 150 + 60 + 120 s plus a case overrunning each
#    deadline: about 8 minutes where the epoch phase is skipped, EPOCH_SECONDS more where it runs;
#    give the run's timeout 600 s); its CPU rehearsal:
#    SMALL=1 RESNET=0 PERF2=1 PERF2_DTYPE=float32 OPS_SECONDS=150 VARIANTS=space_to_depth_fwd:masked
#    VARIANT_METHODS=ce VARIANT_SECONDS=30 STEPS=2 WARMUP=1 EPOCH_CLIPS=48 EPOCH_SECONDS=400 bash benchmarks/gpu_check.sh
# 4. prints the table and the issue's target ratios last.
# JSON lands in ${OUT:-./gpu_out}/step_bench.json (rewritten after every case) and the logs beside it.
#
# Environment: OUT, SMALL=1, STEPS (default 10), WARMUP (3), BENCH_SECONDS (240),
#   METHODS (default "ucmkd,ce,teacher_fwd,feature_kd,ucmkd_unrolled,sumall": priority order),
#   DTYPES (default "bfloat16,float32"), BENCH_ARGS (extra step_bench arguments), SITE,
#   RESNET=0 (skip phase 3), VIT=1 (phase 3c), VIT_SECONDS, VIT_DIRECTIONS (default "a2v,v2a"),
#   VIT_RUNS (space-separated ARCH:CASES:DTYPES[:FLAGS], FLAGS a comma list of remat, notorch),
#   PERF2=1 (phase 3d; then PERF2_DTYPE, OPS_SECONDS, VARIANTS, VARIANT_METHODS, VARIANT_SECONDS,
#   EPOCH_CLIPS, EPOCH_SECONDS),
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
RESNET="${RESNET:-1}"
VIT="${VIT:-0}"
VIT_SECONDS="${VIT_SECONDS:-300}"
VIT_DIRECTIONS="${VIT_DIRECTIONS:-a2v,v2a}"
# one (arch, case, dtype) per run at most, so that the runs of an arch report together
VIT_RUNS="${VIT_RUNS:-vit_l_to_s:ucmkd,ce:bfloat16 vit_l_to_s:ucmkd_unrolled:bfloat16 \
vit_l_to_s:ucmkd_unrolled:bfloat16:remat,notorch vit_l_to_s:ce:float32 vit_b_to_s:ucmkd,ce,ucmkd_unrolled:bfloat16 \
vit_l_to_s:feature_kd:bfloat16 vit_b_to_s:feature_kd:bfloat16 vit_l_to_s:ucmkd,feature_kd,ucmkd_unrolled:float32 \
vit_b_to_s:ce,feature_kd,ucmkd,ucmkd_unrolled:float32}"
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
  say "ott-jax/jaxopt/POT missing and no .whl/ folder carried: see docs/gpu_check.md"; status=1
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
if [ "$RESNET" = "1" ]; then
deadline=$(( $(date +%s) + BENCH_SECONDS ))
say "step_bench ${size_args[*]} --dtype $DTYPES --methods $METHODS, deadline in ${BENCH_SECONDS}s"
# shellcheck disable=SC2086
python3 benchmarks/step_bench.py "${size_args[@]}" --vs-torch --dtype "$DTYPES" --methods "$METHODS" \
  --steps "$STEPS" --warmup "$WARMUP" --deadline "$deadline" --json "$OUT/step_bench.json" $BENCH_ARGS \
  > "$OUT/step_bench.log" 2>&1
rc=$?
grep -v -i "onednn\|absl::InitializeLog" "$OUT/step_bench.log" | grep "^  \|^#\|^!" | head -n 60
if [ "$rc" -ne 0 ]; then say "step_bench exit $rc (a case failed or the run died), log in $OUT/step_bench.log"; status=1; fi
fi  # RESNET

# ---------------------------------------------------------------- 3c. ViT cases (issue 14)
# The runs of $VIT_RUNS in order under one deadline: a case that would start after it is recorded
# as skipped, so a short budget keeps the first (most wanted) cases.
vit_files=()
if [ "$VIT" = "1" ]; then
  vdeadline=$(( $(date +%s) + VIT_SECONDS ))
  say "ViT runs (Tables 8 and 10) ${size_args[*]}, directions $VIT_DIRECTIONS, deadline in ${VIT_SECONDS}s"
  n=0
  for spec in $VIT_RUNS; do
    n=$((n + 1))
    IFS=: read -r arch cases dtypes flags <<< "$spec"
    extra=(--vs-torch); tag=""
    case ",$flags," in *,remat,*) extra+=(--vit-remat); tag="_remat";; esac
    case ",$flags," in *,notorch,*) extra=("${extra[@]/--vs-torch}");; esac
    if [ "$(date +%s)" -ge "$vdeadline" ]; then say "ViT run $n ($spec): deadline passed, not started"; continue; fi
    f="$OUT/vit_${n}_${arch}${tag}.json"
    say "ViT run $n: $arch $cases $dtypes ${flags:-}"
    # shellcheck disable=SC2086
    python3 benchmarks/step_bench.py "${size_args[@]}" --arch "$arch" ${extra[*]} --dtype "$dtypes" \
      --methods "$cases" --directions "$VIT_DIRECTIONS" --steps "$STEPS" --warmup "$WARMUP" \
      --deadline "$vdeadline" --json "$f" $BENCH_ARGS > "${f%.json}.log" 2>&1
    rc=$?
    grep -v -i "onednn\|absl::InitializeLog" "${f%.json}.log" | grep "^  \|^!" | head -n 20
    if [ "$rc" -ne 0 ]; then say "ViT run $n exit $rc (a case failed or the run died), log in ${f%.json}.log"; status=1; fi
    if [ -s "$f" ]; then vit_files+=("$f"); fi
  done
fi

# ---------------------------------------------------------------- 3d. stem/pool variants, the epoch (issue 16)
if [ "${PERF2:-0}" = "1" ]; then
  p2_dtype="${PERF2_DTYPE:-bfloat16}"
  say "op_bench: stem convolution and max-pool variants ${size_args[*]} $p2_dtype, JAX only (timeout ${OPS_SECONDS:-60}s)"
  timeout "${OPS_SECONDS:-60}" python3 benchmarks/op_bench.py "${size_args[@]}" --dtype "$p2_dtype" --no-torch \
    --ops stem_conv,max_pool --stem-impls conv,conv_pad8,space_to_depth,space_to_depth_pad8,space_to_depth_fwd \
    --pool-impls reduce_window,masked --reps 20 --json "$OUT/op_bench_variants.json" > "$OUT/op_bench_variants.log" 2>&1
  rc=$?
  grep "^  audio\|^  video" "$OUT/op_bench_variants.log"
  if [ "$rc" -ne 0 ]; then say "op_bench exit $rc (124: timed out), log in $OUT/op_bench_variants.log"; status=1; fi

  vdl=$(( $(date +%s) + ${VARIANT_SECONDS:-120} ))
  for v in ${VARIANTS:-space_to_depth_pad8:masked conv_pad8:masked conv:masked}; do
    stem="${v%%:*}"; pool="${v##*:}"
    if [ "$(date +%s)" -ge "$vdl" ]; then say "variant $v: deadline passed, not started"; continue; fi
    f="$OUT/step_bench_${stem}_${pool}.json"
    say "step_bench ${size_args[*]} --stem-impl $stem --pool-impl $pool --methods ${VARIANT_METHODS:-ucmkd,ce} $p2_dtype"
    # shellcheck disable=SC2086
    python3 benchmarks/step_bench.py "${size_args[@]}" --dtype "$p2_dtype" --methods "${VARIANT_METHODS:-ucmkd,ce}" \
      --stem-impl "$stem" --pool-impl "$pool" --steps "$STEPS" --warmup "$WARMUP" --deadline "$vdl" --json "$f" \
      $BENCH_ARGS > "${f%.json}.log" 2>&1
    rc=$?
    grep -v -i "onednn\|absl::InitializeLog" "${f%.json}.log" | grep "^  \|^!" | head -n 20
    if [ "$rc" -ne 0 ]; then say "variant $v exit $rc, log in ${f%.json}.log"; status=1; fi
  done

  if python3 -c "import tensorflow, tensorflow_datasets, PIL" > /dev/null 2>&1; then
    if [ "$SMALL" = "1" ]; then eclips="${EPOCH_CLIPS:-96}"; else eclips="${EPOCH_CLIPS:-768}"; fi
    say "epoch_bench ${size_args[*]} ucmkd $p2_dtype, $eclips clips (timeout ${EPOCH_SECONDS:-150}s)"
    timeout "${EPOCH_SECONDS:-150}" python3 benchmarks/epoch_bench.py "${size_args[@]}" --dtype "$p2_dtype" \
      --methods ucmkd --clips "$eclips" --epochs 2 --read-epochs 1 --json "$OUT/epoch_bench.json" \
      > "$OUT/epoch_bench.log" 2>&1
    rc=$?
    grep "^|\|^  \|^# wrote" "$OUT/epoch_bench.log"
    if [ "$rc" -ne 0 ]; then say "epoch_bench exit $rc (124: timed out), log in $OUT/epoch_bench.log"; status=1; fi
  else
    say "epoch_bench skipped: tensorflow / tensorflow-datasets / Pillow do not import here (the GPU image lacks them, docs/gpu_check.md)"
  fi
fi

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
if [ "$RESNET" != "1" ]; then
  :
elif [ -s "$OUT/step_bench.json" ]; then
  python3 benchmarks/step_bench.py --report "$OUT/step_bench.json" | tee "$OUT/table.txt"
else
  echo "no step_bench records were written"; status=1
fi
if [ "$VIT" = "1" ]; then
  # one table per arch (its runs together: their cases, dtypes and targets), the remat runs apart
  for arch in vit_l_to_s vit_b_to_s; do
    for tag in "" _remat; do
      group=()
      for f in "${vit_files[@]}"; do
        case "$f" in *_"${arch}${tag}".json) group+=("$f");; esac
      done
      [ "${#group[@]}" -eq 0 ] && continue
      echo; echo "## $arch${tag:+ (ViT blocks under jax.checkpoint)}: ${group[*]}"
      python3 benchmarks/step_bench.py --report "${group[@]}" | tee -a "$OUT/table_vit.txt"
    done
  done
  if [ "${#vit_files[@]}" -gt 0 ]; then
    python3 benchmarks/vit_cases.py --remat-cost "${vit_files[@]}" | tee -a "$OUT/table_vit.txt"
  else
    echo "no ViT records were written"; status=1
  fi
fi
exit "$status"
