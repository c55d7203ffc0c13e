"""compose at Kinetics-400's shape: one pass over a store of 400 classes with bounded memory.

    python benchmarks/compose_scale.py                       # 400 classes x 100 train clips, 8x32², ipc 10
    python benchmarks/compose_scale.py --classes 100,400 --per-class 100 --frames 16 --size 112

The cost of compose does not depend on what the clips show, so the store holds random uint8 clips
in the ClipStore layout (written once under ``--work``), and the teacher is a randomly initialised
ConvNet3D given as a user's weights file (``--compose-teacher``): what is measured is the one pass
that scores every train video's segments class by class and composes the instances. Each class
count runs in a fresh process; its wall seconds and peak resident memory (``ru_maxrss``) are
recorded, with the store's train bytes beside them. The peak that matters is the process's own
(anonymous) memory, sampled from ``/proc/self/status``: the memory-mapped clips it reads count in its
RSS as page cache, which the kernel reclaims, so RSS grows with the store even when nothing is kept.
A flat anonymous peak across class counts shows the pass streams the classes. The teacher's training is timed apart: one
epoch over the largest store's train split (the cost of ``--compose-teacher-epochs`` E is E times
it). Results: ``benchmarks/results/compose_scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def write_store(path: str, classes: int, per_class: int, frames: int, size: int, seed: int = 0) -> str:
    """A complete ClipStore of random uint8 clips (``per_class`` train clips and 1 test clip per class)."""
    import numpy as np

    if os.path.exists(os.path.join(path, "store.json")):
        return path
    rng = np.random.default_rng(seed)
    names = [f"class{c:03d}" for c in range(classes)]
    for split, n in (("train", per_class), ("test", 1)):
        os.makedirs(os.path.join(path, split), exist_ok=True)
        for c in range(classes):
            np.save(os.path.join(path, split, f"{c:04d}.npy"),
                    rng.integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8))
            with open(os.path.join(path, split, f"{c:04d}.json"), "w") as f:
                json.dump({"used": [f"{names[c]}/v{i:05d}.mp4" for i in range(n)], "skipped": []}, f)
    meta = {"format": 1, "name": os.path.basename(path), "classes": names, "frames": frames,
            "size": size, "test_clips": 1, "complete": True, "root": path, "source": "random",
            "request": {"layout": "random", "split": 1, "spec": {"frames": frames, "size": size}},
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with open(os.path.join(path, "store.json"), "w") as f:
        json.dump(meta, f)
    return path


CHILD = """
import json, resource, sys, threading, time
import torch
import vdfast
store, teacher, out, ipc, width, depth = sys.argv[1:7]
peak = {"anon": 0}
def sample():  # the process's own memory (RssAnon): memory-mapped clips it read are page cache
    while True:
        with open("/proc/self/status") as f:
            kb = next((int(l.split()[1]) for l in f if l.startswith("RssAnon:")), 0)
        peak["anon"] = max(peak["anon"], kb)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
res = vdfast.distill(store, method="compose", ipc=int(ipc), out=out, progress=False, device="cpu",
                     **{"compose.teacher": teacher, "net.width": int(width), "net.depth": int(depth),
                        "net.norm": "instance"})
wall = time.perf_counter() - t0
time.sleep(0.05)
print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_anon_mb": peak["anon"] / 1024,
                  "synset_mb": res.synset.storage()["bytes"] / 2**20}))
"""


def teacher_file(store_path: str, width: int, depth: int, work: str) -> str:
    """A randomly initialised ConvNet3D for the store, as a user's teacher weights file."""
    import torch

    from vdfast.config import NetConfig
    from vdfast.data.store import ClipStore
    from vdfast.engine.checkpoint import save_weights
    from vdfast.models import build

    store = ClipStore.open(store_path)
    torch.manual_seed(0)
    net = build(NetConfig(width=width, depth=depth, norm="instance"), store)
    f = os.path.join(work, f"teacher-{store.num_classes}c-w{width}d{depth}.safetensors")
    save_weights(f, net.state_dict())
    return f


def teacher_epoch_seconds(store_path: str, width: int, depth: int) -> float:
    """One epoch of the teacher's training (the evaluation's optimiser) over the store's train split."""
    import torch

    from vdfast.config import EvalConfig, NetConfig
    from vdfast.data.store import ClipStore
    from vdfast.engine.train import train_teacher

    store = ClipStore.open(store_path)
    t0 = time.perf_counter()
    train_teacher(store, NetConfig(width=width, depth=depth, norm="instance"), EvalConfig(), 1, 0,
                  torch.device("cpu"), None, progress=False)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", default="100,400", help="class counts, each its own store and process")
    p.add_argument("--per-class", type=int, default=100, help="train clips per class")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--width", type=int, default=32, help="the teacher ConvNet3D's width")
    p.add_argument("--depth", type=int, default=2, help="its depth (3 at 16x112², the published net)")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "compose-scale"))
    p.add_argument("--json", default=os.path.join(HERE, "results", "compose_scale.json"))
    p.add_argument("--no-teacher-epoch", action="store_true", help="skip timing the teacher's epoch")
    a = p.parse_args(argv)
    import harness
    import torch

    os.makedirs(a.work, exist_ok=True)
    rows = []
    for nc in [int(x) for x in a.classes.split(",")]:
        spath = write_store(os.path.join(a.work, f"store-{nc}c-{a.per_class}x{a.frames}x{a.size}"), nc,
                            a.per_class, a.frames, a.size)
        teacher = teacher_file(spath, a.width, a.depth, a.work)
        out = os.path.join(a.work, f"run-{nc}c-ipc{a.ipc}-{time.time_ns()}")
        r = subprocess.run([sys.executable, "-c", CHILD, spath, teacher, out, str(a.ipc), str(a.width), str(a.depth)],
                           capture_output=True, text=True, env=dict(os.environ, VDFAST_PROGRESS="0"))
        if r.returncode:
            sys.exit(f"compose on {nc} classes failed:\n{r.stderr[-3000:]}")
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        clip = a.frames * a.size * a.size * 3
        rec.update(classes=nc, train_clips=nc * a.per_class, train_mb=nc * a.per_class * clip / 2**20,
                   clips_per_s=nc * a.per_class / rec["wall_s"])
        rows.append(rec)
        print(f"{nc} classes x {a.per_class} clips ({rec['train_mb']:.0f} MB of train clips): "
              f"{rec['wall_s']:.1f} s, {rec['clips_per_s']:.0f} videos/s, peak anonymous memory "
              f"{rec['peak_anon_mb']:.0f} MB (RSS with the mapped clips read {rec['peak_rss_mb']:.0f} MB), "
              f"synset {rec['synset_mb']:.1f} MB", flush=True)
    out = {"benchmark": "compose one pass at Kinetics-400 shape", "rows": rows,
           "settings": {"per_class": a.per_class, "frames": a.frames, "size": a.size, "ipc": a.ipc,
                        "teacher": f"ConvNet3D width {a.width} depth {a.depth} instance norm (random weights)",
                        "segments": 2, "chunk": 64},
           **harness.versions(), "device": harness.device_name(torch.device("cpu")),
           "cpu_threads": torch.get_num_threads()}
    if not a.no_teacher_epoch:
        big = max(rows, key=lambda r: r["classes"])
        spath = os.path.join(a.work, f"store-{big['classes']}c-{a.per_class}x{a.frames}x{a.size}")
        out["teacher_epoch_s"] = teacher_epoch_seconds(spath, a.width, a.depth)
        print(f"teacher: one epoch over {big['train_clips']} clips in {out['teacher_epoch_s']:.1f} s", flush=True)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
