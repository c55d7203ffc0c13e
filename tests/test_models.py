import pytest
import torch

from vdfast.models import ConvNet2D, ConvNet3D, build_student, count_params


def test_convnet3d_published_shapes():
    # the published sizes: 2048-d at 16x112², 256-d at 8x64², ~3.65 M parameters for 50 classes
    net = ConvNet3D(50, 16, 112)
    assert net.feat_dim == 2048
    assert abs(count_params(net) - 3.65e6) < 0.01e6
    assert ConvNet3D(50, 8, 64).feat_dim == 256
    assert net(torch.randn(1, 3, 16, 112, 112)).shape == (1, 50)


def test_convnet3d_batch_equals_per_item():
    # no normalisation layer: embedding a batch gives exactly the per-item results (DM relies on it)
    net = ConvNet3D(4, 8, 32, width=8, depth=2).eval()
    x = torch.randn(5, 3, 8, 32, 32, dtype=torch.float64)
    net = net.double()
    batched = net.embed(x)
    single = torch.cat([net.embed(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single)


def test_convnet3d_rejects_too_small_clips():
    with pytest.raises(ValueError, match="depth"):
        ConvNet3D(4, 4, 16, depth=3)


@pytest.mark.parametrize("name", ["convnet3d", "cnn_gru", "cnn_lstm"])
def test_students(name):
    net = build_student(name, 6, 8, 32, width=8, depth=2)
    out = net(torch.randn(2, 3, 8, 32, 32))
    assert out.shape == (2, 6)
    out.sum().backward()


def test_convnet2d():
    net = ConvNet2D(5, size=32, width=16, depth=3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError):
        build_student("vit", 5, 8, 32)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
def test_row_dropout_blocks_draw_the_whole_batch_mask(fmt):
    """RowDropout with ``split`` gives each block of rows exactly what nn.Dropout gives those rows
    of the whole batch from the same RNG state (data-parallel training draws what one process
    does), in either memory layout; without ``split`` it is nn.Dropout."""
    from vdfast.models import RowDropout

    x = torch.randn(7, 6, 2, 3, 3).contiguous(memory_format=fmt)
    torch.manual_seed(0)
    whole = torch.nn.functional.dropout(x, 0.5, True)
    d = RowDropout(0.5).train()
    torch.manual_seed(0)
    assert torch.equal(d(x), whole)
    blocks = []
    for a, b in ((0, 3), (3, 7), (7, 7)):
        torch.manual_seed(0)
        d.split = (a, b, 7)
        blocks.append(d(x[a:b]))
    assert torch.equal(torch.cat(blocks), whole)
    assert (whole == 0).any() and torch.equal(d.eval()(x), x)
    with pytest.raises(ValueError, match="split"):
        d.train()(x[:2])
