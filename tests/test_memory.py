"""vdfast.memory: the activation model against measured CPU peaks, and the chunk it picks."""
import os
import subprocess
import sys

import pytest
import torch

from vdfast.memory import (CPU_CHUNK, activation_bytes, auto_chunk, dm_iteration_bytes,
                           has_batch_norm)
from vdfast.methods.dm import embed
from vdfast.models import ConvNet2D, ConvNet3D

# a child process: the rise of the peak resident set (Linux's VmHWM, reset just before) over one
# no_grad embedding of n clips
_PROBE = r"""
import gc, sys, torch
from vdfast.models import ConvNet3D
def kib(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024
torch.set_num_threads(1)
n, T, S, W = map(int, sys.argv[1:5])
net = ConvNet3D(10, T, S, width=W).requires_grad_(False)
x = torch.randn(n, 3, T, S, S)
with torch.no_grad():
    net.embed(x[:1])  # oneDNN's one-time allocations before the baseline
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # the peak resident set starts again from now
base = kib("VmRSS")
with torch.no_grad():
    net.embed(x)
print(kib("VmHWM") - base)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM reset")
@pytest.mark.parametrize("n,frames,size,width", [(16, 8, 64, 64), (32, 8, 64, 64), (4, 16, 112, 64)])
def test_model_matches_measured_cpu_peak(n, frames, size, width):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(n), str(frames), str(size), str(width)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = int(out.stdout.split()[-1])
    a = activation_bytes(ConvNet3D(10, frames, size, width=width), (3, frames, size, size))
    # on a CPU the input is also copied once into channels_last_3d (models.cpu_layout)
    predicted = n * (a.infer_peak + a.input)
    assert 0.7 * predicted <= measured <= 1.4 * predicted, (measured / 2**20, predicted / 2**20)


def test_activation_bytes_by_hand():
    # ConvNet3D w8 d1 at 4x16²: conv -> [8, 4, 8, 8] (ReLU in place: no new tensor) -> pool [8, 4, 4, 4]
    net = ConvNet3D(3, 4, 16, width=8, depth=1)
    a = activation_bytes(net, (3, 4, 16, 16))
    conv, pool, inp = 8 * 4 * 8 * 8 * 4, 8 * 4 * 4 * 4 * 4, 3 * 4 * 16 * 16 * 4
    assert (a.input, a.output) == (inp, pool)
    assert a.infer_peak == max(inp + conv, conv + pool)
    assert a.train_saved == conv + pool
    assert next(net.parameters()).device.type == "cpu"  # traced on a copy


def test_auto_chunk_choices():
    net = ConvNet3D(5, 8, 32, width=16, depth=2)
    clip = (3, 8, 32, 32)
    per = activation_bytes(net, clip).infer_peak
    assert auto_chunk(net, clip, "cpu", total=1000) == CPU_CHUNK
    assert auto_chunk(net, clip, "cpu", total=1000, requested=7) == 7
    # on a GPU: half the free memory's worth, all at once (0) when everything fits
    assert auto_chunk(net, clip, "cuda", total=1000, free=40 * per) == 20
    assert auto_chunk(net, clip, "cuda", total=10, free=40 * per) == 0
    assert auto_chunk(net, clip, "cuda", total=1000, free=1) == 1
    bn = ConvNet3D(5, 8, 32, width=16, depth=2, norm="batch")
    assert has_batch_norm(bn) and not has_batch_norm(net)
    assert auto_chunk(bn, clip, "cuda", total=1000, free=40 * per) == 0  # never split a batch norm


def test_chunked_embedding_equals_one_forward(gen):
    net = ConvNet3D(5, 4, 16, width=8, depth=2).double()
    x = torch.randn(37, 3, 4, 16, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(embed(net, x, 5), embed(net, x, 0), rtol=1e-12, atol=1e-12)
    net2 = ConvNet2D(5, 16, width=8, depth=2, norm="instance").double()
    f = torch.randn(23, 3, 16, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(embed(net2, f, 4), net2.embed(f), rtol=1e-12, atol=1e-12)


def test_dm_iteration_model_at_miniucf_needs_chunks():
    with torch.device("meta"):
        net = ConvNet3D(50, 16, 112)
    clip = (3, 16, 112, 112)
    whole = dm_iteration_bytes(net, clip, 50, 64, 1, 0)
    assert whole["real_chunk"] > 40 * 2**30  # one forward of 3,200 clips: beyond half an H100
    free = 70 * 2**30
    c = auto_chunk(net, clip, "cuda", total=3200, free=free)
    assert 0 < c < 3200
    assert dm_iteration_bytes(net, clip, 50, 64, 1, c)["peak"] < free
