"""One short end-to-end pass of the distillation loop on a device, for ``benchmarks/gpu_check.sh``:
``vdfast.distill`` with DM, s2d-dm and MTT for a few iterations each, with ``--profile``, on a
synthetic store of random clips (50 classes of 16 x 112² by default: MiniUCF's shapes), and one
markdown table of what each run measured.

    python benchmarks/gpu_e2e.py OUT_DIR [--classes 50 --frames 16 --size 112 --per-class 64]
                                        [--iterations 6 --profile 2 --methods dm,s2d-dm,mtt]
                                        [--width W --depth D --device cpu]   # a CPU dry run

A method that fails is reported with its error and the others still run; the exit status is 1
when any failed. An interruption (SIGINT at a time limit: vdfast's ``Interrupted`` is a
``KeyboardInterrupt``) is reported as that method's error and ends the run. The table
(``OUT_DIR/e2e.md``, rows in ``OUT_DIR/e2e.json``) is rewritten after every method, merged with the
rows already there for other methods, so ``gpu_check.sh`` can run each method in its own process
and keep what each wrote. The profile summaries (``OUT_DIR/<method>/profile/summary.md``) show
where a GPU iteration goes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def options(method: str, a) -> dict:
    """Short runs: few real clips, a small expert buffer for MTT, a short static learning."""
    opts = {"device": a.device, "batch_real": min(a.per_class, 64), "checkpoint_every": 0,
            **({"net.width": a.width} if a.width else {}),
            **({"net.depth": a.depth} if a.depth else {})}
    if method.startswith("s2d-"):
        opts.update({"s2d.static_iterations": 2, "s2d.static_batch_real": min(a.per_class, 64)})
    if method.endswith("mtt"):
        opts.update({"mtt.num_experts": 1, "mtt.buffer_epochs": 2, "mtt.max_start_epoch": 1,
                     "mtt.syn_steps": 2, "mtt.buffer": os.path.join(a.out, "buffer")})
    return opts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--profile", type=int, default=2)
    ap.add_argument("--methods", default="dm,s2d-dm,mtt")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=int, default=0, help="ConvNet3D width (0: the published 64)")
    ap.add_argument("--depth", type=int, default=0, help="ConvNet3D depth (0: the published 3)")
    a = ap.parse_args(argv)

    import torch

    import vdfast
    from step_dm import random_store

    store = random_store(a.classes, a.per_class, a.frames, a.size)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    head = (f"end to end on {dev}: {a.classes} classes of {a.frames}x{a.size}², ipc 1, "
            f"{a.iterations} iterations, profile {a.profile}")
    failed = False
    for method in a.methods.split(","):
        out = os.path.join(a.out, method)
        t0 = time.perf_counter()
        stop = False
        try:
            res = vdfast.distill(store, method=method, ipc=1, iterations=a.iterations, out=out,
                                 resume=False, preset="published", progress=False,
                                 profile=a.profile, **options(method, a))
            h = res.history
            sec = h.get("seconds_per_it") or [float("nan")]
            loss = h.get("loss") or [float("nan")]
            row = {"method": method, "ok": True, "iterations": h.get("iterations"),
                   "median ms/it": 1e3 * sorted(sec)[len(sec) // 2],
                   "peak memory MiB": h.get("peak_memory_mb"), "last loss": float(loss[-1]),
                   "wall s": time.perf_counter() - t0}
        except BaseException as e:  # report and go on: one run brings back as much as it can
            failed = True
            # an interruption (the step's time limit) or an exit ends the run once its row is written
            stop = not isinstance(e, Exception)
            traceback.print_exc()
            row = {"method": method, "ok": False, "error": f"{type(e).__name__}: {e}"[:300],
                   "wall s": time.perf_counter() - t0}
        write_table(a.out, head, row)
        if stop:
            break
    print(open(os.path.join(a.out, "e2e.md")).read())
    return 1 if failed else 0


def write_table(out_dir: str, head: str, row: dict) -> None:
    """Add ``row`` to ``out_dir/e2e.json`` (replacing an earlier row of its method) and rewrite
    ``out_dir/e2e.md`` from all rows; each file replaced atomically."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "e2e.json")
    rows = []
    if os.path.exists(path):
        try:
            with open(path) as fh:
                rows = json.load(fh)
        except ValueError:
            rows = []
    rows = [r for r in rows if r.get("method") != row["method"]] + [row]
    lines = [head, "",
             "| method | ok | median ms/it | peak memory MiB | last loss | wall s | error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k, fmt="{:.1f}": fmt.format(r[k]) if isinstance(r.get(k), float) else str(r.get(k, ""))  # noqa: E731
        lines.append(f"| {r['method']} | {'yes' if r['ok'] else 'NO'} | {f('median ms/it')} | "
                     f"{f('peak memory MiB')} | {f('last loss', '{:.4g}')} | {f('wall s')} | "
                     f"{str(r.get('error', '')).replace('|', '/')} |")
    for name, text in (("e2e.json", json.dumps(rows, indent=1, default=str)),
                       ("e2e.md", "\n".join(lines) + "\n")):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(out_dir, name))


if __name__ == "__main__":
    sys.exit(main())
