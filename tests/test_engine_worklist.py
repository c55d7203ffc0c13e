"""vdfast.engine.worklist.run_worklist: done items skipped, atomic item files, stop on a signal."""
import os
import signal

import pytest

from vdfast.engine import checkpoint
from vdfast.engine.worklist import run_worklist


def _run(folder, computed, stop=None, fail_at=None, **kw):
    def compute(i, tick):
        if i == fail_at:
            raise KeyboardInterrupt  # a run killed while computing item i
        computed.append(i)
        return f"item {i}\n"

    return run_worklist(range(5), lambda i: folder / f"{i}.txt", compute,
                        lambda text, tmp: tmp.write_text(text), progress=False, stop=stop, **kw)


def _files(folder):
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_every_item_written_then_a_rerun_computes_nothing(tmp_path):
    computed, values = [], []
    assert _run(tmp_path, computed, after=lambda i, v: values.append((i, v))) == 5
    assert computed == [0, 1, 2, 3, 4] and values == [(i, f"item {i}\n") for i in range(5)]
    assert _files(tmp_path) == {f"{i}.txt": f"item {i}\n" for i in range(5)}
    again, loaded = [], []
    assert _run(tmp_path, again, load=lambda i, p: loaded.append((i, p.read_text())),
                after=lambda i, v: values.append("not done")) == 0
    assert again == [] and loaded == values  # the done items' values, read back, in order


def test_a_killed_run_resumes_at_the_first_missing_item(tmp_path):
    computed = []
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, computed, fail_at=3)
    assert computed == [0, 1, 2] and sorted(_files(tmp_path)) == ["0.txt", "1.txt", "2.txt"]
    again = []
    assert _run(tmp_path, again) == 2 and again == [3, 4]
    assert _files(tmp_path) == {f"{i}.txt": f"item {i}\n" for i in range(5)}


def _reference_and_empty(tmp_path):
    """A folder with the whole list's files, and an empty one beside it."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    out.mkdir()
    _run(ref, [])
    return ref, out


def test_a_stop_between_items_raises_interrupted_and_a_rerun_completes(tmp_path):
    ref, out = _reference_and_empty(tmp_path)
    computed = []
    with checkpoint.handle_signals():
        def compute_then_signal(i, v):
            if i == 1:  # the signal arrives while item 1 is computed
                os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(checkpoint.Interrupted) as e:
            _run(out, computed, stop="test item", after=compute_then_signal)
    assert computed == [0, 1] and sorted(_files(out)) == ["0.txt", "1.txt"]  # item 1 is kept
    assert e.value.exit_code == 143 and e.value.iteration == 2
    assert str(e.value) == "interrupted at test item 2; continue with --resume"
    again = []
    _run(out, again, stop="test item")  # outside handle_signals nothing is pending
    assert again == [2, 3, 4] and _files(out) == _files(ref)


def test_without_stop_a_signal_does_not_end_the_list(tmp_path):
    computed = []
    with checkpoint.handle_signals():
        os.kill(os.getpid(), signal.SIGINT)
        _run(tmp_path, computed)
    assert computed == [0, 1, 2, 3, 4]


def test_a_torn_item_file_is_redone(tmp_path):
    ref, out = _reference_and_empty(tmp_path)
    _run(out, [])
    (out / "1.txt").unlink()
    (out / "1.txt.tmp-12345").write_text("it")  # a write killed part-way: never at the real name
    (out / "3.txt").write_text("ite")  # a file cut short, which the done test verifies
    again = []
    _run(out, again, done=lambda p: p.exists() and p.read_text().endswith("\n"))
    assert again == [1, 3]
    (out / "1.txt.tmp-12345").unlink()
    assert _files(out) == _files(ref)


def test_a_failed_write_leaves_no_item_file(tmp_path):
    def write(text, tmp):
        tmp.write_text(text[:2])
        raise OSError("device error")

    with pytest.raises(OSError, match="device error"):
        run_worklist([0], lambda i: tmp_path / f"{i}.txt", lambda i, tick: "item", write,
                     progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_bar_counts_sizes_ticks_and_done_items(tmp_path, monkeypatch):
    import vdfast.progress

    seen = {}

    class Bar:
        def __init__(self, total, initial):
            seen.update(total=total, initial=initial, n=initial)

        def update(self, n=1):
            seen["n"] += n

    monkeypatch.setattr(vdfast.progress, "bar",
                        lambda total, desc, unit, enable, initial: _ctx(Bar(total, initial)))
    (tmp_path / "0.txt").write_text("done\n")

    def compute(i, tick):
        tick(2)  # item i is 3 units: 2 ticked while it is computed, the last one when written
        return "x"

    run_worklist(range(4), lambda i: tmp_path / f"{i}.txt", compute, lambda v, tmp: tmp.write_text(v),
                 size=lambda i: 3)
    assert seen == {"total": 12, "initial": 3, "n": 12}
    # items without a file are computed every time
    assert run_worklist(range(3), lambda i: None, compute, None, progress=False) == 3


def _ctx(value):
    import contextlib

    return contextlib.nullcontext(value)
