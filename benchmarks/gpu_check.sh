#!/usr/bin/env bash
# The fused ops' GPU check, as one command (issue #3): build vdfast._C with its CUDA kernels, run
# every CUDA and Triton kernel against the reference on the GPU (tests/test_ops_gpu.py -m gpu),
# then time every op against the eager reference (and torch.compile of it, while time is left).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default $OUT, else runs/gpu-check
#
# Made for a machine with a CUDA torch, Triton, nvcc and ninja already installed and no network
# (the lent H100/H200: its python3 holds torch; PyAV, DALI and diffusers are not needed here).
# Every step runs even when an earlier one failed, each under its own time limit, so that one run
# brings back as much as it can; the exit status is non-zero when any step failed. It writes at
# most 7 files: build.log, tests.log, tests.xml, bench.log, ops.json, ops.md (the tables that go
# into BENCHMARKS.md) and summary.txt.
set -uo pipefail
OUT_DIR=${1:-${OUT:-runs/gpu-check}}
PY=${PYTHON:-python3}
BENCH_ARGS=${BENCH_ARGS:-}  # e.g. --smoke for a dry run of this script on a CPU machine
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 VDFAST_PROGRESS=0
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
START=$(date +%s)
status=0
summary="$OUT_DIR/summary.txt"
: > "$summary"

step() {  # step NAME LIMIT_S LOG COMMAND...: run with a time limit, log, record the outcome
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && status=1
  echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$summary"
  return $rc
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__)"
  nvcc --version | tail -1
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS git $(git rev-parse --short HEAD 2>/dev/null)"
} >> "$summary" 2>&1

# 1. the extension, with CUDA (no dependency is installed: they are on the machine or not needed)
step build 300 "$OUT_DIR/build.log" \
  $PY -m pip install --no-build-isolation --no-deps --no-index -v -e .
step extension-has-cuda 60 "$OUT_DIR/extension.log" \
  $PY -c "import vdfast._C as C; assert C.WITH_CUDA, 'vdfast._C was built without CUDA'"
cat "$OUT_DIR/extension.log" >> "$OUT_DIR/build.log" && rm -f "$OUT_DIR/extension.log"

# 2. every CUDA and Triton kernel against the reference, on the GPU
step tests 240 "$OUT_DIR/tests.log" \
  $PY -m pytest -q -m gpu -p no:cacheprovider --junitxml "$OUT_DIR/tests.xml" tests/test_ops_gpu.py
tail -n 3 "$OUT_DIR/tests.log" >> "$summary"

# 3. timings: eager reference and the vdfast backends; then torch.compile of the reference with
# what remains of an 8-minute budget (each compile costs seconds to tens of seconds)
step bench 150 "$OUT_DIR/bench.log" \
  $PY benchmarks/harness.py $BENCH_ARGS --no-compile --json "$OUT_DIR/ops.json" --markdown "$OUT_DIR/ops.md"
left=$(( 480 - ($(date +%s) - START) ))
if [ $left -gt 60 ]; then
  step compile $left "$OUT_DIR/compile.log" \
    $PY benchmarks/harness.py $BENCH_ARGS --providers reference,reference+compile \
      --json "$OUT_DIR/compile.json" --markdown "$OUT_DIR/compile.md"
  # one table: the compiled reference's rows added to the others (at most 8 files come back)
  $PY - "$OUT_DIR" <<'EOF' >> "$summary" 2>&1 || status=1
import json, os, sys
sys.path.insert(0, "benchmarks")
from harness import markdown
d = sys.argv[1]
if os.path.exists(f"{d}/compile.json"):
    rows = json.load(open(f"{d}/ops.json"))
    rows += [r for r in json.load(open(f"{d}/compile.json")) if r["provider"] == "reference+compile"]
    json.dump(rows, open(f"{d}/ops.json", "w"), indent=1)
    head = open(f"{d}/ops.md").read().split("\n\n")[0]
    ops = sorted({r["op"]: r["dtype"] for r in rows}.items())
    tables = [f"### {o} ({dt})\n\n" + markdown([r for r in rows if r["op"] == o]) for o, dt in ops]
    open(f"{d}/ops.md", "w").write("\n\n".join([head] + tables) + "\n")
    print(f"ops.md: {len(rows)} rows, torch.compile rows merged")
for f in ("compile.json", "compile.md"):
    if os.path.exists(f"{d}/{f}"):
        os.remove(f"{d}/{f}")
EOF
  cat "$OUT_DIR/compile.log" >> "$OUT_DIR/bench.log" && rm -f "$OUT_DIR/compile.log"
else
  echo "compile: skipped, $left s left of the 480 s budget" | tee -a "$summary"
fi
echo "total $(( $(date +%s) - START )) s; status $status" | tee -a "$summary"
exit $status
