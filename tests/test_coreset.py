import pytest
import torch

import vdfast
import vdfast.config
from vdfast.config import resolve
from vdfast.data.store import ClipStore
from vdfast.methods import get
from vdfast.methods.coreset import herding, kcenter


def test_kcenter_covers_clusters():
    # three tight clusters: k-center with k=3 must take one point of each (the reference's
    # k-center only measured distance to the last centre and fails this for k > 2)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])
    chosen = kcenter(pts, 3)
    assert sorted(i // 20 for i in chosen) == [0, 1, 2]
    assert len(set(kcenter(pts, 10))) == 10


def test_herding_tracks_the_mean():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(200, 8, generator=g)
    mu = feats.mean(0)
    for k in (1, 5, 20):
        chosen = herding(feats, k)
        assert len(set(chosen)) == k
        err = (feats[chosen].mean(0) - mu).norm()
        rand = torch.stack([(feats[torch.randperm(200, generator=g)[:k]].mean(0) - mu).norm()
                            for _ in range(50)])
        assert err < rand.median()


def test_coreset_methods_pick_real_clips_of_their_class(gen):
    store = ClipStore.builtin(train_per_class=6, test_per_class=1)
    data, labels = store.tensors("train")
    from vdfast.ops import normalize_clips
    real = normalize_clips(data, store.mean, store.std)
    for name in ("random", "herding", "kcenter"):
        cfg = resolve("builtin", method=name, ipc=3, **{"net.width": 8})
        syn = get(name).init(store, cfg, "cpu", gen)
        v, y = syn.videos()
        assert v.shape == (36, 3, 8, 32, 32)
        for i in range(v.shape[0]):
            d = (real - v[i]).abs().flatten(1).amax(1)
            j = int(d.argmin())
            assert d[j] < 1e-5 and int(labels[j]) == int(y[i])
        # no clip chosen twice within a class
        for c in range(12):
            assert torch.unique(v[y == c].flatten(1), dim=0).shape[0] == 3


@pytest.mark.parametrize("how", ["herding", "kcenter"])
def test_dm_can_start_from_the_coreset(how):
    """init=herding|kcenter: a pixel method's synset starts as the clips that coreset picks."""
    kw = dict(ipc=2, progress=False, checkpoint_every=0, **{"net.width": 8})
    start = vdfast.distill(method="dm", init=how, iterations=0, **kw).synset
    coreset = vdfast.distill(method=how, **kw).synset
    torch.testing.assert_close(start.videos()[0], coreset.videos()[0])
    assert start.meta["picked"] == coreset.meta["picked"]
    with pytest.raises(vdfast.config.ConfigError, match="pixel clips"):
        vdfast.distill(method="s2d-dm", init=how, iterations=0, **kw)
