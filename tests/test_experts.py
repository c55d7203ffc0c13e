"""Expert trajectories: streamed write, resume, lazy read, mismatch errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from vdfast.config import NetConfig
from vdfast.data.store import ClipStore
from vdfast.methods import experts
from vdfast.methods.experts import (BufferError, ExpertBuffer, flatten_params, train_experts,
                                    unflatten)

NET = NetConfig(width=4, depth=2, norm="none")  # the builtin preset's network
KW = dict(epochs=3, batch=16, net_cfg=NET, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=3, test_per_class=1)


@pytest.fixture(scope="module")
def buffer_dir(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("buf")
    train_experts(store, d, num_experts=2, **KW)
    return d


def test_trajectory_files_hold_every_epoch(store, buffer_dir):
    buf = ExpertBuffer(buffer_dir)
    assert len(buf) == 2 and buf.epochs == 3
    for i in range(2):
        traj = load_file(str(buffer_dir / f"expert_{i:04d}.safetensors"))["trajectory"]
        assert traj.shape == (4, buf.num_params) and traj.dtype == torch.float32
        assert torch.isfinite(traj).all()
        assert (traj[1:] - traj[:-1]).abs().amax(1).min() > 0  # every epoch moved the weights
        meta = json.loads((buffer_dir / f"expert_{i:04d}.json").read_text())
        assert meta["complete"] and meta["epochs_done"] == 3
        assert meta["classes"] == store.classes
        assert meta["normalization"] == {"mean": list(store.mean), "std": list(store.std),
                                         "standardize": False}
        assert meta["net"]["width"] == 4 and meta["training"]["lr"] == 0.01
    # experts start from different initialisations
    a, b = buf.pair(0, 0, 0)[0], buf.pair(1, 0, 0)[0]
    assert not torch.equal(a, b)
    # the flat layout round-trips through a net
    net = experts.build_net(buf.net)
    views = unflatten(a, buf.layout)
    assert [tuple(v.shape) for v in views] == [tuple(p.shape) for p in net.parameters()]
    with torch.no_grad():
        for p, v in zip(net.parameters(), views):
            p.copy_(v)
    assert torch.equal(flatten_params(net), a)


def test_pair_reads_only_the_requested_epochs(buffer_dir, monkeypatch):
    buf = ExpertBuffer(buffer_dir)
    full = buf.trajectory(1)
    asked = []
    real = experts._read_rows

    def spy(path, rows):
        asked.append(list(rows))
        return real(path, rows)

    monkeypatch.setattr(experts, "_read_rows", spy)
    s, t = buf.pair(1, 1, 3)
    assert asked == [[1, 3]]
    assert torch.equal(s, full[1]) and torch.equal(t, full[3])

    # and the slice read touches only those rows: corrupt every other row on disk
    path = buffer_dir / "expert_0001.safetensors"
    start = experts._data_start(path)
    row_bytes = buf.num_params * 4
    raw = bytearray(path.read_bytes())
    for r in (0, 2):
        raw[start + r * row_bytes:start + (r + 1) * row_bytes] = b"\xff" * row_bytes  # NaNs
    path.write_bytes(bytes(raw))
    try:
        s2, t2 = buf.pair(1, 1, 3)
        assert torch.equal(s2, full[1]) and torch.equal(t2, full[3])
    finally:
        experts._write_row(path, 0, full[0])
        experts._write_row(path, 2, full[2])


def test_finished_experts_are_skipped_and_unfinished_resume(store, buffer_dir, tmp_path, monkeypatch):
    # a finished buffer: nothing is trained again (the files stay byte-identical)
    before = (buffer_dir / "expert_0000.safetensors").read_bytes()
    calls = []
    monkeypatch.setattr(experts, "_write_row", lambda *a: calls.append(a))
    train_experts(store, buffer_dir, num_experts=2, **KW)
    assert calls == [] and (buffer_dir / "expert_0000.safetensors").read_bytes() == before
    monkeypatch.undo()

    # kill expert 1 after its first epoch, then resume: same trajectory as an uninterrupted run
    d = tmp_path / "b"
    real_write = experts._write_row

    class Killed(Exception):
        pass

    def dying(path, row, vec):
        real_write(path, row, vec)
        if "0001" in path.name and row == 2:  # epoch 2 written, its sidecar update not
            raise Killed

    monkeypatch.setattr(experts, "_write_row", dying)
    with pytest.raises(Killed):
        train_experts(store, d, num_experts=2, **KW)
    monkeypatch.undo()
    meta = json.loads((d / "expert_0001.json").read_text())
    assert meta["epochs_done"] == 1 and not meta["complete"]
    assert len(ExpertBuffer(d)) == 1  # only the complete expert is served
    resumed = []
    monkeypatch.setattr(experts, "_write_row", lambda p, r, v: (resumed.append(r), real_write(p, r, v)))
    train_experts(store, d, num_experts=2, **KW)
    monkeypatch.undo()
    assert resumed == [2, 3]  # continued after epoch 1
    for i in range(2):
        torch.testing.assert_close(ExpertBuffer(d).trajectory(i), ExpertBuffer(buffer_dir).trajectory(i),
                                   rtol=0, atol=1e-6)


def test_mismatched_buffer_raises_naming_the_fix(store, buffer_dir):
    buf = ExpertBuffer(buffer_dir)
    with pytest.raises(BufferError, match="net: .*width.*--mtt-buffer"):
        buf.check(store, NetConfig(width=8, depth=2))
    other = ClipStore.builtin(train_per_class=4, test_per_class=1)
    with pytest.raises(BufferError, match="data: .*train 36 vs 48"):
        buf.check(other, NET)
    with pytest.raises(BufferError, match="needs 5.*max-start-epoch"):
        buf.check(store, NET, need_epochs=5)
    buf.check(store, NET, need_epochs=3)
    # training into it with other settings refuses instead of mixing experts
    with pytest.raises(BufferError, match="other settings.*lr"):
        train_experts(store, buffer_dir, num_experts=2, epochs=3, batch=16, lr=0.1, net_cfg=NET,
                      progress=False)
    with pytest.raises(BufferError, match="does not exist.*train_experts"):
        ExpertBuffer(buffer_dir / "nope")


def test_buffer_of_other_clips_with_the_same_counts_is_refused(store, buffer_dir):
    """Same classes, shapes and counts, other clips (another seed; for a prepared store: another
    --gap): the train fingerprint tells them apart."""
    other = ClipStore.builtin(seed=1, train_per_class=3, test_per_class=1)
    assert other.counts("train") == store.counts("train") and other.classes == store.classes
    buf = ExpertBuffer(buffer_dir)
    with pytest.raises(BufferError, match="data: fingerprint"):
        buf.check(other, NET)
    with pytest.raises(BufferError, match="data: .*train"):
        buf.check(ClipStore.builtin(train_per_class=4, test_per_class=1), NET)
