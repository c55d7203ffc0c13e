"""One DM iteration with the network bank (``--dm-bank``) at ``miniucf-ipc1`` (50 classes, 16x112²,
ConvNet3D w64 d3), for machines where the standard iteration is too slow to time beside it (a CPU:
minutes per iteration). The bank holds 1 network over 1 clip per class (an iteration's time does
not depend on K or M); 3 timed iterations after 1 warm-up, and the build time of that network, whose
per-clip cost x 64 clips x 50 classes is the real side of one standard iteration.

    OMP_NUM_THREADS=1 python benchmarks/dm_bank_miniucf.py [--methods dm,s2d-dm]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_dm import random_store  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

from vdfast.config import resolve  # noqa: E402
from vdfast.methods import get  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="dm")
    p.add_argument("--workload", default="miniucf-ipc1")
    a = p.parse_args(argv)
    w = WORKLOADS[a.workload]
    store = random_store(w["nc"], 2, w["frames"], w["size"])
    for method in a.methods.split(","):
        cfg = resolve("published", method=method, ipc=w["ipc"], batch_real=1,
                      net={"width": w["width"], "depth": w["depth"]}, s2d={"static_iterations": 0},
                      dm_bank=1, dm_bank_clips=1)
        m = get(method)
        g = torch.Generator().manual_seed(0)
        syn = m.init(store, cfg, "cpu", g)
        st = m.setup(syn, store, cfg, "cpu")
        m.step(syn, st, g)
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            m.step(syn, st, g)
            ts.append(time.perf_counter() - t)
        per_clip = st.bank.build_seconds / w["nc"]
        real_side = per_clip * w["nc"] * w["batch_real"]
        print(f"{a.workload} {method}: bank iteration median {statistics.median(ts):.2f} s "
              f"({', '.join(f'{x:.2f}' for x in ts)}); bank build {st.bank.build_seconds:.2f} s "
              f"for 1 network over {w['nc']} clips = {per_clip:.3f} s/clip, so one standard "
              f"iteration's real side ({w['nc']} x {w['batch_real']} clips) ~ {real_side:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
