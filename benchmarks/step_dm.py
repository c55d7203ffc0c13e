"""One DM iteration (``dm``, and ``s2d-dm`` on the static-dynamic synset): vdfast against the
reference-style loop, same sizes, same run, as a ratio, with peak memory for both.

    python benchmarks/step_dm.py --smoke                          # tiny, CI
    python benchmarks/step_dm.py --workloads builtin_ipc1 --methods dm --json runs/dm_step.json
    python benchmarks/step_dm.py --scaling --workloads miniucf-ipc1 --plot runs/dm_scaling.png

Workloads (benchmarks/workloads.py) are stores of random uint8 clips shaped like the named dataset
(the time of a DM step does not depend on the pixel values). ``s2d-dm`` starts from real-frame still
images (no static learning: it is not part of the iteration) with the published multi pairing.
``bank (--dm-bank)`` is the same method with ``--dm-bank`` (vdfast.methods.dm_bank): an iteration embeds
only the synthetic clips; the bank's build time per network is its own column.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness_steps import Step, StepCase, step_main  # noqa: E402
from reference_loops import ReferenceDM, ReferencePixels, ReferenceS2D  # noqa: E402

from vdfast.config import resolve  # noqa: E402
from vdfast.data.store import ClipStore  # noqa: E402
from vdfast.methods import get  # noqa: E402


def random_store(nc, per_class, frames, size, seed=0) -> ClipStore:
    """``per_class`` random uint8 train clips per class (1 test clip), ``frames`` x ``size``²."""
    rng = np.random.default_rng(seed)
    arrays = {s: [rng.integers(0, 256, (per_class if s == "train" else 1, frames, size, size, 3),
                               dtype=np.uint8) for _ in range(nc)] for s in ("train", "test")}
    return ClipStore([f"c{i}" for i in range(nc)], arrays, frames, size, name="random")


def reference_synset(method: str, syn, cfg, device):
    """The reference-style twin of vdfast's synset ``syn`` (same tensors and learning rates)."""
    if method.startswith("s2d-"):
        lr_d, lr_h, momentum = cfg.s2d.optim(method.split("-", 1)[1])
        return ReferenceS2D(syn, lr_d, lr_h, momentum, device)
    lr = cfg.mtt.lr_img if method == "mtt" else cfg.lr_img
    return ReferencePixels(syn.data, syn.labels, lr, device)


# the "bank (--dm-bank)" provider: BANK_K networks of batch_real real clips per class, built
# in memory before the timing (its build time per network is the table's own column); an
# iteration's time does not depend on K
BANK_K = 1


def setup(method: str, w: dict, device, store=None, s2d: dict | None = None, bank: int = 0,
          reference: bool = True):
    """(store, cfg, vdfast method, synset, state, generator, reference) of one DM case; ``s2d``:
    overrides of the s2d settings (e.g. the pairing); ``bank``: ``--dm-bank`` networks of
    ``batch_real`` clips (0: standard DM); ``reference=False``: no reference-style twin (None)."""
    store = store or random_store(w["nc"], max(w["batch_real"], 2 * w["ipc"]), w["frames"], w["size"])
    cfg = resolve("published", method=method, ipc=w["ipc"], batch_real=w["batch_real"],
                  net={"width": w["width"], "depth": w["depth"]},
                  s2d={"static_iterations": 0, **(s2d or {})},
                  dm_bank=bank, dm_bank_clips=w["batch_real"] if bank else 0)
    m = get(method)
    gen = torch.Generator(device=device).manual_seed(0)
    syn = m.init(store, cfg, device, gen)
    state = m.setup(syn, store, cfg, device)
    ref = ReferenceDM(store, reference_synset(method, syn, cfg, device), cfg.batch_real, cfg.momentum,
                      w["width"], w["depth"], device, norm=cfg.net.norm) if reference else None
    return store, cfg, m, syn, state, gen, ref


def build(method: str, w: dict, device, tmp) -> StepCase:
    store, _, m, syn, state, gen, ref = setup(method, w, device)
    _, _, mb, synb, stb, genb, _ = setup(method, w, device, store=store, bank=BANK_K, reference=False)
    per_net = stb.bank.build_seconds / stb.bank.K
    return StepCase([("reference-style loop", ref.step), ("vdfast", lambda: m.step(syn, state, gen)),
                     ("bank (--dm-bank)", lambda: mb.step(synb, stb, genb))],
                    extra={"bank (--dm-bank)": {"bank_build_s_per_network": per_net}})


STEP = Step("dm", ("dm", "s2d-dm"), build, "DM iteration", os.path.abspath(__file__),
            extra_cols=(("bank build s/network", "bank_build_s_per_network", ".2f"),))


def main(argv=None):
    return step_main(STEP, argv)


if __name__ == "__main__":
    main()
