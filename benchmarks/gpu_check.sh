#!/usr/bin/env bash
# The GPU check, as one command on a fresh H100/H200 (about 8 minutes):
#   1. build vdfast._C with its CUDA kernels; if that build fails, build it without CUDA
#      (VDFAST_NO_CUDA=1) so that the Triton kernels are still tested;
#   2. every CUDA and Triton kernel against the reference on the GPU, and the dispatch's
#      first-call checks (tests/test_ops_gpu.py, -m gpu), under a time limit that still writes the
#      report (timeout -s INT: pytest stops and prints its summary; --maxfail);
#   3. ONE short end-to-end pass: vdfast.distill DM, s2d-dm and MTT for a few iterations with
#      --profile on a synthetic 50-class 16x112² store (benchmarks/gpu_e2e.py);
#   4. the op benchmarks (eager reference and the vdfast backends; then torch.compile of the
#      reference with what is left of the budget).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default $OUT, else runs/gpu-check
#
# Made for a machine with a CUDA torch, Triton, nvcc and ninja already installed and no network
# (the lent H100/H200: its python3 holds torch; PyAV, DALI and diffusers are not needed here).
# Every step runs even when an earlier one failed, each under its own time limit; the exit status
# is non-zero when any step failed. OUT_DIR gets at most 8 files (what comes back from the lent
# machine): summary.md (the one report: environment, every step's outcome, the test summary, the
# end-to-end table and the ops tables), build.log, tests.log, tests.xml, e2e.log, bench.log,
# ops.json, ops.md. Scratch (the e2e runs, profiles, expert buffer) goes to $WORK.
#
# DRY_RUN=1 runs the same logic on a CPU machine (tests/test_gpu_check.py): no build, tiny e2e
# and benchmark sizes, the GPU tests collected (they skip without a GPU).
set -uo pipefail
OUT_DIR=${1:-${OUT:-runs/gpu-check}}
PY=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/vdfast-gpu-check.XXXXXX")}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT_DIR" "$WORK"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 VDFAST_PROGRESS=0
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ "$DRY_RUN" = 1 ]; then
  E2E_ARGS="--device cpu --classes 3 --frames 4 --size 32 --per-class 4 --iterations 3 --profile 1 --width 8 --depth 2"
  BENCH_ARGS="--smoke"
else
  E2E_ARGS=""
  BENCH_ARGS=${BENCH_ARGS:-}
fi
START=$(date +%s)
status=0
summary="$OUT_DIR/summary.md"
steps="$WORK/steps.md"
: > "$steps"

step() {  # step NAME LIMIT_S LOG COMMAND...: run with a time limit (SIGINT first, then KILL)
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$(date +%s)
  timeout -s INT -k 20 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && status=1
  local what="ok"
  [ $rc -ne 0 ] && what="FAILED"
  [ $rc -eq 124 ] && what="TIMED OUT"
  echo "| $name | $what (rc $rc) | $(( $(date +%s) - t0 )) s | $limit s |" | tee -a "$steps"
  return $rc
}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

{
  echo "# vdfast GPU check"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -n 2
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS DRY_RUN=$DRY_RUN git $(git rev-parse --short HEAD 2>/dev/null)"
  echo '```'
} > "$summary" 2>&1

# 1. the extension, with CUDA (no dependency is installed: they are on the machine or not needed);
#    if that fails, without CUDA (C++ kernels + Triton), so the Triton kernels are still tested
build="$OUT_DIR/build.log"
: > "$build"
if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: using the installed extension" >> "$build"
  build_kind="installed (dry run)"
elif step build 300 "$build" $PY -m pip install --no-build-isolation --no-deps --no-index -v -e . \
     && $PY -c "import vdfast._C as C; assert C.WITH_CUDA, 'vdfast._C was built without CUDA'" >> "$build" 2>&1; then
  build_kind="CUDA + C++"
else
  echo "=== the CUDA build failed: building without CUDA (Triton still tested) ===" >> "$build"
  step build-without-cuda 240 "$build" env VDFAST_NO_CUDA=1 \
    $PY -m pip install --no-build-isolation --no-deps --no-index -v -e .
  build_kind="C++ only (the CUDA build failed: see build.log)"
fi
$PY -m vdfast info >> "$build" 2>&1 || true

# 2. every CUDA and Triton kernel against the reference, on the GPU
tests="$OUT_DIR/tests.log"
: > "$tests"
step tests 240 "$tests" $PY -m pytest -q -m gpu -p no:cacheprovider --maxfail 25 \
  --junitxml "$OUT_DIR/tests.xml" tests/test_ops_gpu.py

# 3. one short end-to-end pass of DM, s2d-dm and MTT with --profile
e2e="$OUT_DIR/e2e.log"
: > "$e2e"
step e2e 150 "$e2e" $PY benchmarks/gpu_e2e.py "$WORK/e2e" $E2E_ARGS
for m in dm s2d-dm mtt; do
  if [ -f "$WORK/e2e/$m/profile/summary.md" ]; then
    { echo; echo "=== profile of $m ==="; cat "$WORK/e2e/$m/profile/summary.md"; } >> "$e2e"
  fi
done

# 4. timings: eager reference and the vdfast backends; then torch.compile of the reference with
#    what remains of the budget (each compile costs seconds to tens of seconds)
bench="$OUT_DIR/bench.log"
: > "$bench"
step bench 150 "$bench" \
  $PY benchmarks/harness_ops.py $BENCH_ARGS --no-compile --json "$OUT_DIR/ops.json" --markdown "$OUT_DIR/ops.md"
if [ "$(left)" -gt 60 ]; then
  step compile "$(left)" "$bench" \
    $PY benchmarks/harness_ops.py $BENCH_ARGS --providers reference,reference+compile \
      --json "$WORK/compile.json" --markdown "$WORK/compile.md"
  # one table: the compiled reference's rows added to the others
  $PY - "$OUT_DIR" "$WORK" <<'EOF' >> "$bench" 2>&1 || status=1
import json, os, sys
sys.path.insert(0, "benchmarks")
from harness_ops import markdown
d, w = sys.argv[1], sys.argv[2]
if os.path.exists(f"{w}/compile.json") and os.path.exists(f"{d}/ops.json"):
    rows = json.load(open(f"{d}/ops.json"))
    rows += [r for r in json.load(open(f"{w}/compile.json")) if r["provider"] == "reference+compile"]
    json.dump(rows, open(f"{d}/ops.json", "w"), indent=1)
    head = open(f"{d}/ops.md").read().split("\n\n")[0]
    ops = sorted({r["op"]: r["dtype"] for r in rows}.items())
    tables = [f"### {o} ({dt})\n\n" + markdown([r for r in rows if r["op"] == o]) for o, dt in ops]
    open(f"{d}/ops.md", "w").write("\n\n".join([head] + tables) + "\n")
    print(f"ops.md: {len(rows)} rows, torch.compile rows merged")
EOF
else
  echo "| compile | skipped: $(left) s left of the $BUDGET s budget | 0 s | - |" | tee -a "$steps"
fi

# the one report
{
  echo
  echo "Extension: $build_kind"
  echo
  echo "| step | outcome | time | limit |"
  echo "|---|---|---|---|"
  cat "$steps"
  echo
  echo "## GPU tests"
  echo
  echo '```'
  grep -E "passed|failed|error|skipped|FAILED|ERROR" "$tests" | tail -n 30
  echo '```'
  echo
  echo "## End to end"
  echo
  if [ -f "$WORK/e2e/e2e.md" ]; then cat "$WORK/e2e/e2e.md"; else echo "(no table: see e2e.log)"; fi
  grep -h -A2 "^=== profile of" "$e2e" 2>/dev/null | head -n 30 | sed 's/^/    /'
  echo
  echo "## Ops"
  echo
  if [ -f "$OUT_DIR/ops.md" ]; then cat "$OUT_DIR/ops.md"; else echo "(no table: see bench.log)"; fi
  echo
  echo "total $(( $(date +%s) - START )) s; status $status"
} >> "$summary"
echo "total $(( $(date +%s) - START )) s; status $status; report: $summary"
exit $status
