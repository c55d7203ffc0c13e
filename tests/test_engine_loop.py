"""vdfast.engine.loop.Loop: checkpoint cadence, resume at a step, stop on a signal, the window."""
import os
import signal

import pytest
import torch

from vdfast.engine import checkpoint
from vdfast.engine.loop import Loop


def _losses(values):
    return lambda i: torch.tensor(float(values[i]))


def test_checkpoint_cadence_and_the_end():
    saved = []
    Loop(total=25, every=10, progress=False, save=lambda done, pending: saved.append(done)).run(
        lambda i: torch.tensor(1.0))
    assert saved == [10, 20, 25]
    saved.clear()
    run = Loop(total=25, every=10, progress=False, save_at_end=False,
               save=lambda done, pending: saved.append(done))
    run.run(lambda i: torch.tensor(1.0))
    assert saved == [10, 20] and run.last_saved == 20


def test_checkpoint_between_windows_keeps_the_pending_losses():
    got = []
    Loop(total=12, every=4, window=10, progress=False,
         save=lambda done, pending: got.append((done, pending))).run(_losses(range(12)))
    # 4 and 8 fall inside the first window: its losses so far; 12, the last, closes a window
    assert got == [(4, [0.0, 1.0, 2.0, 3.0]), (8, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
                   (12, [])]


def test_window_callback_gets_every_loss_once():
    windows = []
    run = Loop(total=23, progress=False, on_window=lambda done, vals, dt: windows.append((done, vals, dt)))
    run.run(_losses(range(23)))
    assert [w[0] for w in windows] == [10, 20, 23]
    assert sum((w[1] for w in windows), []) == [float(v) for v in range(23)]
    assert all(w[2] >= 0 for w in windows)
    assert run.last_saved is None  # no save given: nothing saved


def test_resume_at_a_step_with_the_pending_window():
    steps, windows = [], []
    Loop(total=14, start=8, pending=[torch.tensor(6.0), torch.tensor(7.0)], progress=False,
         on_window=lambda done, vals, dt: windows.append((done, vals))).run(
        lambda i: steps.append(i) or torch.tensor(float(i)))
    assert steps == list(range(8, 14))
    assert windows == [(10, [6.0, 7.0, 8.0, 9.0]), (14, [10.0, 11.0, 12.0, 13.0])]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_is_reported_with_the_last_checkpoint(bad):
    calls = []

    def on_nan(done, last):
        calls.append((done, last))
        raise FloatingPointError("nan")

    with pytest.raises(FloatingPointError):
        Loop(total=30, every=10, progress=False, on_nan=on_nan, save=lambda d, p: None).run(
            lambda i: torch.tensor(bad if i == 14 else 1.0))
    assert calls == [(20, 10)]


def test_stop_on_a_signal_saves_then_raises():
    saved = []

    def step(i):
        if i == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return torch.tensor(float(i))

    with checkpoint.handle_signals(), pytest.raises(checkpoint.Interrupted) as e:
        Loop(total=20, progress=False, what="unit step",
             save=lambda done, pending: saved.append((done, pending))).run(step)
    assert saved == [(4, [0.0, 1.0, 2.0, 3.0])]
    assert e.value.iteration == 4 and e.value.exit_code == 130 and e.value.saved
    assert "unit step 4" in str(e.value)
    with checkpoint.handle_signals(), pytest.raises(checkpoint.Interrupted) as e:
        Loop(total=20, progress=False).run(step)
    assert not e.value.saved and "nothing was saved" in str(e.value)


def test_no_stop_when_the_loop_does_not_stop_on_signals():
    def step(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    steps = []
    with checkpoint.handle_signals():
        Loop(total=5, progress=False, stop_on_signal=False).run(lambda i: steps.append(i) or step(i))
        assert checkpoint.interrupt_requested() == signal.SIGTERM  # left for the caller
    assert steps == [0, 1, 2, 3, 4]


class _TwoRanks:
    """A stand-in for two processes holding the same values: all_reduce doubles."""

    main, active, device = True, True, torch.device("cpu")

    def __init__(self):
        self.barriers = self.reduces = 0

    def all_reduce_(self, t):
        self.reduces += 1
        return t.mul_(2)

    def barrier(self):
        self.barriers += 1


def test_partial_losses_are_summed_and_processes_wait_after_a_checkpoint():
    d, windows = _TwoRanks(), []
    Loop(total=10, window=5, dist=d, partial=True, every=5, progress=False,
         on_window=lambda done, vals, dt: windows.append(vals), save=lambda done, p: None).run(
        lambda i: torch.tensor(1.0))
    assert windows == [[2.0] * 5, [2.0] * 5]
    assert d.barriers == 2
    # per window: the losses and the stop flag (processes agree on a stop only there)
    assert d.reduces == 4


def test_stop_on_n_processes_waits_for_the_window():
    d, saved = _TwoRanks(), []

    def step(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return torch.tensor(1.0)

    with checkpoint.handle_signals(), pytest.raises(checkpoint.Interrupted) as e:
        Loop(total=20, window=5, dist=d, progress=False,
             save=lambda done, pending: saved.append(done)).run(step)
    assert saved == [5] and e.value.iteration == 5 and e.value.exit_code == 143


def test_profiler_hook_wraps_each_step_and_is_closed():
    import contextlib

    class Prof:
        def __init__(self):
            self.seen, self.closed = [], False

        @contextlib.contextmanager
        def iteration(self, it):
            self.seen.append(("enter", it))
            yield
            self.seen.append(("exit", it))

        def close(self):
            self.closed = True

    p, order = Prof(), []
    Loop(total=2, start=0, profiler=p, progress=False).run(
        lambda i: order.append(p.seen[-1]) or torch.tensor(0.0))
    assert p.seen == [("enter", 0), ("exit", 0), ("enter", 1), ("exit", 1)] and p.closed
    assert order == [("enter", 0), ("enter", 1)]  # each step ran inside its range


def test_epoch_loop_on_a_shared_bar():
    class Bar:
        n, post = 0, None

        def update(self, k):
            self.n += k

        def set_postfix(self, d, refresh=True):
            self.post = d

    b, rows = Bar(), []
    for expert in range(2):
        Loop(total=3, unit="ep", bar=b, window=1, every=1,
             postfix=lambda v, e=expert: {"expert": e, "loss": f"{v:.3f}"},
             save=lambda done, pending: rows.append(done)).run(lambda e: torch.tensor(0.5))
    assert b.n == 6 and b.post == {"expert": 1, "loss": "0.500"} and rows == [1, 2, 3, 1, 2, 3]
