"""DM with and without the network bank (``--dm-bank``) on the embedded dataset: final accuracy and
accuracy against wall-clock seconds (docs/results.md, "DM's network bank").

    python benchmarks/dm_bank_accuracy.py --out runs/bank_acc            # every case below
    python benchmarks/dm_bank_accuracy.py --out runs/bank_acc --plot docs/dm_bank_wallclock.png

Each case distills with the builtin preset (200 iterations) through ``vdfast.distill``, keeps a
copy of the synset at the ``--snapshots`` iterations with the wall-clock seconds since the call began
(the bank's build included), and trains ``--students`` fresh students on each copy (random real
clips beside the standard runs' final synsets). One JSON line per (case, snapshot) is appended to
``OUT/results.jsonl``; a case already there is skipped, so a killed run continues. The banks are
cached in ``OUT/banks`` (``$VDFAST_BANK_CACHE``): ipc 5 reads the bank ipc 1 built for the same seed
(its build seconds are then 0 in its wall clock; the table lists the build time separately).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def cases(seeds, ks, main_k):
    """(name, ipc, seed, dm_bank, dm_bank_clips), most wanted first: the ipc 1 parity pair and
    K = main_k with M = 16 clips per class and network (a build 60/16 = 3.75x cheaper than every
    clip), the ipc 5 parity pair, then the K sweep at ipc 1 (M = every clip)."""
    out = []
    for s in seeds:
        out += [(f"dm ipc1 s{s}", 1, s, 0, 0), (f"bank{main_k} ipc1 s{s}", 1, s, main_k, 0),
                (f"bank{main_k}m16 ipc1 s{s}", 1, s, main_k, 16)]
    for s in seeds:
        out += [(f"dm ipc5 s{s}", 5, s, 0, 0), (f"bank{main_k} ipc5 s{s}", 5, s, main_k, 0)]
    for s in seeds:
        out += [(f"bank{k} ipc1 s{s}", 1, s, k, 0) for k in ks if k != main_k]
    return out


def run_case(out: Path, name, ipc, seed, K, M, snapshots, students, curve=True):
    import vdfast

    run = out / name.replace(" ", "_")
    snaps = {}
    t0 = time.perf_counter()

    def cb(r):
        if r["iteration"] in snapshots:
            p = run / f"snap{r['iteration']}"
            r["synset"].save(p)
            snaps[r["iteration"]] = (p, time.perf_counter() - t0)

    res = vdfast.distill("builtin", method="dm", ipc=ipc, seed=seed, out=run, resume=False,
                         dm_bank=K, dm_bank_clips=M, callback=cb, progress=False)
    total = time.perf_counter() - t0
    spi = sorted(res.history["seconds_per_it"])
    bank = res.history.get("dm_bank")
    rows = []
    for it in sorted(snaps):
        path, secs = snaps[it]
        final = it == max(snaps)
        if not final and not curve:  # intermediate snapshots only for the wall-clock curves
            continue
        rep = vdfast.evaluate(vdfast.load(path), "builtin", students=students, seed=seed,
                              baselines=final and K == 0, full=False, progress=False)
        d = {r.name: {"accs": r.accs, "mean": r.mean, "std": r.std} for r in rep.rows}
        rows.append({"case": name, "ipc": ipc, "seed": seed, "K": K, "M": M, "iteration": it,
                     "wall_s": round(secs, 2), "distill_s": round(total, 2),
                     "median_s_per_it": spi[len(spi) // 2], "bank": bank, "eval": d})
    return rows


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import statistics

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, ipc in zip(axes, (1, 5)):
        groups = {}
        for r in results:
            if r["ipc"] == ipc:
                groups.setdefault((r["K"], r["M"]), {}).setdefault(r["iteration"], []).append(r)
        for (K, M), by_it in sorted(groups.items()):
            xs, ys, es = [], [], []
            for it, rs in sorted(by_it.items()):
                # a bank read from the cache (ipc 5) is charged its recorded build time
                xs.append(statistics.fmean(r["wall_s"] + (r["bank"]["build_seconds"] if r["bank"] and
                                           r["bank"]["cache"] == "hit" else 0) for r in rs))
                accs = [100 * a for r in rs for a in r["eval"]["dm"]["accs"]]
                ys.append(statistics.fmean(accs))
                es.append(statistics.pstdev(accs) if len(accs) > 1 else 0)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                        label="standard DM" if K == 0 else f"bank K={K}, M={M or 'all'}")
        ax.set_xscale("log")
        ax.set_xlabel("wall-clock seconds of the distillation (bank build included)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"builtin, DM ipc {ipc} (200 iterations)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bank_acc")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--ks", default="5,25,100", help="K sweep (ipc 1)")
    p.add_argument("--main-k", type=int, default=25, help="K of the ipc 1 / ipc 5 parity rows")
    p.add_argument("--snapshots", default="20,50,100,200")
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--curve-seeds", default="0",
                   help="seeds whose ipc 1 runs also evaluate the intermediate snapshots")
    p.add_argument("--only", default=None, help="comma list of case names")
    p.add_argument("--plot", default=None, help="write the accuracy-vs-wall-clock PNG and stop")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.jsonl"
    results = [json.loads(line) for line in res_file.read_text().splitlines()] if res_file.exists() else []
    if a.plot:
        plot(results, a.plot)
        return
    os.environ.setdefault("VDFAST_BANK_CACHE", str(out / "banks"))
    done = {r["case"] for r in results}
    snapshots = {int(s) for s in a.snapshots.split(",")}
    curve_seeds = {int(s) for s in a.curve_seeds.split(",")}
    for name, ipc, seed, K, M in cases([int(s) for s in a.seeds.split(",")],
                                       [int(k) for k in a.ks.split(",")], a.main_k):
        if name in done or (a.only and name not in a.only.split(",")):
            continue
        t = time.perf_counter()
        rows = run_case(out, name, ipc, seed, K, M, snapshots, a.students,
                        curve=seed in curve_seeds and ipc == 1)
        with res_file.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        last = rows[-1]["eval"]["dm"]
        print(f"{name}: {100 * last['mean']:.1f} ± {100 * last['std']:.1f} %, distill "
              f"{rows[-1]['distill_s']:.0f} s, case {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
