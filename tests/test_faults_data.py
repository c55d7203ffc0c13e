"""Fault injection on the data side: ``prepare`` (kills, damaged or full store files, hostile split
lists, odd file names), expert buffers (flipped bits, truncated files) and the CLI's early checks.

Like ``tests/test_faults.py``, each case ends resumed exactly or refused clearly (one line
``vdfast: error: ...`` naming the file or option); the videos are real (PyAV), the processes and
kills are real.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_faults import _mount_tmpfs  # noqa: E402  (tests/ is on sys.path)
from videos import make_ucf101

import vdfast
from vdfast.cli import main
from vdfast.data.store import ClipStore, StoreError

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VDFAST_PROGRESS": "0"}
SMALL = ["--frames", "4", "--gap", "1", "--size", "16"]


def assert_refused(rc, out, err, *needles):
    """One line, no traceback, non-zero, naming what it must."""
    text = (out + err).strip()
    assert rc not in (0, None), text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("vdfast: error: "), text
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _fds(pid: int) -> list[str]:
    """What the open descriptors of ``pid`` point to."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return out


# --------------------------------------------------------------------------- prepare: kills
# a child: `vdfast prepare --workers 2` whose decoders note their pid and take 2 s per file (the
# 12 files then take 12 s: the signal lands mid-decode even when a loaded machine stalls the test)
SLOW_PREPARE = textwrap.dedent("""
    import os, sys, time
    import vdfast.data.store as store
    real, pids = store._decode_one, sys.argv[1]
    def slow(args):
        open(os.path.join(pids, str(os.getpid())), "w").close()
        time.sleep(2.0)
        return real(args)
    store._decode_one = slow
    from vdfast.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_killed_prepare_leaves_no_workers_and_resumes(tmp_path, sig):
    """Outcome: resumed. The main process of ``prepare --workers 2`` killed mid-decode (SIGKILL:
    the OOM killer; SIGTERM: ``kill PID``; Ctrl-C: SIGINT to the whole process group): its pool
    workers die with it (none holds the store's lock), Ctrl-C prints one line (exit 130, no
    worker traceback), and the same command run again finishes the store."""
    made = make_ucf101(tmp_path / "ucf", groups=(1, 8, 9))
    out, pids = tmp_path / "store", tmp_path / "pids"
    pids.mkdir()
    argv = ["prepare", made.root, "--out", str(out), "--workers", "2", *SMALL]
    log = open(tmp_path / "log", "w")  # not a pipe: an orphaned worker would hold it open
    # SIGINT as a terminal leaves it: a suite started in the background of a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(pids), *argv], cwd=ROOT, env=ENV,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while len(os.listdir(pids)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(n) for n in os.listdir(pids)]
    assert len(workers) == 2, (tmp_path / "log").read_text()
    for w in workers:  # no worker holds a descriptor of the store's lock
        assert not [h for h in _fds(w) if h.endswith(".vdfast.lock")]
    if sig == "Ctrl-C":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(getattr(signal, sig))
    rc = p.wait(timeout=30)
    if sig == "Ctrl-C":
        text = (tmp_path / "log").read_text()
        assert rc == 130 and "Traceback" not in text, text
        assert [ln for ln in text.splitlines() if ln.strip()] == [
            "vdfast: interrupted; the last checkpoint, if one was written, is kept: run the same "
            "command again to resume"], text
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if _alive(w)]
    for w in left:  # do not leave them to the next test
        os.kill(w, signal.SIGKILL)
    assert not left, f"pool workers {left} outlived their parent"
    r = subprocess.run([sys.executable, "-m", "vdfast", *argv], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    store = ClipStore.open(out)
    assert sum(store.counts("train")) + sum(store.counts("test")) // store.test_clips == len(made.items)


KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys
    import vdfast.data.decode as decode
    real = decode.decode_clips
    def killer(item, *a, **k):  # the system kills the worker decoding this one file
        if os.fspath(getattr(item, "path", item)).endswith(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(item, *a, **k)
    decode.decode_clips = killer
    from vdfast.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_a_killed_pool_worker_names_its_file(tmp_path):
    """Outcome: refused clearly, then resumed: a pool worker killed (as by the OOM killer) while
    decoding one file ends prepare with one line naming that file; the same command then
    finishes the store."""
    made = make_ucf101(tmp_path / "ucf", groups=(1, 8, 9))
    c1 = made.classes[1]
    victim = f"v_{c1}_g09_c01.avi"
    argv = ["prepare", made.root, "--out", str(tmp_path / "store"), "--workers", "2", *SMALL]
    r = subprocess.run([sys.executable, "-c", KILLED_WORKER, victim, *argv], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    line = assert_refused(r.returncode, r.stdout, r.stderr, "a decode worker was killed",
                          f"while decoding {Path(made.root) / 'UCF-101' / c1 / victim}",
                          "run the same command again to resume")
    assert not (tmp_path / "store" / ".decoding").exists(), line
    r = subprocess.run([sys.executable, "-m", "vdfast", *argv], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ClipStore.open(tmp_path / "store").counts("train") == [2, 2, 2, 2]


# --------------------------------------------------------------------------- prepare: store files
@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "tmpfs"
    if not _mount_tmpfs(where, "2m"):
        pytest.skip("this machine does not let the test mount a tmpfs (needs root)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return make_ucf101(tmp_path_factory.mktemp("ucf") / "ucf", groups=(1, 8))


def test_disk_full_at_the_final_store_json_keeps_it_whole_and_resumes(ucf, tmpfs, monkeypatch,
                                                                     capsys):
    """Outcome: refused clearly, then resumed. The disk (a real tmpfs) fills just before the last
    write of store.json: prepare fails with "disk full", store.json is still whole (the earlier,
    incomplete one), and with space freed the same command finishes the store."""
    from vdfast.data import store as store_module

    out, filler = tmpfs / "store", tmpfs / "filler"
    write_json = store_module._write_json

    def fill_then_write(path, d):  # the disk fills just before the complete store.json is written
        if path.name == "store.json" and d.get("complete"):
            with open(filler, "wb", buffering=0) as f:
                for n in (65536, 4096, 1):  # to the last byte
                    try:
                        while True:
                            f.write(b"\0" * n)
                    except OSError:
                        pass
        write_json(path, d)
    monkeypatch.setattr(store_module, "_write_json", fill_then_write)
    rc = main(["prepare", ucf.root, "--out", str(out), *SMALL])
    o, e = capsys.readouterr()
    assert_refused(rc, o, e, "disk full at", "store.json")
    assert json.loads((out / "store.json").read_text())["complete"] is False
    monkeypatch.setattr(store_module, "_write_json", write_json)
    filler.unlink()
    assert main(["prepare", ucf.root, "--out", str(out), *SMALL]) == 0
    assert ClipStore.open(out).meta["complete"]


def test_damaged_store_json_is_named(ucf, tmp_path, capsys):
    """Outcome: refused clearly: a truncated store.json (or class report) is named, with what
    to delete, by prepare, by ClipStore.open and by distill --data."""
    out = tmp_path / "store"
    vdfast.prepare(ucf.root, out, frames=4, gap=1, size=16, progress=False)
    meta = out / "store.json"
    meta.write_text(meta.read_text()[:200])
    with pytest.raises(StoreError, match=f"{meta} is damaged .*delete it"):
        ClipStore.open(out)
    capsys.readouterr()
    for argv in (["prepare", ucf.root, "--out", str(out), *SMALL],
                 ["distill", "--data", str(out), "--iterations", "1", "--no-evaluate"]):
        rc = main(argv)
        assert_refused(rc, *capsys.readouterr(), f"{meta} is damaged")
    meta.unlink()  # what the message says: the finished classes are kept
    (out / "train" / "0000.npy.tmp-12345").write_bytes(b"half")  # a write killed part-way
    store = vdfast.prepare(ucf.root, out, frames=4, gap=1, size=16, progress=False)
    assert sum(store.counts("train")) == len(ucf.train)
    assert not list(out.rglob("*.tmp-*"))
    rep = out / "train" / "0001.json"
    rep.write_text("{")
    with pytest.raises(StoreError, match="0001.json is damaged .*delete it and 0001.npy"):
        store = ClipStore.open(out)
        store.train_fingerprint()


# --------------------------------------------------------------------------- expert buffers
MTT = {"num_experts": 2, "buffer_epochs": 3, "buffer_batch": 16, "max_start_epoch": 2,
       "expert_epochs": 1, "syn_steps": 2, "buffer_lr": 0.01, "lr_teacher": 0.01}


def _mtt_store():
    return ClipStore.builtin(train_per_class=3, test_per_class=1, frames=4, size=16)


def _mtt_run(store, buf, out=None, iterations=3):
    return vdfast.distill(store, method="mtt", ipc=1, iterations=iterations, out=out,
                          progress=False, checkpoint_every=0, **{"net.width": 4},
                          mtt={**MTT, "buffer": str(buf)})


def _buffer(tmp_path, store):
    from vdfast.config import NetConfig
    from vdfast.methods.experts import train_experts

    train_experts(store, tmp_path / "buf", num_experts=2, epochs=3, batch=16,
                  net_cfg=NetConfig(width=4, depth=2, norm="none"), progress=False)
    return tmp_path / "buf"


def test_flipped_bits_in_expert_rows_are_refused_naming_the_file(tmp_path):
    """Outcome: refused clearly. One bit flipped in every saved row of an expert's trajectory
    (the header intact): MTT refuses the first row it reads, naming the file, the epoch and what
    to delete, instead of training on it; the untouched buffer gives the run it always gave."""
    from vdfast.methods.experts import BufferError, _trajectory_bytes

    store = _mtt_store()
    buf = _buffer(tmp_path, store)
    ref = _mtt_run(store, buf).synset.data.clone()
    for f in sorted(buf.glob("*.safetensors")):
        size, (rows, p) = _trajectory_bytes(f)
        data = bytearray(f.read_bytes())
        start = size - rows * p * 4
        for r in range(rows):
            data[start + r * p * 4 + 5] ^= 0x01  # the lowest bit of a mantissa byte
        f.write_bytes(bytes(data))
    with pytest.raises(BufferError, match=r"expert_000\d\.safetensors: the parameters of epoch \d "
                                          r"do not match their sha256 .*delete expert_000\d\.json"):
        _mtt_run(store, buf)
    assert _mtt_run(store, _buffer(tmp_path / "again", store)).synset.data.equal(ref)


@pytest.mark.parametrize("what", ["json", "safetensors"])
def test_truncated_expert_file_is_named(tmp_path, what, caplog):
    """Outcome: refused clearly by MTT (the file named, what to delete), and resumed by
    ``vdfast experts``: a truncated sidecar there means that expert is trained again."""
    from vdfast.methods.experts import BufferError, ExpertBuffer

    store = _mtt_store()
    buf = _buffer(tmp_path, store)
    f = buf / f"expert_0001.{what}"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BufferError, match=rf"{f} is damaged .*delete expert_0001.json and "
                                          r"expert_0001.safetensors"):
        ExpertBuffer(buf)
    if what == "json":
        caplog.clear()
        _buffer(tmp_path, store)
        assert f"{f} is damaged" in caplog.text and "expert 1 is trained again" in caplog.text
        assert len(ExpertBuffer(buf)) == 2


# --------------------------------------------------------------------------- N processes
FAIL_RANK = textwrap.dedent("""
    import os, sys
    from vdfast.methods.dm import DM
    orig, calls = DM.step, [0]
    def step(self, *a):
        calls[0] += 1
        if calls[0] == 3 and os.environ.get("RANK") == "1":
            raise FloatingPointError("loss became NaN at iteration 3 (injected)")
        return orig(self, *a)
    DM.step = step
    from vdfast.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_failed_rank_is_reported_by_the_survivor_without_a_timeout(tmp_path):
    """Outcome: refused clearly, on both processes. Rank 1 of a 2-process distill fails at
    iteration 3 while rank 0 waits in a collective: rank 1 prints its error, rank 0 prints one
    line naming process 1 and its cause (no traceback), and neither waits for the group's
    timeout (2 minutes here) in a barrier the other never reaches."""
    import socket

    pytest.importorskip("accelerate")
    script = tmp_path / "fail.py"
    script.write_text(FAIL_RANK)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**ENV, "ACCELERATE_USE_CPU": "1", "VDFAST_DIST_TIMEOUT_MIN": "2"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(port), str(script), "distill", "--out", str(tmp_path / "run"), "--method", "dm",
           "--ipc", "1", "--iterations", "6", "--net-width", "4", "--batch-real", "2",
           "--no-evaluate", "--no-preview"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert time.time() - t0 < 100
    assert r.returncode != 0
    lines = [ln for ln in r.stdout.splitlines() + r.stderr.splitlines() if "vdfast: error" in ln]
    assert "vdfast: error: loss became NaN at iteration 3 (injected)" in lines, r.stderr[-3000:]
    assert ("vdfast: error: process 1 of 2 failed: loss became NaN at iteration 3 (injected); "
            "this process stopped with it") in lines, r.stderr[-3000:]
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("[rank")], r.stderr[:3000]


# --------------------------------------------------------------------------- early checks
def test_eval_out_is_checked_before_the_evaluation(tmp_path, capsys, monkeypatch):
    """Outcome: refused clearly, before any student is trained: ``vdfast eval --out FILE``."""
    import vdfast.evaluation

    run = tmp_path / "run"
    vdfast.distill(ClipStore.builtin(), method="random", ipc=1, out=run, progress=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setattr(vdfast.evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated first"))
    capsys.readouterr()
    rc = main(["eval", str(run / "synset"), "--out", str(afile)])
    assert_refused(rc, *capsys.readouterr(), f"--out {afile} exists and is not a directory")


def test_prepare_and_experts_check_free_space_first(ucf, tmpfs, capsys):
    """Outcome: refused clearly, before any decoding or training: a store or a buffer that cannot
    fit in the free space (a real 2 MiB tmpfs) is named with what it needs."""
    rc = main(["prepare", ucf.root, "--out", str(tmpfs / "store"), "--frames", "16", "--size", "112"])
    line = assert_refused(rc, *capsys.readouterr(), f"disk full at {tmpfs / 'store'}",
                          "this prepare needs about", "MiB are free")
    assert not list((tmpfs / "store").rglob("*.npy")), line
    rc = main(["experts", "--data", "builtin", "--out", str(tmpfs / "buf"), "--net-width", "4",
               "--mtt-num-experts", "30"])
    assert_refused(rc, *capsys.readouterr(), f"disk full at {tmpfs / 'buf'}",
                   "30 expert(s) needs about", "MiB are free", "another --out")
    assert not list((tmpfs / "buf").glob("expert_*"))


# --------------------------------------------------------------------------- labels on results
ARGS = ["distill", "--data", "builtin", "--method", "dm", "--ipc", "1", "--checkpoint-every", "2",
        "--net-width", "4", "--batch-real", "2", "--no-evaluate", "--no-preview"]


def test_finished_run_is_not_relabelled_with_fewer_iterations(tmp_path, capsys):
    """Outcome: refused clearly: a finished 4-iteration run started again with --iterations 2
    (its files would say 2 while the synset is iteration 4's); --iterations 4 still finds it done
    and --no-resume starts over."""
    out = tmp_path / "run"
    assert main(ARGS + ["--iterations", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(ARGS + ["--iterations", "2", "--out", str(out)])
    assert_refused(rc, *capsys.readouterr(), "checkpointed at iteration 4, past --iterations 2",
                   "--no-resume")
    assert json.loads((out / "metrics.json").read_text())["history"]["iterations"] == 4
    assert main(ARGS + ["--iterations", "4", "--out", str(out)]) == 0
    assert main(ARGS + ["--iterations", "2", "--out", str(out), "--no-resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["history"]["iterations"] == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_inf_learning_rates_are_refused(capsys, value, tmp_path):
    """Outcome: refused clearly before any work: --lr-img nan / inf (a run with it saved an
    all-NaN synset)."""
    rc = main(ARGS + ["--iterations", "1", f"--lr-img={value}", "--out", str(tmp_path / "r")])
    assert_refused(rc, *capsys.readouterr(), "lr_img must be > 0 and finite")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- names and encodings
def test_file_names_that_are_not_utf8(tmp_path):
    """Outcome: the store is prepared, exit 0. A train and a test video whose names are Latin-1
    bytes (listed so in the UCF lists) are found and decoded (the test video's random windows
    seeded by its bytes), a listed Latin-1 name that does not exist is reported by name, and a
    strict UTF-8 stdout prints the report (the name escaped) instead of failing after the store
    is written."""
    made = make_ucf101(tmp_path / "ucf", groups=(1, 8))
    c0 = made.classes[0]
    sd, vd = Path(made.root) / "ucfTrainTestlist", Path(made.root) / "UCF-101" / c0
    renamed = {}
    for g in ("01", "08"):
        old = f"v_{c0}_g{g}_c01.avi"
        new = os.fsdecode(f"v_{c0}_g{g}_caf".encode() + b"\xe9.avi")
        os.rename(vd / old, vd / new)
        renamed[old] = new
    for name in ("trainlist01.txt", "testlist01.txt"):
        body = (sd / name).read_bytes()
        for old, new in renamed.items():
            body = body.replace(old.encode(), os.fsencode(new))
        if name == "trainlist01.txt":
            body += f"{c0}/v_{c0}_g09_".encode() + b"na\xefve.avi 1\r\n"
        (sd / name).write_bytes(body)
    out = tmp_path / "store"
    env = {**ENV, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    r = subprocess.run([sys.executable, "-m", "vdfast", "prepare", made.root, "--out", str(out),
                        *SMALL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "na\\udcefve.avi" in r.stdout and "missing file" in r.stdout, r.stdout
    store = ClipStore.open(out)
    assert store.meta["skipped"] == []
    used = [u for s in ("train", "test")
            for u in json.loads((out / s / "0000.json").read_text())["used"]]
    assert sorted(Path(u).name for u in used if "caf" in u) == sorted(renamed.values())
    assert store.counts("train")[0] == 1 and store.counts("test")[0] == store.test_clips


# --------------------------------------------------------------------------- minor cases
def test_minor_data_cases(ucf, tmp_path, capsys):
    """Outcome: refused clearly, each naming the real cause: a class whose every train video was
    skipped (not "lower --ipc to at most 0"); ``prepare SRC --out SRC``; a --mtt-buffer that is a
    file (named as --mtt-buffer, not --out)."""
    from videos import write_corrupt

    made = make_ucf101(tmp_path / "bad", groups=(1, 8))
    c1 = made.classes[1]
    for p, label in made.train:
        if label == c1:
            write_corrupt(p)
    out = tmp_path / "store"
    assert main(["prepare", made.root, "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    rc = main(["distill", "--data", str(out), "--iterations", "1", "--no-evaluate", "--no-preview"])
    assert_refused(rc, *capsys.readouterr(), f"1 class(es) have no train clips ({c1})",
                   "skipped all their videos")

    rc = main(["prepare", ucf.root, "--out", ucf.root, *SMALL])
    assert_refused(rc, *capsys.readouterr(), "is the dataset folder itself")
    assert not (Path(ucf.root) / "store.json").exists()

    afile = tmp_path / "afile"
    afile.write_text("x")
    rc = main(["distill", "--data", "builtin", "--method", "mtt", "--iterations", "1",
               "--net-width", "4", "--net-norm", "instance", "--mtt-buffer", str(afile),
               "--no-evaluate", "--no-preview", "--out", str(tmp_path / "run")])
    assert_refused(rc, *capsys.readouterr(), f"--mtt-buffer {afile} exists and is not a directory")


PEAK = textwrap.dedent("""
    import sys
    from vdfast.data.decode import ClipSpec, decode_clips
    def hwm():  # peak RSS of this process image (ru_maxrss would carry the parent's over exec)
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) * 1024
    spec = ClipSpec(frames=16, gap=1, size=16)
    decode_clips(sys.argv[1], spec, clips=1, key="small")  # imports and codecs warmed up
    before = hwm()
    clips, _ = decode_clips(sys.argv[2], spec, clips=3, key="big")
    assert clips.shape == (3, 16, 16, 16, 3)
    print(hwm() - before)
""")


@pytest.mark.slow
def test_a_large_video_is_resized_frame_by_frame(tmp_path):
    """A 1920x1080 video: decoding its clips holds about one full-resolution frame at a time
    (each wanted frame is resized and cropped as it is decoded), not every wanted frame until
    the clips are assembled (one 4K test video raised prepare's peak RSS from 0.27 to 1.48 GB).
    The peak RSS of a real process, past its warm-up (the frames a decoder keeps itself count
    too: 8 frames of headroom, where holding every wanted frame took 16 or more)."""
    from videos import color_frames, write_video

    h, w = 1080, 1920
    small = write_video(tmp_path / "small.mp4", color_frames((40, 40, 200), 16), "h264")
    big = write_video(tmp_path / "big.mp4", color_frames((200, 40, 40), 16, h, w), "h264")
    r = subprocess.run([sys.executable, "-c", PEAK, small, big], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grew, frame = int(r.stdout.split()[-1]), h * w * 3
    assert grew < 8 * frame, f"peak RSS grew {grew / 2**20:.0f} MiB; a frame is {frame / 2**20:.1f} MiB"
