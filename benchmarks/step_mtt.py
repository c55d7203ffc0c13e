"""One MTT iteration: vdfast against the reference-style loop, same sizes, same run, as a ratio.

    python benchmarks/step_mtt.py --smoke                 # tiny, CI
    python benchmarks/step_mtt.py --workloads builtin_ipc1,k400like50_ipc1 --json runs/mtt_step.json

Workloads are stores of random uint8 clips shaped like the named dataset and expert buffers of
random trajectories (the time of an MTT iteration does not depend on the values). Both providers
unroll ``syn_steps`` second-order student steps on the whole synset and update the pixels and the
learnable step size. Peak memory: CUDA allocator peak on a GPU (null on a CPU). "buffer MiB" is the
host memory the buffer occupies: the reference holds every expert and epoch, vdfast two rows.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import compare_steps, step_main  # noqa: E402
from reference_mtt import ReferenceMTT  # noqa: E402

from vdfast.config import resolve  # noqa: E402
from vdfast.data.store import ClipStore  # noqa: E402
from vdfast.methods import experts as ex  # noqa: E402
from vdfast.methods import get  # noqa: E402
from vdfast.methods.base import reinit_  # noqa: E402
from vdfast.models import count_params  # noqa: E402

WORKLOADS = {
    # the embedded dataset's shape: 12 classes, 8x32², ConvNet3D width 32 depth 2, 10 unrolled steps
    "builtin_ipc1": dict(nc=12, frames=8, size=32, width=32, depth=2, ipc=1, syn_steps=10),
    # Kinetics/SSv2-style clips (8x64², the published ConvNet3D), 50 classes, published unroll
    "k400like50_ipc1": dict(nc=50, frames=8, size=64, width=64, depth=3, ipc=1, syn_steps=10),
    # MiniUCF: 50 classes, 16x112², the published net and unroll (GPU-sized)
    "miniucf_ipc1": dict(nc=50, frames=16, size=112, width=64, depth=3, ipc=1, syn_steps=10),
}
SMOKE = {"smoke_ipc1": dict(nc=6, frames=4, size=16, width=4, depth=2, ipc=1, syn_steps=2)}
EXPERTS, EPOCHS, MAX_START = 2, 3, 2


def random_store(nc, frames, size, per_class, seed=0) -> ClipStore:
    rng = np.random.default_rng(seed)
    arrays = {s: [rng.integers(0, 256, (per_class, frames, size, size, 3), dtype=np.uint8)
                  for _ in range(nc)] for s in ("train", "test")}
    return ClipStore([f"c{i}" for i in range(nc)], arrays, frames, size, name="random")


def fake_buffer(store, cfg, path) -> list:
    """Write ``EXPERTS`` random trajectories as a vdfast buffer at ``path``; return them as the
    reference's in-memory buffer (experts x epochs x per-layer tensors)."""
    m = cfg.mtt
    net_h = ex.net_header(store, cfg.net)
    net = ex.build_net(net_h)
    layout = ex.param_layout(net)
    p = count_params(net)
    g = torch.Generator().manual_seed(0)
    training = {"epochs": m.buffer_epochs, "lr": m.buffer_lr, "batch": m.buffer_batch,
                "momentum": m.buffer_momentum, "weight_decay": 0.0, "seed": m.buffer_seed,
                "dropout": True}
    os.makedirs(path, exist_ok=True)
    trajectories = []
    for i in range(EXPERTS):
        reinit_(net, g)
        theta = ex.flatten_params(net)
        tpath, jpath = ex.expert_paths(path, i)
        ex._create_trajectory_file(tpath, EPOCHS + 1, p)
        rows = []
        for e in range(EPOCHS + 1):
            ex._write_row(tpath, e, theta)
            rows.append([t.clone() for t in ex.unflatten(theta, layout)])
            theta = theta + 1e-3 * torch.randn(p, generator=g)
        trajectories.append(rows)
        ex._write_json(jpath, {"format": ex.EXPERT_FORMAT, "kind": "expert_trajectory",
                               "net": net_h, "store": ex.store_header(store),
                               "classes": list(store.classes),
                               "normalization": ex.normalization_header(store),
                               "training": training, "expert": i, "params": layout,
                               "num_params": p, "epochs_done": EPOCHS, "complete": True})
    return trajectories


def run(name, w, device, repeats, warmup, tmp):
    store = random_store(w["nc"], w["frames"], w["size"], per_class=max(1, w["ipc"]))
    cfg = resolve("published", method="mtt", ipc=w["ipc"],
                  net={"width": w["width"], "depth": w["depth"]},
                  mtt={"buffer": os.path.join(tmp, name), "num_experts": EXPERTS,
                       "buffer_epochs": EPOCHS, "max_start_epoch": MAX_START, "expert_epochs": 1,
                       "syn_steps": w["syn_steps"]})
    trajectories = fake_buffer(store, cfg, os.path.join(tmp, name))
    m = get("mtt")
    gen = torch.Generator(device=device).manual_seed(0)
    syn = m.init(store, cfg, device, gen)
    state = m.setup(syn, store, cfg, device)
    mc = cfg.mtt
    ref = ReferenceMTT(ex.build_net(state["buffer"].net), trajectories, syn.data, syn.labels,
                       mc.lr_img, mc.lr_lr, mc.lr_teacher, cfg.momentum, mc.syn_steps,
                       mc.expert_epochs, mc.max_start_epoch, mc.batch_syn, device)
    p = state["buffer"].num_params
    host_mib = {"reference-style loop": EXPERTS * (EPOCHS + 1) * p * 4 / 2**20,
                "vdfast": 2 * p * 4 / 2**20}
    providers = (("reference-style loop", ref.step), ("vdfast", lambda: m.step(syn, state, gen)))
    extra = {k: {"buffer_host_mb_per_expert_set": v, "num_params": p} for k, v in host_mib.items()}
    return compare_steps(name, "mtt", providers, device, repeats, warmup, w, extra)


def main(argv=None):
    def run_all(workloads, device, repeats, warmup):
        with tempfile.TemporaryDirectory(prefix="vdfast-mtt-bench-") as tmp:
            return [r for name, w in workloads.items()
                    for r in run(name, w, device, repeats, warmup=warmup, tmp=tmp)]

    return step_main(__doc__, WORKLOADS, SMOKE, run_all,
                     f"MTT iteration ({EXPERTS} experts x {EPOCHS + 1} epochs held)",
                     extra_cols=[("buffer MiB in host memory", "buffer_host_mb_per_expert_set", ".1f")],
                     argv=argv)


if __name__ == "__main__":
    main()
