"""One DM iteration: vdfast against the reference-style loop, same sizes, same run, as a ratio.

    python benchmarks/step_dm.py --smoke                 # tiny, CI
    python benchmarks/step_dm.py --workloads builtin_ipc1,k400like_ipc1 --json runs/dm_step.json

Workloads are stores of random uint8 clips shaped like the named dataset (the time of a DM step
does not depend on the pixel values). Peak memory: CUDA allocator peak on a GPU; on a CPU, the growth
of the process's peak RSS is not attributable per provider and is reported as null.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compare_steps, device_name  # noqa: E402
from reference_loops import ReferenceDM  # noqa: E402

from vdfast.config import resolve  # noqa: E402
from vdfast.data.store import ClipStore  # noqa: E402
from vdfast.methods import get  # noqa: E402

WORKLOADS = {
    # the embedded dataset's shape: 12 classes, 8x32², ConvNet3D width 32 depth 2, 32 real / class
    "builtin_ipc1": dict(nc=12, per_class=60, frames=8, size=32, width=32, depth=2, batch_real=32, ipc=1),
    # Kinetics/SSv2-style clips (8x64², the published ConvNet3D) with 50 classes
    "k400like50_ipc1": dict(nc=50, per_class=24, frames=8, size=64, width=64, depth=3, batch_real=16, ipc=1),
    # MiniUCF: 50 classes, 16x112², 64 real clips per class (GPU-sized)
    "miniucf_ipc1": dict(nc=50, per_class=80, frames=16, size=112, width=64, depth=3, batch_real=64, ipc=1),
}
SMOKE = {"smoke_ipc1": dict(nc=6, per_class=8, frames=4, size=32, width=8, depth=2, batch_real=4, ipc=1)}


def random_store(nc, per_class, frames, size, seed=0) -> ClipStore:
    rng = np.random.default_rng(seed)
    arrays = {s: [rng.integers(0, 256, (per_class if s == "train" else 1, frames, size, size, 3),
                               dtype=np.uint8) for _ in range(nc)] for s in ("train", "test")}
    return ClipStore([f"c{i}" for i in range(nc)], arrays, frames, size, name="random")


def run(name, w, device, repeats, warmup):
    store = random_store(w["nc"], w["per_class"], w["frames"], w["size"])
    cfg = resolve("published", method="dm", ipc=w["ipc"], batch_real=w["batch_real"],
                  net={"width": w["width"], "depth": w["depth"]})
    m = get("dm")
    gen = torch.Generator(device=device).manual_seed(0)
    syn = m.init(store, cfg, device, gen)
    state = m.setup(syn, store, cfg, device)
    ref = ReferenceDM(store, syn.data, syn.labels, cfg.batch_real, cfg.lr_img, cfg.momentum,
                      w["width"], w["depth"], device)
    providers = (("reference-style loop", ref.step), ("vdfast", lambda: m.step(syn, state, gen)))
    return compare_steps(name, "dm", providers, device, repeats, warmup, w)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--workloads", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
    workloads = SMOKE if a.smoke else WORKLOADS
    if a.workloads:
        workloads = {k: v for k, v in {**WORKLOADS, **SMOKE}.items() if k in a.workloads.split(",")}
    repeats = a.repeats or (3 if a.smoke else 10)
    rows = []
    for name, w in workloads.items():
        rows += run(name, w, device, repeats, warmup=1 if a.smoke else 2)
    print(f"DM iteration on {device_name(device)}\n")
    print("| workload | provider | median ms | p20-p80 ms | peak MiB | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        print(f"| {r['workload']} | {r['provider']} | {r['median_ms']:.1f} | "
              f"{r['p20_ms']:.1f}-{r['p80_ms']:.1f} | {peak} | {r['speedup_vs_reference']:.2f}x |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
