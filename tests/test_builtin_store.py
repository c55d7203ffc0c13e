import numpy as np
import pytest
import torch

from vdfast.data.store import ClipPool, ClipStore, StoreError
from vdfast.data.synthetic import BUILTIN_CLASSES, make_builtin_arrays


def test_builtin_deterministic_and_shaped():
    a, classes = make_builtin_arrays(seed=3, train_per_class=4, test_per_class=2)
    b, _ = make_builtin_arrays(seed=3, train_per_class=4, test_per_class=2)
    c, _ = make_builtin_arrays(seed=4, train_per_class=4, test_per_class=2)
    assert classes == list(BUILTIN_CLASSES) and len(classes) == 12
    assert a["train"][0].shape == (4, 8, 32, 32, 3) and a["train"][0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a["train"], b["train"]))
    assert not np.array_equal(a["train"][0], c["train"][0])


def _centroid(clip, axis):
    # the object is bright (max channel >= 0.75) on a dark background (<= 0.35 + gradient + noise)
    d = (clip.max(-1) > 0.62 * 255).astype(np.float32)
    pos = np.arange(clip.shape[axis])
    pos = pos[None, :, None] if axis == 1 else pos[None, None, :]
    return (d * pos).sum((1, 2)) / d.sum((1, 2))


@pytest.mark.parametrize("motion,axis,sign", [("left", 2, -1), ("right", 2, 1), ("up", 1, -1),
                                              ("down", 1, 1)])
def test_builtin_motion_is_the_label(motion, axis, sign):
    a, classes = make_builtin_arrays(seed=0, train_per_class=6, test_per_class=1)
    for name, clips in zip(classes, a["train"]):
        if name.endswith(motion):
            for c in clips:
                along = _centroid(c, axis)
                across = _centroid(c, 3 - axis)
                assert sign * (along[-1] - along[0]) > 8, (name, along)  # >= 2 px per frame
                assert abs(across[-1] - across[0]) < 1.5, (name, across)


def test_pool_sampling_per_class_and_without_replacement(gen):
    store = ClipStore.builtin(train_per_class=5, test_per_class=1)
    pool = ClipPool(store, "train")
    x, y = pool.sample(4, gen)
    assert x.shape == (48, 8, 32, 32, 3) and x.dtype == torch.uint8
    assert torch.equal(y, torch.arange(12).repeat_interleave(4))
    # every sampled clip is a real clip of its class, and no clip repeats within a class
    data, labels = store.tensors("train")
    flat = data.flatten(1)
    for i in range(x.shape[0]):
        hits = (flat == x[i].flatten()).all(1).nonzero().flatten()
        assert len(hits) >= 1 and int(labels[hits[0]]) == int(y[i])
    for c in range(12):
        rows = x[y == c].flatten(1)
        assert torch.unique(rows, dim=0).shape[0] == 4
    # more than a class holds wraps around instead of failing
    x2, _ = pool.sample(7, gen)
    assert x2.shape[0] == 84


def test_check_request_errors():
    store = ClipStore.builtin(train_per_class=3, test_per_class=1)
    with pytest.raises(StoreError, match="lower --ipc to at most 3"):
        store.check_request(ipc=4)
    with pytest.raises(StoreError, match="--frames 16"):
        store.check_request(frames=16)
    with pytest.raises(StoreError, match="--size 112"):
        store.check_request(size=112)
    with pytest.raises(StoreError, match="unknown split"):
        store.counts("val")


def test_streamed_pool_reads_the_same_clips_as_the_resident_pool(tmp_path, monkeypatch):
    """A split larger than the device budget stays in its memory-mapped class files; the draws and
    the clips are those of the resident pool."""
    import numpy as np

    src = ClipStore.builtin(train_per_class=5, test_per_class=1, frames=4, size=16)
    arrays = {}
    for split in ("train", "test"):
        arrays[split] = []
        for c in range(src.num_classes):
            f = tmp_path / f"{split}{c}.npy"
            a = np.array(src.clips(split, c))
            if split == "train" and c == 3:
                a = a[:2]  # a short class: draws wrap around
            np.save(f, a)
            arrays[split].append(np.load(f, mmap_mode="r"))
    store = ClipStore(src.classes, arrays, 4, 16)
    for classes in (None, range(2, 7)):
        resident = ClipPool(store, "train", classes=classes, resident=True)
        streamed = ClipPool(store, "train", classes=classes, resident=False)
        assert resident.resident and not streamed.resident and streamed.data is None
        for n in (3, 6):
            x1, y1 = resident.sample(n, torch.Generator().manual_seed(n))
            x2, y2 = streamed.sample(n, torch.Generator().manual_seed(n))
            assert torch.equal(y1, y2) and torch.equal(x1, x2)
    monkeypatch.setenv("VDFAST_POOL_GB", "0")
    assert not ClipPool(store, "train").resident  # over the budget: streamed by default
    monkeypatch.setenv("VDFAST_POOL_GB", "1")
    assert ClipPool(store, "train").resident
