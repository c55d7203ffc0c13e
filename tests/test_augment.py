"""Differentiable siamese augmentation (vdfast.augment) and DM's use of it (--dsa)."""
import pytest
import torch

import vdfast
from vdfast import augment
from vdfast.config import ConfigError, resolve

ALL = "color_crop_cutout_flip_scale_rotate"


def clips(n=3, seed=0):
    return torch.randn(n, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_one_draw_is_one_transformation_for_every_clip_and_frame():
    p = augment.draw(ALL, torch.Generator().manual_seed(1))
    x = clips(2)
    both = augment.apply(torch.cat([x, x]), p)  # the same clip twice: the same result (siamese)
    torch.testing.assert_close(both[:2], both[2:])
    still = x[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()  # a still clip stays still
    out = augment.apply(still, {k: v for k, v in p.items() if k != "brightness"} | {"names": ("crop",)})
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
    assert not torch.allclose(augment.apply(x, p), x)


def test_seeded_and_off_when_empty():
    x = clips()
    a = augment.apply(x, augment.draw(ALL, torch.Generator().manual_seed(5)))
    b = augment.apply(x, augment.draw(ALL, torch.Generator().manual_seed(5)))
    c = augment.apply(x, augment.draw(ALL, torch.Generator().manual_seed(6)))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert augment.apply(x, augment.draw("", torch.Generator())) is x
    assert augment.apply(x, {}) is x


@pytest.mark.parametrize("name", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_each_augmentation_is_differentiable(name):
    x = clips(2).double().requires_grad_()
    p = augment.draw(name, torch.Generator().manual_seed(3))
    torch.autograd.gradcheck(lambda t: augment.apply(t, p), (x[:, :, :2, :6, :6].detach().requires_grad_(),))


def test_the_affine_part_moves_content_as_drawn():
    x = torch.zeros(1, 1, 1, 16, 16)
    x[..., 4:8, 2:6] = 1.0  # a blob left of centre
    flip = augment.draw("flip", torch.Generator().manual_seed(0))
    while float(flip["theta"][0, 0]) > 0:  # a draw that flips
        flip = augment.draw("flip", torch.Generator().manual_seed(int(torch.randint(1000, (1,)))))
    torch.testing.assert_close(augment.apply(x, flip), x.flip(-1))


def test_config_refuses_unknown_names_other_methods_and_the_bank():
    with pytest.raises(ConfigError, match="unknown augmentation zoom"):
        resolve(method="dm", dsa="crop_zoom")
    with pytest.raises(ConfigError, match="serves DM"):
        resolve(method="mtt", dsa="crop")
    with pytest.raises(ConfigError, match="--dm-bank"):
        resolve(method="dm", dsa="crop", dm_bank=4)
    assert resolve(method="s2d-dm", dsa=ALL).dsa == ALL


def test_dm_with_dsa_runs_and_differs_from_dm_without(tmp_path):
    kw = dict(ipc=1, iterations=3, progress=False, checkpoint_every=0, **{"net.width": 8})
    plain = vdfast.distill(method="dm", **kw).synset.videos()[0]
    dsa = vdfast.distill(method="dm", dsa=ALL, **kw).synset.videos()[0]
    again = vdfast.distill(method="dm", dsa=ALL, **kw).synset.videos()[0]
    assert torch.isfinite(dsa).all()
    torch.testing.assert_close(dsa, again)  # seeded
    assert not torch.allclose(plain, dsa)
