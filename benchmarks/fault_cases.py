"""The fault cases of issue 21 against a source tree: what each one ends in.

    python benchmarks/fault_cases.py [--tree DIR] [--only NAME,...]

``--tree`` (default: this checkout) is put first on PYTHONPATH of every child process, so the
same cases run against another checkout (``git worktree add /tmp/main main``) for a before/after
table. Every fault is injected the same way on every tree (patched ``torch.save`` / ``Path.rename``
/ a method's ``step`` in a child process, real flipped files, a real tmpfs filled to the last
byte), and every case prints one row: ``resumed exactly`` (the same synset as an uninterrupted
run), ``refused clearly`` (non-zero, one line, no traceback), or what happened instead.
Needs root for the tmpfs case (it is reported as not run otherwise).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ARGS = ["distill", "--data", "builtin", "--method", "dm", "--ipc", "1", "--iterations", "6",
        "--checkpoint-every", "2", "--net-width", "4", "--batch-real", "2", "--no-evaluate",
        "--no-preview"]

# a child: the CLI with one fault armed (the same patch points on every tree)
CHILD = textwrap.dedent("""
    import os, signal, sys, pathlib
    mode, nth = sys.argv[1], int(sys.argv[2])
    count = [0]
    def hit():
        count[0] += 1
        return count[0] == nth
    if mode in ("kill-before-state", "fill-before-state"):
        import torch
        real = torch.save
        def save(obj, f, *a, **k):
            if str(f).endswith(("state.pt", "state.pt.tmp")) and hit():
                if mode == "kill-before-state":
                    os.kill(os.getpid(), signal.SIGKILL)
                with open(os.environ["FILLER"], "wb") as g:  # the disk fills up for real
                    try:
                        while True:
                            g.write(b"\\0" * 65536); g.flush()
                    except OSError:
                        pass
            return real(obj, f, *a, **k)
        torch.save = save
    if mode == "kill-in-synset-rename":
        real_rename = pathlib.Path.rename
        def rename(self, target):
            if self.name == "synset.tmp" and "checkpoint" in str(self) and hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rename(self, target)
        pathlib.Path.rename = rename
    if mode in ("SIGTERM", "SIGINT"):
        from vdfast.methods.dm import DM
        real_step = DM.step
        def step(self, *a):
            if hit():
                os.kill(os.getpid(), getattr(signal, mode))
            return real_step(self, *a)
        DM.step = step
    from vdfast.cli import main
    sys.exit(main(sys.argv[3:]))
""")

# the synset of a run, as bytes (the resumed one must equal the uninterrupted one)
SYNSET = "import sys; from safetensors.torch import load_file; t = load_file(sys.argv[1]); " \
         "print(sorted((k, v.double().sum().item(), v.abs().double().sum().item()) for k, v in t.items()))"


class Runner:
    def __init__(self, tree: Path, work: Path):
        self.tree, self.work = tree, work
        self.env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
                    "VDFAST_PROGRESS": "0"}

    def run(self, argv, mode="none", nth=0, timeout=600, **env):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", CHILD, mode, str(nth), *argv], cwd=self.work,
                           env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)
        r.seconds = time.perf_counter() - t
        return r

    def synset(self, out: Path) -> str:
        r = subprocess.run([sys.executable, "-c", SYNSET, str(out / "synset" / "synset.safetensors")],
                           env=self.env, capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else f"unreadable: {r.stderr[-200:]}"


def describe(r) -> str:
    text = (r.stdout + r.stderr).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln]
    if r.returncode == 0:
        return "exit 0"
    if "Traceback" in text:
        return f"exit {r.returncode}, traceback ({len(lines)} lines): {lines[-1][:110]}"
    if len([ln for ln in lines if ln.startswith("vdfast: error:")]) == 1:
        return f"refused clearly (exit {r.returncode}): {lines[-1][:110]}"
    return f"exit {r.returncode}: {(lines[-1] if lines else '')[:110]}"


def resumed(x: Runner, out: Path, ref: str, first) -> str:
    r = x.run(ARGS + ["--out", str(out)])
    if r.returncode != 0:
        return f"{first}; then: {describe(r)}"
    same = x.synset(out) == ref
    return f"{first}; then: " + ("resumed exactly" if same else "exit 0, SILENTLY WRONG synset")


def flip(f: Path, n=64):
    b = bytearray(f.read_bytes())
    at = len(b) // 2
    b[at:at + n] = bytes(v ^ 0xFF for v in b[at:at + n])
    f.write_bytes(bytes(b))


def cases(x: Runner, ref: str):
    w = x.work
    yield "kill after the synset, before state.pt (2nd checkpoint)", lambda: resumed(
        x, w / "torn", ref, describe(x.run(ARGS + ["--out", str(w / "torn")], "kill-before-state", 2)))
    yield "kill inside the synset's rename (2nd checkpoint)", lambda: resumed(
        x, w / "rename", ref,
        describe(x.run(ARGS + ["--out", str(w / "rename")], "kill-in-synset-rename", 2)))
    for what, rel in (("state.pt", "checkpoint/state.pt"),
                      ("synset.safetensors", "checkpoint/synset/synset.safetensors")):
        def damaged(what=what, rel=rel):
            out = w / f"flip-{what}"
            x.run([a if a != "6" else "4" for a in ARGS] + ["--out", str(out)])
            flip(out / rel)
            return resumed(x, out, ref, f"64 bytes flipped in {rel}")
        yield f"flipped {what} in the newest checkpoint", damaged

    def disk_full():
        mnt = w / "tmpfs"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True).returncode:
            return "not run (cannot mount a tmpfs here)"
        try:
            r = x.run(ARGS + ["--out", str(mnt / "run")], "fill-before-state", 2,
                      FILLER=str(mnt / "filler"))
            first = describe(r)
            shutil.copytree(mnt / "run", w / "copied")  # the repro: resume on a roomy disk
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        return resumed(x, w / "copied", ref, first)
    yield "disk full at the 2nd checkpoint (a real tmpfs)", disk_full

    for sig in ("SIGTERM", "SIGINT"):
        def signal_case(sig=sig):
            out = w / sig
            r = x.run(ARGS + ["--out", str(out)], sig, 3)
            said = [ln for ln in r.stderr.splitlines() if "interrupted" in ln]
            first = f"exit {r.returncode}" + (f" '{said[-1].strip()}'" if said else
                                              (", traceback" if "Traceback" in r.stderr else ""))
            return resumed(x, out, ref, first)
        yield f"{sig} during iteration 3", signal_case

    def two_runs():
        out = w / "two"
        ps = [subprocess.Popen([sys.executable, "-c", CHILD, "none", "0", *ARGS, "--out", str(out),
                                "--seed", str(s)], cwd=w, env=x.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for s in (0, 1)]
        rs = []
        for p in ps:
            o, e = p.communicate(timeout=600)
            rs.append(type("R", (), {"returncode": p.returncode, "stdout": o, "stderr": e})())
        return " | ".join(f"seed {s}: {describe(r)}" for s, r in zip((0, 1), rs))
    yield "two runs on one --out at once", two_runs

    def unwritable():
        r = x.run(ARGS + ["--out", "/proc/vdfast-x/run"])
        return f"{describe(r)} after {r.seconds:.1f} s"
    yield "--out /proc/x/run (unwritable)", unwritable

    def bad_options():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from test_faults import BAD  # the suite's list of bad options

        clear = tb = other = 0
        for name, (build, _) in BAD.items():
            t = Path(tempfile.mkdtemp(dir=w))
            r = x.run(build(t))
            d = describe(r)
            clear += d.startswith("refused clearly")
            tb += "traceback" in d
            other += not d.startswith("refused clearly") and "traceback" not in d
        return f"{len(BAD)} bad options: {clear} refused clearly, {tb} with a traceback, {other} other"
    yield "bad CLI options", bad_options

    def api_types():
        code = ("import vdfast\nfor v in ('a', 1.5, True):\n    try:\n        vdfast.distill("
                "method='dm', ipc=v, iterations=1, progress=False, **{'net.width': 4})\n"
                "        print(repr(v), 'accepted')\n    except Exception as e:\n"
                "        print(repr(v), type(e).__name__, str(e)[:60])\n")
        r = subprocess.run([sys.executable, "-c", code], env=x.env, capture_output=True, text=True,
                           cwd=w, timeout=600)
        return " | ".join(r.stdout.strip().splitlines())
    yield "API distill(ipc='a' / 1.5 / True)", api_types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vdfast-faults-"))
    x = Runner(Path(a.tree).resolve(), work)
    x.run(ARGS + ["--out", str(work / "ref")])
    ref = x.synset(work / "ref")
    print(f"tree {x.tree}\n\n| case | outcome |\n|---|---|")
    for name, fn in cases(x, ref):
        if a.only and not any(k in name for k in a.only.split(",")):
            continue
        print(f"| {name} | {fn().replace('|', '/')} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
