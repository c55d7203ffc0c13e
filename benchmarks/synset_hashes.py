"""Fingerprints of a fixed set of tiny runs: did a refactor change what vdfast computes?

Every method runs once on a small embedded store (12 classes, 4 frames at 16², one thread, fixed
seeds, a fresh temporary folder), and the sha256 of each tensor of the resulting synset is printed
as JSON. Run it on two trees and compare:

    PYTHONPATH=<tree A> python benchmarks/synset_hashes.py --json /tmp/a.json
    PYTHONPATH=<tree B> python benchmarks/synset_hashes.py --compare /tmp/a.json

``--compare`` exits with status 1 and names the runs whose tensors differ. The runs go through
``vdfast.distill`` with each method's own caches (MTT's expert buffers, GVD's stages, compose's
teacher, the DM bank) built inside the temporary folder, so those paths are covered too. About two
minutes on one CPU core.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import torch

DATA = {"train_per_class": 6, "test_per_class": 2, "frames": 4, "size": 16}
NET = {"net.width": 4, "net.depth": 2}
GVD = {"ae_down": 4, "ae_width": 4, "ae_steps": 4, "ae_batch": 4, "generator": "tiny", "gen_steps": 3,
       "gen_batch": 4, "steps": 3, "train_timesteps": 20, "checkpoint_every": 2,
       "teacher_epochs": 1, "segments": 1, "chunk": 5, "kmeans_iters": 5}
MTT = {"num_experts": 2, "buffer_epochs": 2, "buffer_batch": 16, "max_start_epoch": 1,
       "expert_epochs": 1, "syn_steps": 2}


def runs(tmp: str) -> dict[str, dict]:
    """name -> ``vdfast.distill`` keywords (besides the store and ``out``)."""
    mtt = {f"mtt.{k}": v for k, v in MTT.items()} | {"mtt.buffer": os.path.join(tmp, "experts")}
    gvd = {f"gvd.{k}": v for k, v in GVD.items()} | {"gvd.workdir": os.path.join(tmp, "gvd")}
    return {
        "dm": {"method": "dm", "ipc": 2, "iterations": 20},
        "dm-bank": {"method": "dm", "ipc": 1, "iterations": 10, "dm_bank": 3, "dm_bank_heldout": 2,
                    "dm_bank_heldout_every": 5},
        "dm-dsa": {"method": "dm", "ipc": 1, "iterations": 5, "dsa": "color_crop_flip"},
        "s2d-dm": {"method": "s2d-dm", "ipc": 1, "iterations": 5, "s2d.static_iterations": 5},
        "mtt": {"method": "mtt", "ipc": 1, "iterations": 3, **mtt},
        "s2d-mtt": {"method": "s2d-mtt", "ipc": 1, "iterations": 3, "s2d.static_iterations": 5, **mtt},
        "dc": {"method": "dc", "ipc": 1, "iterations": 3},
        "frepo": {"method": "frepo", "ipc": 1, "iterations": 3},
        "gvd": {"method": "gvd", "ipc": 1, **gvd},
        "compose": {"method": "compose", "ipc": 2, "compose.teacher_epochs": 2},
        "compose-random": {"method": "compose", "ipc": 2, "compose.teacher_epochs": 2,
                           "compose.select": "herding", "compose.features": "random"},
        "random": {"method": "random", "ipc": 2},
        "herding": {"method": "herding", "ipc": 2},
        "kcenter": {"method": "kcenter", "ipc": 2},
    }


def fingerprint(synset) -> dict[str, str]:
    out = {}
    for k, v in sorted(synset.state_dict().items()):
        t = v.detach().cpu().contiguous()
        out[k] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the fingerprints here")
    p.add_argument("--compare", help="fingerprints of another tree: exit 1 where they differ")
    p.add_argument("--only", default="", help="comma list of run names (default: all)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import vdfast
    from vdfast.data.store import ClipStore

    store = ClipStore.builtin(**DATA)
    prints: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        todo = runs(tmp)
        names = [n for n in a.only.split(",") if n] or list(todo)
        for name in names:
            kw = dict(todo[name])
            res = vdfast.distill(store, out=os.path.join(tmp, name), progress=False, seed=0,
                                 preset="builtin", **NET, **kw)
            prints[name] = fingerprint(res.synset)
            print(f"{name}: {hashlib.sha256(json.dumps(prints[name], sort_keys=True).encode()).hexdigest()[:16]}",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(prints, f, indent=1, sort_keys=True)
    if a.compare:
        with open(a.compare) as f:
            other = json.load(f)
        bad = [n for n in prints if n in other and other[n] != prints[n]]
        missing = [n for n in prints if n not in other]
        for n in bad:
            keys = [k for k in prints[n] if other[n].get(k) != prints[n][k]]
            print(f"DIFFERS {n}: {', '.join(keys)}")
        for n in missing:
            print(f"not in {a.compare}: {n}")
        print("identical" if not bad else f"{len(bad)} of {len(prints)} runs differ")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
