"""Fault injection: kills, damaged files, full disks, two runs at once, bad options.

Every case ends in one of two outcomes, and the test says which:

* **resumed exactly**: running the same command again gives the synset (and loss history) of an
  uninterrupted run, bit for bit;
* **refused clearly**: a non-zero exit with one line ``vdfast: error: ...`` naming the file or
  option and what to do, no traceback.

Kills are real (SIGKILL of a child process at a named step of the checkpoint write: the child
wraps the calls the write makes, and the kill follows the step's call); damaged files are real files
flipped or truncated; a full disk is a real tmpfs where this machine lets the test mount one, and an
ENOSPC raised inside the write otherwise (both run where they can).
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vdfast
from vdfast.cli import main
from vdfast.config import ConfigError
from vdfast.engine import checkpoint
from vdfast.engine.checkpoint import CheckpointError, Checkpointer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")  # a shared 2-core machine: tiny runs
# the run every case uses: the embedded data, 6 iterations, a checkpoint every 2
ARGS = ["distill", "--data", "builtin", "--method", "dm", "--ipc", "1", "--iterations", "6",
        "--checkpoint-every", "2", "--net-width", "4", "--batch-real", "2", "--no-evaluate",
        "--no-preview"]
API = dict(method="dm", ipc=1, checkpoint_every=2, batch_real=2, progress=False,
           **{"net.width": 4})
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VDFAST_PROGRESS": "0"}
_STORE = []


def builtin():
    """The embedded store, generated once for this module's in-process runs (the children
    generate their own: the same clips, so the same checkpoint identity)."""
    if not _STORE:
        from vdfast.data.store import ClipStore

        _STORE.append(ClipStore.builtin())
    return _STORE[0]

# a child: the CLI, with a step of the checkpoint write (or a method's step) armed to fail. The
# steps are seen from outside, as the calls the write makes (vdfast.engine.checkpoint.Checkpointer.
# save): "synset" after the synset is written into checkpoint.tmp, "files" after all the caller's
# files are, "manifest" after the manifest is written and fsynced, "rotated" after the newest
# checkpoint is moved aside to checkpoint.prev, "swapped" after checkpoint.tmp is renamed into place
CHILD = textwrap.dedent("""
    import errno, os, signal, sys
    from pathlib import Path
    from vdfast.engine import checkpoint
    from vdfast.synsets.base import Synset
    mode, step, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = {}
    def at(name):
        if name != step:
            return
        seen[name] = seen.get(name, 0) + 1
        if seen[name] != nth:
            return
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", "state.pt")
        elif mode == "fill":  # fill the (small tmpfs) disk for real: the next write hits ENOSPC
            with open(os.environ["FILLER"], "wb") as f:
                try:
                    while True:
                        f.write(b"\\0" * 65536)
                        f.flush()
                except OSError:
                    pass
    synset_save = Synset.save
    def synset_save_(self, path):
        r = synset_save(self, path)
        if Path(path).parent.name == "checkpoint.tmp":
            at("synset")
        return r
    Synset.save = synset_save_
    save = checkpoint.Checkpointer.save
    def save_(self, iteration, write, **meta):
        def write_(d):
            write(d)
            at("files")
        return save(self, iteration, write_, **meta)
    checkpoint.Checkpointer.save = save_
    fsync_file = checkpoint.fsync_file
    def fsync_file_(path):
        fsync_file(path)
        if Path(path).name == checkpoint.MANIFEST:
            at("manifest")
    checkpoint.fsync_file = fsync_file_
    replace = os.replace
    def replace_(src, dst, **kw):
        replace(src, dst, **kw)
        if Path(dst).name == "checkpoint.prev":
            at("rotated")
        elif Path(src).name == "checkpoint.tmp":
            at("swapped")
    os.replace = replace_
    if mode in ("SIGTERM", "SIGINT"):  # the signal arrives during iteration `nth`
        from vdfast.methods.dm import DM
        orig, calls = DM.step, [0]
        def step_(self, *a):
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), getattr(signal, mode))
            return orig(self, *a)
        DM.step = step_
    from vdfast.cli import main
    sys.exit(main(sys.argv[4:]))
""")


def child(mode, step, nth, args, **env):
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, step, str(nth), *args],
                            cwd=ROOT, env={**ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (what every resumed run must reproduce exactly)."""
    res = vdfast.distill(builtin(), iterations=6, out=tmp_path_factory.mktemp("ref"), **API)
    return res.synset.data.clone(), list(res.history["loss"])


def resume(out, iterations=6):
    """The same command again, in this process (the files are real; only the child died)."""
    res = vdfast.distill(builtin(), iterations=iterations, out=out, **API)
    return res.synset.data, list(res.history["loss"])


def assert_exact(got, reference):
    assert torch.equal(got[0], reference[0]), "resumed run differs from the uninterrupted one"
    assert got[1] == reference[1]


def assert_refused(rc, out, err, *needles):
    """One line, no traceback, non-zero, naming what it must."""
    text = (out + err).strip()
    assert rc not in (0, None), text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vdfast: error: "), text
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- kills mid-write
# (step of the checkpoint write, the how-manieth time the run reaches that step (saves at
# iterations 2, 4, 6; the first save has no newest to move aside), iteration the next run resumes
# from)
KILLS = [("synset", 1, 0), ("files", 1, 0), ("manifest", 1, 2),
         ("synset", 2, 2), ("files", 2, 2), ("manifest", 2, 2), ("rotated", 1, 4),
         ("swapped", 2, 4)]


@pytest.mark.slow
def test_kill_at_each_step_of_a_checkpoint_write_resumes_exactly(reference, tmp_path, caplog):
    """Outcome: resumed exactly, for a SIGKILL between every two steps of the write (synset
    written / all files written and fsynced / manifest written / newest moved aside / new one
    swapped in), in the first checkpoint (nothing earlier: a fresh start, or the whole .tmp moved
    into place) and in the second."""
    procs = []
    for step, nth, _ in KILLS:
        out = tmp_path / f"{step}-{nth}"
        procs.append(child("kill", step, nth, ARGS + ["--out", str(out)]))
    for (step, nth, frm), p in zip(KILLS, procs):
        rc, o, e = finish(p)
        assert rc == -signal.SIGKILL, (step, nth, rc, e)
        out = tmp_path / f"{step}-{nth}"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vdfast"):
            assert_exact(resume(out), reference)
        said = "\n".join(r.getMessage() for r in caplog.records)
        if frm:
            assert f"resuming dm from iteration {frm} " in said, (step, nth, said)
        else:
            assert "resuming" not in said, (step, nth, said)
        assert not (out / "checkpoint.tmp").exists()


# --------------------------------------------------------------------------- damaged files
def _run_to_4(out):
    """A run stopped after its checkpoint at 4 (the one at 2 kept as checkpoint.prev)."""
    vdfast.distill(builtin(), iterations=4, out=out, **API)
    assert json.loads((out / "checkpoint" / "manifest.json").read_text())["iteration"] == 4
    assert json.loads((out / "checkpoint.prev" / "manifest.json").read_text())["iteration"] == 2


def _flip(f: Path, n=64):
    b = bytearray(f.read_bytes())
    at = len(b) // 2
    b[at:at + n] = bytes(x ^ 0xFF for x in b[at:at + n])
    f.write_bytes(bytes(b))


def _truncate(f: Path):
    b = f.read_bytes()
    f.write_bytes(b[: len(b) // 2])


DAMAGE = {
    "flipped state.pt": lambda c: _flip(c / "state.pt"),
    "flipped synset.safetensors": lambda c: _flip(c / "synset" / "synset.safetensors"),
    "truncated state.pt": lambda c: _truncate(c / "state.pt"),
    "truncated synset.safetensors": lambda c: _truncate(c / "synset" / "synset.safetensors"),
    "deleted synset.json": lambda c: (c / "synset" / "synset.json").unlink(),
    "garbled manifest.json": lambda c: (c / "manifest.json").write_text("{not json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_resumes_exactly(reference, tmp_path, caplog,
                                                                 damage):
    """Outcome: resumed exactly, from the previous checkpoint (iteration 2), with a warning that
    names the damaged file."""
    out = tmp_path / "run"
    _run_to_4(out)
    DAMAGE[damage](out / "checkpoint")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vdfast"):
        assert_exact(resume(out), reference)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert any(str(out / "checkpoint") in w for w in warned) and "resuming dm from iteration 2" in said


def test_both_checkpoints_damaged_is_refused_clearly(tmp_path, capsys):
    """Outcome: refused clearly (the file named, --no-resume offered); --no-resume then starts
    over and finishes."""
    out = tmp_path / "run"
    _run_to_4(out)
    _flip(out / "checkpoint" / "state.pt")
    _flip(out / "checkpoint.prev" / "synset" / "synset.safetensors")
    capsys.readouterr()
    rc = main(ARGS + ["--out", str(out)])
    o, e = capsys.readouterr()
    line = assert_refused(rc, o, e, str(out / "checkpoint" / "state.pt"), "--no-resume")
    assert "sha256" in line
    assert main(ARGS + ["--out", str(out), "--no-resume"]) == 0


def test_checkpoint_of_an_older_vdfast_is_refused_clearly(tmp_path, capsys):
    """Outcome: refused clearly. The layout of earlier vdfast (``checkpoint/state.pt`` beside
    ``checkpoint/synset/``, no manifest) could hold a synset and a state of different iterations
    (the torn checkpoint of the issue), and nothing can tell: it is refused, naming --no-resume."""
    out = tmp_path / "run"
    _run_to_4(out)
    for d in ("checkpoint", "checkpoint.prev"):
        (out / d / "manifest.json").unlink()
    capsys.readouterr()
    rc = main(ARGS + ["--out", str(out)])
    o, e = capsys.readouterr()
    assert_refused(rc, o, e, "older vdfast", "--no-resume")


def test_other_settings_in_the_same_out_are_refused_clearly(tmp_path, capsys):
    """Outcome: refused clearly, with the differences."""
    out = tmp_path / "run"
    _run_to_4(out)
    capsys.readouterr()
    rc = main(ARGS + ["--out", str(out), "--seed", "3"])
    o, e = capsys.readouterr()
    assert_refused(rc, o, e, "other settings", "seed: 0 -> 3", "--no-resume")


def test_checkpointer_unit_behaviour(tmp_path):
    """The directory protocol on its own: a save beside a newest one keeps exactly one older one;
    a torn .tmp is never read; the newest is what load returns."""
    ck = Checkpointer(tmp_path / "c", kind="t")
    assert ck.load() is None and not ck.exists()
    for it in (1, 2, 3):
        ck.save(it, lambda d, it=it: (d / "x.bin").write_bytes(bytes([it]) * 10), identity={"a": 1})
    assert ck.load().iteration == 3 and ck.load().identity == {"a": 1}
    assert json.loads((ck.prev / "manifest.json").read_text())["iteration"] == 2
    ck.tmp.mkdir()
    (ck.tmp / "x.bin").write_bytes(b"torn")  # no manifest: never read
    assert ck.load().iteration == 3
    with pytest.raises(CheckpointError, match="kind"):
        Checkpointer(tmp_path / "c", kind="other").load()


# --------------------------------------------------------------------------- disk full
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "tmpfs"
    if not _mount_tmpfs(where, "16m"):
        pytest.skip("this machine does not let the test mount a tmpfs (needs root); "
                    "test_disk_full_raised_inside_the_write covers the same path")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_disk_full_on_a_real_tmpfs_keeps_the_last_checkpoint(reference, tmpfs, tmp_path, capsys):
    """Outcome: refused clearly ("disk full at PATH", the checkpoint of iteration 2 intact), then,
    with space freed, resumed exactly. The disk fills for real (a filler file written at the
    second checkpoint's first step), so torch.save itself meets ENOSPC."""
    out, filler = tmpfs / "run", tmpfs / "filler"
    rc, o, e = finish(child("fill", "synset", 2, ARGS + ["--out", str(out)], FILLER=str(filler)))
    assert_refused(rc, o, e, f"disk full at {tmpfs}", "iteration 2", "is intact")
    assert not (out / "checkpoint.tmp").exists()
    filler.unlink()
    assert_exact(resume(out), reference)


def test_a_too_small_disk_is_refused_before_the_work(tmp_path, capsys):
    """Outcome: refused clearly, before the first iteration: the free space is checked against
    what the run writes (a checkpoint beside the last one, and the result)."""
    where = tmp_path / "tiny"
    if not _mount_tmpfs(where, "1m"):
        pytest.skip("this machine does not let the test mount a tmpfs (needs root)")
    try:
        capsys.readouterr()
        rc = main(ARGS + ["--out", str(where / "run")])
        o, e = capsys.readouterr()
        assert_refused(rc, o, e, f"disk full at {where / 'run'}", "MiB are free")
        assert not (where / "run" / "checkpoint").exists()
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_disk_full_raised_inside_the_write(reference, tmp_path):
    """Outcome: refused clearly, then resumed exactly: ENOSPC raised between two steps of the
    write (where no tmpfs can be mounted, this is the disk-full case)."""
    out = tmp_path / "run"
    rc, o, e = finish(child("enospc", "files", 2, ARGS + ["--out", str(out)]))
    assert_refused(rc, o, e, f"disk full at {out}", "iteration 2", "is intact")
    assert_exact(resume(out), reference)


# --------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_saves_at_the_next_iteration_and_resumes_exactly(reference, tmp_path, caplog,
                                                               sig, code):
    """Outcome: resumed exactly. SIGTERM / SIGINT during iteration 3 (between checkpoints) save a
    checkpoint at iteration 3, print the one line that says how to continue, exit 143 / 130."""
    out = tmp_path / "run"
    rc, o, e = finish(child(sig, "-", 3, ARGS + ["--out", str(out)]))
    assert rc == code, (rc, e)
    assert "interrupted at iteration 3; continue with --resume" in e and "Traceback" not in e
    assert json.loads((out / "checkpoint" / "manifest.json").read_text())["iteration"] == 3
    caplog.clear()  # the library's log, whether or not an earlier test configured the CLI's printing
    with caplog.at_level(logging.INFO, logger="vdfast"):
        assert_exact(resume(out), reference)
    assert "resuming dm from iteration 3" in caplog.text


# --------------------------------------------------------------------------- one run per --out
HOLD = textwrap.dedent("""
    import sys
    from vdfast.engine.checkpoint import RunLock
    with RunLock(sys.argv[1], "distill"):
        print("held", flush=True)
        sys.stdin.read()
""")


@pytest.mark.slow
@pytest.mark.parametrize("cmd", ["distill", "experts", "prepare"])
def test_second_run_on_one_out_is_refused_at_once(tmp_path, capsys, cmd):
    """Outcome: refused clearly, naming the holder's pid and host; once the holder is gone the
    directory is free again."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = {"distill": ARGS + ["--out", str(out)],
                "experts": ["experts", "--data", "builtin", "--out", str(out)],
                "prepare": ["prepare", str(tmp_path), "--out", str(out)]}[cmd]
        capsys.readouterr()
        rc = main(argv)
        o, e = capsys.readouterr()
        assert_refused(rc, o, e, f"pid {holder.pid}", f"host {socket.gethostname()}", "another --out")
    finally:
        holder.communicate("", timeout=30)
    with checkpoint.RunLock(out):  # released with its holder
        pass


@pytest.mark.slow
def test_two_real_runs_at_once_one_is_refused(tmp_path):
    """Outcome: refused clearly: two real distillations started together on one --out; one
    finishes, the other is refused at once (before its first iteration), so no result is mixed."""
    out = tmp_path / "run"
    a = child("none", "-", 0, ARGS + ["--out", str(out), "--seed", "0"])
    b = child("none", "-", 0, ARGS + ["--out", str(out), "--seed", "1"])
    (ra, oa, ea), (rb, ob, eb) = finish(a), finish(b)
    assert sorted([ra == 0, rb == 0]) == [False, True], (ea, eb)
    o, e, rc = (oa, ea, ra) if ra else (ob, eb, rb)
    # refused by the lock, or (if the first had already finished) by the checkpoint's identity
    line = assert_refused(rc, o, e)
    assert "in use by another vdfast" in line or "other settings" in line


# --------------------------------------------------------------------------- bad options
def _file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


BAD = {  # name: (argv builder, what the one line must name)
    "ipc 0": (lambda t: ARGS + ["--ipc", "0"], "ipc"),
    "ipc a": (lambda t: ARGS + ["--ipc", "a"], "--ipc"),
    "ipc too large": (lambda t: ARGS + ["--ipc", "1000"], "1000"),
    "method": (lambda t: ARGS + ["--method", "nope"], "nope"),
    "iterations -1": (lambda t: ARGS + ["--iterations", "-1"], "iterations"),
    "lr-img 0": (lambda t: ARGS + ["--lr-img", "0"], "lr_img"),
    "momentum 1.5": (lambda t: ARGS + ["--momentum", "1.5"], "momentum"),
    "device tpu": (lambda t: ARGS + ["--device", "tpu"], "tpu"),
    "device cuda": (lambda t: ARGS + ["--device", "cuda"], "cuda"),
    "init": (lambda t: ARGS + ["--init", "zeros"], "zeros"),
    "preset": (lambda t: ARGS + ["--preset", "huge"], "huge"),
    "net-width 0": (lambda t: ARGS + ["--net-width", "0"], "width"),
    "net-norm": (lambda t: ARGS + ["--net-norm", "group"], "group"),
    "batch-real 0": (lambda t: ARGS + ["--batch-real", "0"], "batch_real"),
    "checkpoint-every -1": (lambda t: ARGS + ["--checkpoint-every", "-1"], "checkpoint_every"),
    "profile -1": (lambda t: ARGS + ["--profile", "-1"], "profile"),
    "eval-student": (lambda t: ARGS + ["--eval-student", "vit"], "vit"),
    "mtt epochs": (lambda t: ARGS + ["--mtt-max-start-epoch", "100"], "max_start_epoch"),
    "gvd ema": (lambda t: ARGS + ["--gvd-ema", "2"], "ema"),
    "unknown flag": (lambda t: ARGS + ["--frobnicate"], "--frobnicate"),
    "unknown command": (lambda t: ["frobnicate"], "frobnicate"),
    "data missing": (lambda t: ARGS + ["--data", str(t / "nope")], "does not exist"),
    "data not a store": (lambda t: ARGS + ["--data", str(t)], "vdfast prepare"),
    "out is a file": (lambda t: ARGS + ["--out", str(_file(t))], "not a directory"),
    "out under a file": (lambda t: ARGS + ["--out", str(_file(t) / "run")], "--out"),
    "out unwritable": (lambda t: ARGS + ["--out", "/proc/vdfast-test/run"], "/proc/vdfast-test/run"),
    "eval synset missing": (lambda t: ["eval", str(t / "nope")], "synset"),
    "preview synset missing": (lambda t: ["preview", str(t / "nope")], "synset"),
    "prepare source missing": (lambda t: ["prepare", str(t / "nope"), "--out", str(t / "s")], "nope"),
    "prepare workers -3": (lambda t: ["prepare", str(t), "--out", str(t / "s"), "--workers", "-3"], "workers"),
    "prepare frames 0": (lambda t: ["prepare", str(t), "--out", str(t / "s"), "--frames", "0"], "frames"),
    "prepare empty folder": (lambda t: ["prepare", str(t), "--out", str(t / "s")], "dataset layout"),
    "experts out is a file": (lambda t: ["experts", "--out", str(_file(t))], "not a directory"),
    "experts data missing": (lambda t: ["experts", "--data", str(t / "nope"), "--out", str(t / "b")], "does not exist"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_option_is_one_line_without_traceback(tmp_path, capsys, monkeypatch, name):
    """Outcome: refused clearly (one line, no traceback, non-zero) before any work. Run in an empty
    folder: a case without --out must not meet the checkout's own runs/ (e.g. `make run`'s)."""
    monkeypatch.chdir(tmp_path)
    build, needle = BAD[name]
    capsys.readouterr()
    try:
        rc = main(build(tmp_path))
    except SystemExit as e:  # argparse
        rc = e.code
    o, e = capsys.readouterr()
    assert_refused(rc, o, e, needle)


@pytest.mark.slow
def test_bad_options_in_real_processes_and_debug_traceback(tmp_path):
    """The same from a real ``vdfast`` process (a representative few), and ``--debug`` /
    ``VDFAST_DEBUG=1`` bringing the traceback back."""
    cli = [sys.executable, "-m", "vdfast"]
    for argv, needle in ((ARGS + ["--out", "/proc/vdfast-test/run"], "/proc/vdfast-test/run"),):
        r = subprocess.run(cli + argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert_refused(r.returncode, r.stdout, r.stderr, needle)
    r = subprocess.run(cli + ARGS + ["--ipc", "0", "--debug"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr
    with pytest.raises(ConfigError):
        main(ARGS + ["--ipc", "0", "--debug"])


@pytest.mark.parametrize("bad,field", [({"ipc": "a"}, "ipc"), ({"ipc": 1.5}, "ipc"),
                                       ({"ipc": True}, "ipc"), ({"lr_img": "1"}, "lr_img"),
                                       ({"iterations": 2.0}, "iterations"),
                                       ({"net.width": True}, "net.width"),
                                       ({"eval": {"epochs": 1.5}}, "eval.epochs"),
                                       ({"mtt": {"learn_lr": 1}}, "mtt.learn_lr")])
def test_api_validates_types_naming_the_field(bad, field):
    """Outcome: refused clearly (ConfigError naming the field) before any work; bool is not an
    int here, and an int is not a bool."""
    with pytest.raises(ConfigError, match=rf"^{field}="):
        vdfast.distill(builtin(), **{"method": "dm", "iterations": 1, "progress": False, **bad})


# --------------------------------------------------------------------------- minor items
def test_minor_items(tmp_path, capsys, monkeypatch):
    """A finished run started again keeps its peak memory; --iterations 0 is named as such; the
    NaN error names the checkpoint that exists (or that none does); skip reasons do not repeat
    the file's path."""
    out = tmp_path / "run"
    vdfast.distill(builtin(), iterations=2, out=out, **API)
    peak = json.loads((out / "metrics.json").read_text())["history"]["peak_memory_mb"]
    vdfast.distill(builtin(), iterations=2, out=out, **API)  # finished: nothing left to do
    again = json.loads((out / "metrics.json").read_text())["history"]["peak_memory_mb"]
    assert peak > 0 and again == peak

    capsys.readouterr()
    assert main(ARGS + ["--iterations", "0", "--out", str(tmp_path / "zero")]) == 0
    assert "0 iterations (the initialisation itself)" in capsys.readouterr().out

    from vdfast.methods.dm import DM

    real_step, calls = DM.step, [0]

    def nan_after_4(self, *a):
        calls[0] += 1
        loss = real_step(self, *a)
        return loss * float("nan") if calls[0] > 4 else loss

    monkeypatch.setattr(DM, "step", nan_after_4)
    with pytest.raises(FloatingPointError, match=r"last checkpoint \(iteration 4\) is in .*checkpoint"):
        vdfast.distill(builtin(), iterations=12, out=tmp_path / "nan", **API)
    calls[0] = 0
    with pytest.raises(FloatingPointError, match="no checkpoint was written before it"):
        vdfast.distill(builtin(), iterations=12, out=tmp_path / "nan2",
                       **{**API, "checkpoint_every": 0})

    from vdfast.data.store import _without_path

    p = "/data/x/a.avi"
    why = _without_path(f"{p}: cannot open as a video (InvalidDataError: [Errno 1] Invalid data "
                        f"found when processing input: '{p}')", p)
    assert p not in why and why.startswith("cannot open as a video")


# --------------------------------------------------------------------------- GVD stages
def test_gvd_stage_checkpoint_falls_back_and_a_damaged_stage_file_is_named(tmp_path, caplog):
    """Outcome: resumed exactly. GVD's autoencoder stage keeps its resumable state as verified
    checkpoints (``ae-state/``): a damaged newest one falls back to the one before with a warning.
    Refused clearly: a damaged final weights file is named, with what to do."""
    import dataclasses

    from vdfast.config import GVDConfig
    from vdfast.data.store import ClipStore

    from vdfast.methods.gvd import train_autoencoder

    store = ClipStore.builtin(train_per_class=4, test_per_class=1, frames=4, size=16)
    g = GVDConfig(ae_down=4, ae_width=4, ae_steps=6, ae_batch=4, checkpoint_every=2)
    full = train_autoencoder(store, g, 0, "cpu", tmp_path / "full", progress=False).state_dict()
    cut = tmp_path / "cut"
    train_autoencoder(store, dataclasses.replace(g, ae_steps=4), 0, "cpu", cut, progress=False)
    (cut / "ae_final.safetensors").unlink()  # as if killed after step 4
    assert json.loads((cut / "ae-state" / "manifest.json").read_text())["iteration"] == 4
    _flip(cut / "ae-state" / "state.pt")
    with caplog.at_level(logging.WARNING, logger="vdfast"):
        res = train_autoencoder(store, g, 0, "cpu", cut, progress=False).state_dict()
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "state.pt" in r.getMessage()]
    assert all(torch.equal(res[k], v) for k, v in full.items())
    # a damaged cached stage file is named, with what to do
    _truncate(cut / "ae_final.safetensors")
    with pytest.raises(CheckpointError, match=r"ae_final.safetensors is damaged.*delete it"):
        train_autoencoder(store, g, 0, "cpu", cut, progress=False)


def test_damaged_expert_trajectory_restarts_that_expert_exactly(tmp_path, capsys):
    """Outcome: resumed exactly. An interrupted expert whose saved rows no longer match the
    checksums in its sidecar (flipped bytes) restarts from epoch 0 with a warning, and ends as
    the uninterrupted one (instead of continuing from damaged parameters)."""
    from vdfast.config import NetConfig
    from vdfast.data.store import ClipStore
    from vdfast.methods.experts import expert_paths, train_experts

    store = ClipStore.builtin(train_per_class=4, test_per_class=1, frames=4, size=16)
    kw = dict(num_experts=1, epochs=3, batch=16, lr=0.05, net_cfg=NetConfig(width=4, depth=1, norm="none"),
              progress=False)
    (ref,) = train_experts(store, tmp_path / "ref", **kw)
    (f,) = train_experts(store, tmp_path / "cut", **kw)
    _, j = expert_paths(tmp_path / "cut", 0)
    side = json.loads(j.read_text())
    side.update(epochs_done=2, complete=False)  # as if killed after epoch 2
    j.write_text(json.dumps(side))
    _flip(f, n=16)
    capsys.readouterr()
    train_experts(store, tmp_path / "cut", **kw)
    assert "restarts from epoch 0" in capsys.readouterr().out
    assert f.read_bytes() == ref.read_bytes()


def test_damaged_static_memory_is_named(tmp_path):
    """Outcome: refused clearly. A static memory file whose tensors no longer match the sha256
    in its ``static.json`` is refused naming the file (a cache entry is learned again instead,
    :func:`vdfast.methods.static.get_static`)."""
    from vdfast.methods.static import StaticMemoryError, load_static, save_static

    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    d = save_static(tmp_path / "s", x, ["a", "b"], (0.5,) * 3, (0.2,) * 3)
    assert torch.equal(load_static(d)[0], x)
    _flip(d / "static.safetensors", n=8)
    with pytest.raises(StaticMemoryError, match=r"static.safetensors .*sha256.*damaged"):
        load_static(d)


def test_signal_flag_and_gvd_stage_stop(capsys, tmp_path):
    """Inside ``handle_signals`` a SIGINT only sets the flag (and says so); a GVD training loop
    then saves and stops with :class:`Interrupted` (exit code 130), and so does its sampling
    (:func:`vdfast.engine.worklist.run_worklist`: after the chunk it arrived in, that chunk kept);
    outside, the previous handler is back."""
    from vdfast.engine.loop import Loop
    from vdfast.engine.worklist import run_worklist

    before = signal.getsignal(signal.SIGINT)
    saved = []
    with checkpoint.handle_signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert checkpoint.interrupt_requested() == signal.SIGINT
        assert "stopping after this iteration" in capsys.readouterr().err
        with pytest.raises(checkpoint.Interrupted) as e:
            Loop(total=10, start=6, progress=False, window=1, save_at_end=False,
                 save=lambda done, pending: saved.append(done), what="gvd generator step").run(
                lambda i: None)
        with pytest.raises(checkpoint.Interrupted) as s:
            run_worklist(range(3), lambda c: tmp_path / f"chunk{c:05d}.pt", lambda c, tick: c,
                         lambda c, tmp: tmp.write_text(str(c)), progress=False,
                         stop="gvd sampling chunk")
    assert saved == [7] and e.value.exit_code == 130
    assert str(e.value) == "interrupted at gvd generator step 7; continue with --resume"
    assert str(s.value) == "interrupted at gvd sampling chunk 1; continue with --resume"
    assert s.value.exit_code == 130 and [p.name for p in tmp_path.iterdir()] == ["chunk00000.pt"]
    assert checkpoint.interrupt_requested() == 0 and signal.getsignal(signal.SIGINT) is before
