"""One DM iteration: vdfast against the reference-style loop, same sizes, same run, as a ratio.

    python benchmarks/step_dm.py --smoke                 # tiny, CI
    python benchmarks/step_dm.py --workloads builtin_ipc1,k400like_ipc1 --json runs/dm_step.json

Workloads are stores of random uint8 clips shaped like the named dataset (the time of a DM step
does not depend on the pixel values). Peak memory: CUDA allocator peak on a GPU; on a CPU, the growth
of the process's peak RSS is not attributable per provider and is reported as null.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compare_steps, step_main  # noqa: E402
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
    def run_all(workloads, device, repeats, warmup):
        return [r for name, w in workloads.items() for r in run(name, w, device, repeats, warmup)]

    return step_main(__doc__, WORKLOADS, SMOKE, run_all, "DM iteration", argv=argv)


if __name__ == "__main__":
    main()
