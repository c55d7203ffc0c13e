#!/usr/bin/env bash
# The GPU check, as one command on a fresh H100/H200 (estimated about 5 minutes on 16 cores; a hard
# deadline of 540 s inside the lent machine's 600 s per command):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default $OUT, else runs/gpu-check
#
# Steps, each its own process with its own time limit, summary.md appended after each (so a kill
# at any moment leaves a readable report): environment; the build at three levels (CUDA, C++ only
# with VDFAST_NO_CUDA=1, no extension with VDFAST_NO_EXT=1); `vdfast info` with
# CUDA_LAUNCH_BLOCKING=1; tests/test_ops_gpu.py one pytest process per (op, backend) in parallel;
# benchmarks/gpu_e2e.py one process per method; the op benchmarks at the published workloads, one
# process per op. The steps are in benchmarks/gpu_check.py (standard library only); docs/gpu_check.md
# describes the report and the time estimate.
#
# Made for a machine with a CUDA torch, Triton, nvcc and ninja already installed and no network
# (the lent H100/H200: its python3 holds torch). Nothing is installed but vdfast itself.
#
#   bash benchmarks/gpu_check.sh OUT --rehearse [--faults build-cuda,kernel-fault:dm_loss/triton,hang:e2e:mtt]
#
# runs the same control flow on a CPU machine, with failures injected (tests/test_gpu_check.py).
# Options: python3 benchmarks/gpu_check.py --help. PYTHON picks the interpreter (default python3).
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
exec "$PY" benchmarks/gpu_check.py --python "$PY" "$@"
