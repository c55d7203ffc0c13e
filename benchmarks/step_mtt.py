"""One MTT iteration (``mtt``, and ``s2d-mtt`` on the static-dynamic synset): vdfast against the
reference-style loop, same sizes, same run, as a ratio, with peak memory for both.

    python benchmarks/step_mtt.py --smoke                 # tiny, CI
    python benchmarks/step_mtt.py --workloads builtin_ipc1 --methods mtt --json runs/mtt_step.json

Workloads (benchmarks/workloads.py) are random uint8 clips shaped like the named dataset and expert
buffers of random trajectories (the time of an MTT iteration does not depend on the values). Both
providers unroll ``syn_steps`` second-order student steps on the whole synset and update the
synthetic set and the learnable step size. "buffer MiB" is the host memory the buffer occupies: the
reference holds every expert and epoch, vdfast two rows. When vdfast's ``MTTConfig`` has the
``unroll`` field ("graph": the full second-order graph; "recompute": the exact reverse pass that
recomputes one step at a time), vdfast is reported once per unroll mode.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness_steps import Step, StepCase, step_main  # noqa: E402
from reference_mtt import ReferenceMTT  # noqa: E402
from step_dm import reference_synset  # noqa: E402

from vdfast.config import MTTConfig, resolve  # noqa: E402
from vdfast.data.store import ClipStore  # noqa: E402
from vdfast.methods import experts as ex  # noqa: E402
from vdfast.methods import get  # noqa: E402
from vdfast.methods.base import reinit_  # noqa: E402
from vdfast.models import count_params  # noqa: E402

EXPERTS, EPOCHS, MAX_START = 2, 3, 2
# vdfast's unroll modes, when its config has them (the bounded-memory unroll)
UNROLLS = ("graph", "recompute") if "unroll" in {f.name for f in dataclasses.fields(MTTConfig)} \
    else (None,)


def random_store(nc, frames, size, per_class, seed=0) -> ClipStore:
    rng = np.random.default_rng(seed)
    arrays = {s: [rng.integers(0, 256, (per_class, frames, size, size, 3), dtype=np.uint8)
                  for _ in range(nc)] for s in ("train", "test")}
    return ClipStore([f"c{i}" for i in range(nc)], arrays, frames, size, name="random")


def fake_buffer(store, cfg, path, experts: int = EXPERTS) -> list:
    """Write ``experts`` random trajectories as a vdfast buffer at ``path``; return them as the
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
    for i in range(experts):
        reinit_(net, g)
        theta = ex.flatten_params(net)
        tpath, jpath = ex.expert_paths(path, i)
        ex._create_trajectory_file(tpath, EPOCHS + 1, p)
        rows, sums = [], []
        for e in range(EPOCHS + 1):
            ex._write_row(tpath, e, theta)
            sums.append(ex._row_sha(theta))
            rows.append([t.clone() for t in ex.unflatten(theta, layout)])
            theta = theta + 1e-3 * torch.randn(p, generator=g)
        trajectories.append(rows)
        ex._write_json(jpath, {"format": ex.EXPERT_FORMAT, "kind": "expert_trajectory",
                               "net": net_h, "store": ex.store_header(store),
                               "classes": list(store.classes),
                               "normalization": ex.normalization_header(store),
                               "training": training, "expert": i, "params": layout,
                               "num_params": p, "epochs_done": EPOCHS, "complete": True,
                               "rows_sha256": sums})
    return trajectories


def setup(method: str, w: dict, device, tmp, unroll: str | None = None, experts: int = EXPERTS,
          max_start: int = MAX_START, s2d: dict | None = None):
    """(cfg, vdfast method, synset, state, generator, reference) of one MTT case; the buffer is
    written under ``tmp``; ``s2d``: overrides of the s2d settings (e.g. the pairing)."""
    store = random_store(w["nc"], w["frames"], w["size"], per_class=2 * w["ipc"])
    mtt = {"buffer": tmp, "num_experts": experts, "buffer_epochs": EPOCHS,
           "max_start_epoch": max_start, "expert_epochs": 1, "syn_steps": w["syn_steps"]}
    if unroll is not None:
        mtt["unroll"] = unroll
    cfg = resolve("published", method=method, ipc=w["ipc"],
                  net={"width": w["width"], "depth": w["depth"]}, mtt=mtt,
                  s2d={"static_iterations": 0, **(s2d or {})})
    trajectories = fake_buffer(store, cfg, tmp, experts)
    m = get(method)
    gen = torch.Generator(device=device).manual_seed(0)
    syn = m.init(store, cfg, device, gen)
    state = m.setup(syn, store, cfg, device)
    mc = cfg.mtt
    ref = ReferenceMTT(ex.build_net(state.buffer.net), trajectories,
                       reference_synset(method, syn, cfg, device), mc.lr_lr, mc.lr_teacher,
                       cfg.momentum, mc.syn_steps, mc.expert_epochs, mc.max_start_epoch,
                       mc.batch_syn, device)
    return cfg, m, syn, state, gen, ref


def build(method: str, w: dict, device, tmp) -> StepCase:
    providers, extra = [], {}
    for unroll in UNROLLS:
        d = os.path.join(tmp, unroll or "buffer")
        _, m, syn, state, gen, ref = setup(method, w, device, d, unroll)
        if not providers:
            providers.append(("reference-style loop", ref.step))
        name = "vdfast" if unroll is None else f"vdfast (unroll={unroll})"
        providers.append((name, lambda m=m, syn=syn, state=state, gen=gen: m.step(syn, state, gen)))
        p = state.buffer.num_params
        extra[name] = {"buffer_host_mb": 2 * p * 4 / 2**20, "num_params": p}
    extra["reference-style loop"] = {"buffer_host_mb": EXPERTS * (EPOCHS + 1) * p * 4 / 2**20,
                                     "num_params": p}
    return StepCase(providers, extra)


STEP = Step("mtt", ("mtt", "s2d-mtt"), build,
            f"MTT iteration ({EXPERTS} experts x {EPOCHS + 1} epochs held)", os.path.abspath(__file__),
            extra_cols=(("buffer MiB in host memory", "buffer_host_mb", ".1f"),))


def main(argv=None):
    return step_main(STEP, argv)


if __name__ == "__main__":
    main()
