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
    """(name, ipc, seed, dm_bank, dm_bank_clips, curve), in the order they were run: the ipc 1
    rows of the first seed (standard DM, K = 25 over every clip and over M = 16 clips per class and
    network, K = main_k), the ipc 1 and ipc 5 parity pairs (standard, K = main_k over every clip)
    of every seed, the control K = 200, M = 16 (with 200 iterations: standard DM's own estimator,
    each network once, with other random draws), then the rest of the K sweep. ``curve``: evaluate
    the intermediate snapshots too (the first seed's first ipc 1 rows, for the wall-clock plot)."""
    s0, rest = seeds[0], seeds[1:]
    out = [(f"dm ipc1 s{s0}", 1, s0, 0, 0, True), (f"bank25 ipc1 s{s0}", 1, s0, 25, 0, True),
           (f"bank25m16 ipc1 s{s0}", 1, s0, 25, 16, True),
           (f"bank{main_k} ipc1 s{s0}", 1, s0, main_k, 0, True)]
    out += [(f"dm ipc1 s{s}", 1, s, 0, 0, False) for s in rest]
    out += [(f"bank{main_k} ipc1 s{s}", 1, s, main_k, 0, False) for s in rest]
    for s in seeds:
        out += [(f"dm ipc5 s{s}", 5, s, 0, 0, False), (f"bank{main_k} ipc5 s{s}", 5, s, main_k, 0, False)]
    out += [(f"bank200m16 ipc1 s{s}", 1, s, 200, 16, False) for s in seeds]
    out += [(f"bank25 ipc1 s{s}", 1, s, 25, 0, False) for s in rest]
    out += [(f"bank{main_k}m16 ipc1 s{s}", 1, s, main_k, 16, False) for s in seeds]
    out += [(f"bank25m16 ipc1 s{s}", 1, s, 25, 16, False) for s in rest]
    for s in seeds:
        out += [(f"bank{k} ipc1 s{s}", 1, s, k, 0, False) for k in ks if k not in (25, main_k)]
    return list(dict((c[0], c) for c in out).values())


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


def plot(results, path, seed=0):
    """A PNG (Pillow): per ipc, test accuracy of the synset at each snapshot (mean ± std over the
    students) against the wall-clock seconds (log) at which it existed, distillation seed
    ``seed``, one line per estimator."""
    import math
    import statistics

    from PIL import Image, ImageDraw

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f",
              "#bcbd22", "#e377c2"]
    W, H, M = 560, 400, 60
    panels = []
    for ipc in (1, 5):
        groups = {}
        for r in results:
            if r["ipc"] == ipc and r["seed"] == seed:
                groups.setdefault((r["K"], r["M"]), {}).setdefault(r["iteration"], []).append(r)
        series = {}
        for (K, Mc), by_it in sorted(groups.items()):
            pts = []
            for it, rs in sorted(by_it.items()):
                accs = [100 * a for r in rs for a in r["eval"]["dm"]["accs"]]
                pts.append((statistics.fmean(_wall(r) for r in rs), statistics.fmean(accs),
                            statistics.pstdev(accs) if len(accs) > 1 else 0.0, it))
            series["standard DM" if K == 0 else f"bank K={K}, M={Mc or 'all'}"] = pts
        panels.append((ipc, series))
    names = sorted({n for _, s in panels for n in s}, key=lambda n: (n != "standard DM", n))
    col = {n: colors[i % len(colors)] for i, n in enumerate(names)}
    img = Image.new("RGB", (2 * W, H + 30 + 16 * len(names)), "white")
    d = ImageDraw.Draw(img)
    for panel, (ipc, series) in enumerate(panels):
        pts = [p for s in series.values() for p in s]
        if not pts:
            continue
        ox = panel * W
        xs = [p[0] for p in pts]
        lx0, lx1 = math.log(min(xs)) - 0.1, math.log(max(xs)) + 0.1
        lo = min(p[1] - p[2] for p in pts) - 1
        hi = max(p[1] + p[2] for p in pts) + 1

        def xy(x, y):
            return (ox + M + (math.log(x) - lx0) / (lx1 - lx0) * (W - 20 - M),
                    H - 40 - (y - lo) / (hi - lo) * (H - 70))
        d.text((ox + M, 8), f"builtin, DM ipc {ipc}, seed {seed}: test accuracy (%) against wall-clock s (log)",
               fill="black")
        d.rectangle([ox + M, 30, ox + W - 20, H - 40], outline="black")
        for v in (lo + 1, (lo + hi) / 2, hi - 1):
            _, y = xy(min(xs), v)
            d.text((ox + 4, y - 6), f"{v:.1f}", fill="black")
        for e in range(int(math.floor(lx0 / math.log(10) * 3)), int(lx1 / math.log(10) * 3) + 1):
            v = 10 ** (e / 3)
            if math.exp(lx0) <= v <= math.exp(lx1):
                x, _ = xy(v, lo)
                d.text((x - 8, H - 34), f"{v:.0f}", fill="black")
        for name, ps in series.items():
            line = [xy(p[0], p[1]) for p in ps]
            if len(line) > 1:
                d.line(line, fill=col[name], width=2)
            for (x, y), p in zip(line, ps):
                _, y0 = xy(p[0], p[1] - p[2])
                _, y1 = xy(p[0], p[1] + p[2])
                d.line([(x, y0), (x, y1)], fill=col[name], width=1)
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col[name])
                d.text((x + 4, y - 14), str(p[3]), fill=col[name])
        d.text((ox + M, H - 20), "wall-clock seconds of the distillation (bank build included); "
               "labels: iteration", fill="black")
    for i, n in enumerate(names):
        d.text((M, H + 14 + 16 * i), "-- " + n, fill=col[n])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


def _wall(r) -> float:
    """Seconds of a distillation up to a snapshot, a bank read from the cache charged its recorded
    build time."""
    b = r["bank"]
    return r["wall_s"] + (b["build_seconds"] if b and b["cache"] == "hit" else 0.0)


def table(results) -> str:
    """Markdown: final accuracy per (ipc, K, M) over every student of every seed (mean ± std),
    the per-seed means, random real, the distillation's wall seconds and the bank's build."""
    import statistics

    final = {}
    for r in results:
        if r["iteration"] == 200:
            final.setdefault((r["ipc"], r["K"], r["M"]), []).append(r)
    lines = ["| ipc | estimator | accuracy (%) | per seed | students x seeds | random real (%) | "
             "distill s (median ms/it) | bank build s |", "|---|---|---|---|---|---|---|---|"]
    for (ipc, K, M), rs in sorted(final.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        accs = [100 * a for r in rs for a in r["eval"]["dm"]["accs"]]
        per = " / ".join(f"{100 * r['eval']['dm']['mean']:.1f}" for r in rs)
        rr = [100 * a for r in rs for a in r["eval"].get("random real", {}).get("accs", [])]
        rr_s = f"{statistics.fmean(rr):.1f} ± {statistics.pstdev(rr):.1f}" if rr else ""
        wall = statistics.fmean(_wall(r) for r in rs)
        ms = statistics.fmean(1e3 * r["median_s_per_it"] for r in rs)
        build = statistics.fmean(r["bank"]["build_seconds"] for r in rs) if K else None
        name = "standard DM" if K == 0 else f"bank K={K}, M={M or 'all'}"
        lines.append(f"| {ipc} | {name} | {statistics.fmean(accs):.1f} ± {statistics.pstdev(accs):.1f} | "
                     f"{per} | {len(rs[0]['eval']['dm']['accs'])} x {len(rs)} | {rr_s} | "
                     f"{wall:.0f} ({ms:.0f}) | {'' if build is None else f'{build:.0f}'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bank_acc")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--ks", default="5,25,100,400", help="K sweep (ipc 1, M = every clip)")
    p.add_argument("--main-k", type=int, default=100, help="K of the ipc 1 / ipc 5 parity rows")
    p.add_argument("--snapshots", default="20,50,100,200")
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--only", default=None, help="comma list of case names")
    p.add_argument("--plot", default=None, help="write the accuracy-vs-wall-clock PNG and stop")
    p.add_argument("--table", action="store_true", help="print the markdown table and stop")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.jsonl"
    results = [json.loads(line) for line in res_file.read_text().splitlines()] if res_file.exists() else []
    if a.plot or a.table:
        if a.plot:
            plot(results, a.plot)
        if a.table:
            print(table(results))
        return
    os.environ.setdefault("VDFAST_BANK_CACHE", str(out / "banks"))
    done = {r["case"] for r in results}
    snapshots = {int(s) for s in a.snapshots.split(",")}
    for name, ipc, seed, K, M, curve in cases([int(s) for s in a.seeds.split(",")],
                                       [int(k) for k in a.ks.split(",")], a.main_k):
        if name in done or (a.only and name not in a.only.split(",")):
            continue
        t = time.perf_counter()
        rows = run_case(out, name, ipc, seed, K, M, snapshots, a.students, curve=curve)
        with res_file.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        last = rows[-1]["eval"]["dm"]
        print(f"{name}: {100 * last['mean']:.1f} ± {100 * last['std']:.1f} %, distill "
              f"{rows[-1]['distill_s']:.0f} s, case {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
