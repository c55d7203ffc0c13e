"""The fault cases of docs/faults.md against a source tree: what each one ends in.

    python benchmarks/fault_cases.py [--tree DIR] [--only NAME,...]

``--tree`` (default: this checkout) is put first on PYTHONPATH of every child process, so the
same cases run against another checkout (``git worktree add /tmp/main main``) for a before/after
table. Every fault is injected the same way on every tree (patched ``torch.save`` / ``Path.rename``
/ a method's ``step`` in a child process, real flipped files, a real tmpfs filled to the last
byte), and every case prints one row: ``resumed exactly`` (the same synset as an uninterrupted
run), ``refused clearly`` (non-zero, one line, no traceback), or what happened instead.
Needs root for the tmpfs cases (they are reported as not run otherwise).

The data cases write a small UCF101 tree with PyAV (``tests/videos.py``) and run ``prepare``
(a kill of ``--workers 2``, a disk that fills at ``store.json``'s last write, hostile split lists,
names that are not UTF-8), MTT on an expert buffer with flipped bits or a truncated sidecar, and
a 2-process distill whose rank 1 fails (``torchrun``, gloo).
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
    if mode == "slow-decode":  # each decode takes 0.3 s and notes its worker's pid
        import time
        import vdfast.data.decode as decode
        real_decode = decode.decode_clips
        def slow(*a, **k):
            open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w").close()
            time.sleep(0.3)
            return real_decode(*a, **k)
        decode.decode_clips = slow
    if mode == "fill-at-store-json":  # the disk fills just before the last store.json is written
        import json
        real_dumps = json.dumps
        def dumps(obj, *a, **k):
            if isinstance(obj, dict) and obj.get("complete") is True and "counts" in obj:
                with open(os.environ["FILLER"], "wb", buffering=0) as g:
                    for n in (65536, 4096, 1):  # to the last byte
                        try:
                            while True:
                                g.write(b"\\0" * n)
                        except OSError:
                            pass
            return real_dumps(obj, *a, **k)
        json.dumps = dumps
    if mode == "fail-rank-1":  # rank 1 of N raises at its nth DM step
        from vdfast.methods.dm import DM
        real_step = DM.step
        def step(self, *a):
            if os.environ.get("RANK") == "1" and hit():
                raise FloatingPointError("loss became NaN at iteration 3 (injected)")
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


# ------------------------------------------------------------------------------ data cases
SMALL = ["--frames", "4", "--gap", "1", "--size", "16"]


def _videos():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import videos

    return videos


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def data_cases(x: Runner):
    w = x.work
    v = _videos()
    ucf = v.make_ucf101(w / "ucf", groups=(1, 8, 9))

    def kill_prepare():
        out, pids = w / "killed-store", w / "pids"
        pids.mkdir()
        log = open(w / "killed.log", "w")
        p = subprocess.Popen([sys.executable, "-c", CHILD, "slow-decode", "0", "prepare", ucf.root,
                              "--out", str(out), "--workers", "2", *SMALL], cwd=w,
                             env={**x.env, "PIDS": str(pids)}, stdout=log, stderr=subprocess.STDOUT)
        t = time.time()
        while len(os.listdir(pids)) < 2 and time.time() - t < 60:
            time.sleep(0.05)
        workers = [int(n) for n in os.listdir(pids)]
        p.kill()
        p.wait()
        time.sleep(2)
        left = [q for q in workers if _alive(q)]
        r = x.run(["prepare", ucf.root, "--out", str(out), "--workers", "2", *SMALL])
        for q in left:
            os.kill(q, 9)
        return (f"{len(left)} of {len(workers)} workers alive 2 s later; then: "
                + ("resumed (exit 0)" if r.returncode == 0 else describe(r)))
    yield "SIGKILL of prepare --workers 2 mid-decode, then the same command", kill_prepare

    def store_json_full():
        mnt = w / "tmpfs-store"
        if not _tmpfs(mnt, "2m"):
            return "not run (cannot mount a tmpfs here)"
        try:
            out = mnt / "store"
            first = describe(x.run(["prepare", ucf.root, "--out", str(out), *SMALL],
                                   "fill-at-store-json", 0, FILLER=str(mnt / "filler")))
            (mnt / "filler").unlink(missing_ok=True)
            r = x.run(["prepare", ucf.root, "--out", str(out), *SMALL])
            then = "resumed (exit 0)" if r.returncode == 0 else describe(r)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        return f"{first}; then (space freed): {then}"
    yield "disk full at store.json's last write (a real tmpfs)", store_json_full

    def hostile_lists():
        made = v.make_ucf101(w / "lists", groups=(1, 8))
        sd = Path(made.root) / "ucfTrainTestlist"
        ci = sd / "classInd.txt"
        ci.write_bytes(b"\xef\xbb\xbf" + ci.read_bytes())
        c0, c1 = made.classes[0], made.classes[1]
        with open(sd / "trainlist01.txt", "a") as f:
            f.write(f"{c0}/v_{c0}_g08_c01.avi 1\r\n{c1}/v_{c1}_g01_c01.avi 2\r\n")
        r = x.run(["prepare", made.root, "--out", str(w / "lists-store"), *SMALL])
        if r.returncode:
            return describe(r)
        import json

        meta = json.loads((w / "lists-store" / "store.json").read_text())
        reported = [why for _, why in meta["listing_problems"]]
        return (f"exit 0, classes {len(meta['classes'])} of 4, train {sum(meta['counts']['train'])} "
                f"(4 distinct), reported: {len(reported)} ("
                + "; ".join(r_.split(":")[0].split("(")[0].strip() for r_ in reported) + ")")
    yield "split lists: a line twice, a test video in the train list, a BOM in classInd.txt", hostile_lists

    def not_utf8():
        made = v.make_ucf101(w / "names", groups=(1, 8))
        c0 = made.classes[0]
        vd, sd = Path(made.root) / "UCF-101" / c0, Path(made.root) / "ucfTrainTestlist"
        old = f"v_{c0}_g01_c01.avi"
        new = os.fsdecode(f"v_{c0}_g01_caf".encode() + b"\xe9.avi")
        os.rename(vd / old, vd / new)
        body = (sd / "testlist01.txt").read_bytes().replace(old.encode(), os.fsencode(new))
        (sd / "testlist01.txt").write_bytes(body)
        with open(sd / "trainlist01.txt", "ab") as f:
            f.write(f"{c0}/v_{c0}_g09_".encode() + b"na\xefve.avi 1\r\n")
        r = x.run(["prepare", made.root, "--out", str(w / "names-store"), *SMALL],
                  PYTHONIOENCODING="utf-8:strict")
        if r.returncode:
            return describe(r)
        import json

        meta = json.loads((w / "names-store" / "store.json").read_text())
        return (f"exit 0, {sum(meta['counts']['test'])} of 4 test videos stored, skipped "
                f"{len(meta['skipped'])}, listing problems {len(meta['listing_problems'])}")
    yield "non-UTF-8 file names (a Latin-1 test video, a missing one), strict stdout", not_utf8

    def eval_out_file():
        run = w / "random"
        x.run(["distill", "--data", "builtin", "--method", "random", "--ipc", "1", "--out", str(run),
               "--no-evaluate", "--no-preview"])
        afile = w / "afile"
        afile.write_text("x")
        r = x.run(["eval", str(run / "synset"), "--out", str(afile), "--eval-students", "1",
                   "--eval-epochs", "50"])
        return f"{describe(r)} after {r.seconds:.1f} s"
    yield "vdfast eval --out FILE", eval_out_file

    def relabel():
        out = w / "relabel"
        x.run([a if a != "6" else "4" for a in ARGS] + ["--out", str(out)])
        r = x.run([a if a != "6" else "2" for a in ARGS] + ["--out", str(out)])
        return describe(r)
    yield "finished 4-iteration run started again with --iterations 2", relabel

    def lr_nan():
        r = x.run(ARGS + ["--lr-img", "nan", "--out", str(w / "nan")])
        return describe(r)
    yield "--lr-img nan", lr_nan

    for case in expert_cases(x):
        yield case

    def two_ranks():
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        script = w / "child.py"
        script.write_text(CHILD)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", str(port), str(script), "fail-rank-1", "3", *ARGS,
                            "--out", str(w / "ranks")], cwd=w,
                           env={**x.env, "ACCELERATE_USE_CPU": "1", "VDFAST_DIST_TIMEOUT_MIN": "1"},
                           capture_output=True, text=True, timeout=600)
        secs = time.perf_counter() - t
        lines = [ln.strip() for ln in r.stdout.splitlines() + r.stderr.splitlines()
                 if "vdfast: error" in ln]
        tb = sum("Traceback" in ln for ln in r.stderr.splitlines() if ln.startswith("[rank"))
        return (f"{secs:.0f} s (group timeout 60 s), rank tracebacks {tb}, lines: "
                + " // ".join(ln[:120] for ln in lines))
    yield "2-process distill, rank 1 fails at iteration 3", two_ranks


MTT_ARGS = ["distill", "--data", "builtin", "--method", "mtt", "--ipc", "1", "--iterations", "3",
            "--net-width", "4", "--net-norm", "instance", "--mtt-num-experts", "2",
            "--mtt-buffer-epochs", "3", "--mtt-max-start-epoch", "2", "--mtt-expert-epochs", "1",
            "--mtt-syn-steps", "2", "--checkpoint-every", "0", "--no-evaluate", "--no-preview"]


def expert_cases(x: Runner):
    w = x.work

    def flipped_rows():
        buf = w / "buf-flip"
        r = x.run(MTT_ARGS + ["--mtt-buffer", str(buf), "--out", str(w / "mtt-ref")])
        if r.returncode:
            return f"reference run: {describe(r)}"
        ref = x.synset(w / "mtt-ref")
        import json
        import struct

        for f in sorted(buf.glob("*.safetensors")):
            b = bytearray(f.read_bytes())
            n = struct.unpack("<Q", bytes(b[:8]))[0]
            rows, p = json.loads(bytes(b[8:8 + n]))["trajectory"]["shape"]
            for i in range(rows):
                b[8 + n + i * p * 4 + 5] ^= 1
            f.write_bytes(bytes(b))
        r = x.run(MTT_ARGS + ["--mtt-buffer", str(buf), "--out", str(w / "mtt-flip")])
        if r.returncode == 0:
            return "exit 0, " + ("same synset" if x.synset(w / "mtt-flip") == ref
                                 else "SILENTLY WRONG synset")
        return describe(r)
    yield "MTT on a buffer with one bit flipped in every row", flipped_rows

    def truncated_sidecar():
        buf = w / "buf-trunc"
        x.run(MTT_ARGS + ["--mtt-buffer", str(buf), "--mtt-buffer-epochs", "3",
                          "--out", str(w / "mtt-t0")])
        j = buf / "expert_0001.json"
        j.write_bytes(j.read_bytes()[: j.stat().st_size // 2])
        # a buffer trained with other settings than these flags: used as it is (not retrained)
        r = x.run(MTT_ARGS + ["--mtt-buffer", str(buf), "--mtt-buffer-lr", "0.5",
                              "--out", str(w / "mtt-t1")])
        return describe(r)
    yield "MTT on a buffer whose expert_0001.json is truncated", truncated_sidecar


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
    for name, fn in [*cases(x, ref), *data_cases(x)]:
        if a.only and not any(k in name for k in a.only.split(",")):
            continue
        print(f"| {name} | {fn().replace('|', '/')} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
