"""Data-parallel module training on N processes: DistributedDataParallel (vdfast's path,
``Dist.data_parallel``: bucketed all-reduce that sums the gradients during the backward) against
the earlier path (backward, then one flat all-reduce of every gradient after it), side by side in
one run, plus the same work on one process.

    python benchmarks/ddp_train.py                       # builtin sizes, 5 repetitions
    python benchmarks/ddp_train.py --reps 3 --epochs 1 --gen-steps 20 --json runs/ddp.json

Workloads (the builtin preset's sizes): ``student``: :func:`vdfast.engine.train.train_student` on
the builtin train split (720 clips of 8x32x32, ConvNet3D width 32 depth 2, batch 64, standardised
batches), ``--epochs`` per repetition; ``generator``: :func:`vdfast.methods.gvd.train_generator`
(the builtin preset's tiny VideoDiT, 8x4x8x8 latents, batch 32) for ``--gen-steps`` steps on random
latents of 12 classes. Each repetition times one whole call (the DDP wrapper's construction
included); the two N-process paths alternate (ABAB, BABA, ...) and every rank waits for the
others before and after each call. The old path lives only here: ``Dist.data_parallel`` replaced
by a forward hook that queues, at the end of the backward, the missing gradients filled with zeros
and ``Dist.sum_grads_`` (what ``Dist.backward_`` did). Launched without torchrun it runs itself
under torchrun (1 process with 1 and with N threads, N processes with 1 thread each) and prints
one table of medians.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch


# ------------------------------------------------------------------------------------ worker
@contextlib.contextmanager
def flat_path():
    """``Dist.data_parallel`` as the package did before DDP: the module itself, and after its
    backward the gradients (missing ones as zeros) summed in one flat all-reduce."""
    from vdfast.distributed import Dist

    orig = Dist.data_parallel

    def data_parallel(self, module):
        if not self.active:
            return module
        params = [p for p in module.parameters() if p.requires_grad]

        def after_backward():
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.sum_grads_(params)

        def on_output(_m, _inp, out):
            if out.requires_grad:
                out.register_hook(lambda g: (torch.autograd.Variable._execution_engine
                                             .queue_callback(after_backward), g)[1])
        module.register_forward_hook(on_output)
        return module

    Dist.data_parallel = data_parallel
    try:
        yield
    finally:
        Dist.data_parallel = orig


def student_job(dist, epochs):
    from vdfast.config import resolve
    from vdfast.data.store import ClipStore
    from vdfast.engine.train import Source, train_student
    from vdfast.models import build

    store = ClipStore.builtin()
    cfg = resolve("builtin")
    x, y = store.tensors("train")
    src = Source(x, y, store.mean, store.std)
    ecfg = cfg.eval
    steps = epochs * -(-len(src) // ecfg.batch)

    def run():
        torch.manual_seed(0)
        net = build(cfg.net, store)
        train_student(net, src, ecfg, epochs, torch.Generator().manual_seed(1), progress=False,
                      dist=dist)
        return torch.cat([p.detach().flatten() for p in net.parameters()])
    return run, steps


def generator_job(dist, steps):
    from vdfast.config import resolve
    from vdfast.methods.gvd import train_generator

    g = resolve("builtin", method="gvd").gvd
    g = dataclasses.replace(g, gen_steps=steps, checkpoint_every=0)
    latent = 32 // g.ae_down
    gen = torch.Generator().manual_seed(0)
    lat = {f"c{i:02d}": torch.randn(60, 8, 4, latent, latent, generator=gen).half()
           for i in range(12)}

    def run():
        ema = train_generator(lat, g, 0, "cpu", None, progress=False, dist=dist)
        return torch.cat([p.detach().flatten() for p in ema.parameters()])
    return run, steps


def worker(args):
    from vdfast.distributed import setup

    dist = setup(torch.device("cpu"))
    modes = ["ddp", "flat"] if dist.active else ["plain"]
    jobs = {"student": student_job(dist, args.epochs), "generator": generator_job(dist, args.gen_steps)}
    res = {}
    for name in args.only or jobs:
        run, steps = jobs[name]
        run()  # warm-up (allocator, gloo's first buffers), not timed
        times, weights = {m: [] for m in modes}, {}
        for r in range(args.reps):
            for m in (modes if r % 2 == 0 else modes[::-1]):
                dist.barrier()
                t = time.perf_counter()
                with flat_path() if m == "flat" else contextlib.nullcontext():
                    weights[m] = run()
                dist.barrier()
                times[m].append(time.perf_counter() - t)
        res[name] = {m: {"median_ms_per_step": 1e3 * statistics.median(v) / steps,
                         "s": v, "steps": steps} for m, v in times.items()}
        if dist.active:  # both paths train the same network (up to float summation order)
            res[name]["max_abs_diff"] = float((weights["ddp"] - weights["flat"]).abs().max())
    if dist.main:
        with open(args.worker_out, "w") as f:
            json.dump({"world": dist.world, "threads": torch.get_num_threads(), "results": res}, f)
    if dist.active:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------ driver
def launch(nproc, threads, args, out):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port), os.path.abspath(__file__), "--worker-out", out,
           "--reps", str(args.reps), "--epochs", str(args.epochs), "--gen-steps", str(args.gen_steps)]
    cmd += [a for n in (args.only or []) for a in ("--only", n)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ACCELERATE_USE_CPU="1", VDFAST_PROGRESS="0")
    subprocess.run(cmd, env=env, check=True)
    with open(out) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1, help="student epochs per repetition")
    p.add_argument("--gen-steps", type=int, default=30, help="generator steps per repetition")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--only", action="append", choices=["student", "generator"])
    p.add_argument("--json", help="write every timing here")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        return worker(args)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {"1 proc x 1 thread": launch(1, 1, args, f"{tmp}/a.json"),
                f"1 proc x {args.nproc} threads": launch(1, args.nproc, args, f"{tmp}/b.json"),
                f"{args.nproc} procs x 1 thread": launch(args.nproc, 1, args, f"{tmp}/c.json")}
    one1, oneN, many = runs.values()
    print(f"\nmedian ms per step over {args.reps} repetitions (torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs)\n")
    print(f"| workload | 1 proc x 1 thread | 1 proc x {args.nproc} threads | {args.nproc} procs "
          f"flat all-reduce (old) | {args.nproc} procs DDP | DDP / old |")
    print("|---|---|---|---|---|---|")
    for name, r in many["results"].items():
        a = one1["results"][name]["plain"]["median_ms_per_step"]
        b = oneN["results"][name]["plain"]["median_ms_per_step"]
        old, ddp = (r[m]["median_ms_per_step"] for m in ("flat", "ddp"))
        print(f"| {name} ({r['ddp']['steps']} steps) | {a:.1f} | {b:.1f} | {old:.1f} | {ddp:.1f} | "
              f"{ddp / old:.3f} |")
    print("\nlargest weight difference DDP vs old after the last repetition: " + ", ".join(
        f"{n} {r['max_abs_diff']:.2e}" for n, r in many["results"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
