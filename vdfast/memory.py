"""Memory models: how many bytes a network's forward holds, and the chunk sizes chosen from them.

DM embeds the real batch of every class in one iteration (MiniUCF at ipc 1: 50 x 64 clips of
16x112², ~80 GB of activations in one forward); static learning embeds ``classes x batch_real``
frames (~166 GB at MiniUCF). On a GPU the chunk of clips per forward is therefore chosen from the
free memory and this model; on a CPU a small chunk that stays in cache is fastest (16 clips,
measured). Chunking never changes a result when the network has no batch normalisation
(ConvNet3D has none by default; instance norm is per sample), so the choice is free.

The model walks the network once on the ``meta`` device (no memory, no compute) and records each
layer's output size:

* ``infer_peak``: the largest (input + output) of one layer, per sample: what a ``no_grad``
  forward holds at its peak besides its input (in-place ReLU adds nothing);
* ``train_saved``: the sum of every layer's output per sample: what autograd keeps for the
  backward of a forward with gradients (the synthetic side of DM, a student's training step).

:func:`dm_iteration_bytes` adds them up for one DM iteration (``benchmarks/memory_model.py``
prints it at published sizes and ``tests/test_memory.py`` checks it against measured CPU peaks);
:func:`student_bytes` for an evaluation student's training step (the batched students' group size).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

# the share of the free GPU memory an embedding chunk may take (the rest: the pool of real
# clips, the synset's graph, the allocator's fragmentation)
GPU_CHUNK_FRACTION = 0.5
CPU_CHUNK = 16  # clips per forward on a CPU: cache-sized (~30 % faster than hundreds at once)


@dataclass(frozen=True)
class ActivationBytes:
    """Bytes per sample of a network's forward (see the module docstring)."""

    input: int
    output: int
    infer_peak: int
    train_saved: int


def activation_bytes(net: nn.Module, sample_shape: tuple[int, ...], dtype=torch.float32,
                     method: str = "embed") -> ActivationBytes:
    """Per-sample activation bytes of ``getattr(net, method)`` on inputs ``[1, *sample_shape]``,
    traced on the meta device (``net`` itself is not touched)."""
    meta = copy.deepcopy(net).to("meta")
    size = torch.tensor([], dtype=dtype).element_size()
    outs: list[int] = []

    def hook(_m, inp, out):
        if isinstance(out, tuple) and out:  # a recurrent layer: (outputs, final state)
            out = out[0]
        # an in-place layer (ReLU(inplace=True), Identity) returns its input: no new memory
        if torch.is_tensor(out) and not (inp and out is inp[0]):
            outs.append(out.numel() * size)

    leaves = [m for m in meta.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            x = torch.empty((1, *sample_shape), dtype=dtype, device="meta")
            y = getattr(meta, method)(x)
    finally:
        for h in handles:
            h.remove()
    inp = x.numel() * size
    sizes = [inp] + outs
    peak = max(a + b for a, b in zip(sizes, sizes[1:])) if outs else inp
    return ActivationBytes(inp, y.numel() * size, peak, sum(outs))


def student_bytes(net: nn.Module, sample_shape: tuple[int, ...], batch: int) -> tuple[int, int]:
    """A simple bytes model of a classifier ``net`` (an evaluation student) on float32 samples
    ``sample_shape``: (training at ``batch`` samples a step, testing one sample). Training: 4
    copies of the weights (weights, gradients, momentum, one spare) and, per sample, 3 x (the
    input and the layer outputs autograd keeps, ``train_saved``: kept for the backward, their
    gradients, temporaries); testing: the input and every layer's output of one sample (more than
    a ``no_grad`` forward's ``infer_peak``: a margin). ``net`` may be on the meta device."""
    a = activation_bytes(net, sample_shape, method="forward")
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    per_sample = a.input + a.train_saved
    return 4 * weights + batch * 3 * per_sample, per_sample


def has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def free_bytes(device) -> int:
    """Free memory on ``device``: on a GPU the driver's count plus what torch's cache holds
    unused, on a CPU the RAM not in use."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def auto_chunk(net: nn.Module, sample_shape: tuple[int, ...], device, total: int,
               requested: int = 0, free: int | None = None) -> int:
    """Samples per ``no_grad`` forward of ``net``: ``requested`` when set; on a CPU
    :data:`CPU_CHUNK`; on a GPU as many as :data:`GPU_CHUNK_FRACTION` of the free memory holds
    (``free`` overrides the measurement, for tests), all ``total`` when they fit. A network with
    batch norm is never chunked (its result would depend on the chunk)."""
    if requested:
        return requested
    device = torch.device(device)
    if has_batch_norm(net):
        return 0
    if device.type != "cuda" and free is None:
        return CPU_CHUNK
    per = activation_bytes(net, sample_shape).infer_peak
    free = free_bytes(device) if free is None else free
    n = max(1, int(free * GPU_CHUNK_FRACTION) // max(per, 1))
    return 0 if n >= total else n


def dm_iteration_bytes(net: nn.Module, clip_shape: tuple[int, ...], classes: int, batch_real: int,
                       ipc: int, chunk: int) -> dict[str, int]:
    """The model of one DM iteration's peak bytes beyond the store and the network's weights:
    held throughout, the uint8 real batch, the real features and the synset (pixels, gradient,
    SGD momentum); on top, the larger of the real side's phase (one chunk's float input and
    activations, the features' concatenation) and the synthetic forward with gradients.
    ``clip_shape`` is ``(C, T, H, W)``; ``chunk`` 0 means the whole real batch at once."""
    a = activation_bytes(net, clip_shape)
    n_real = classes * batch_real
    n_chunk = min(chunk or n_real, n_real)
    pixels = a.input  # float32 bytes of one clip
    parts = {
        "real_uint8": n_real * pixels // 4,
        "real_features": n_real * a.output,
        "synset": classes * ipc * pixels * 3,  # pixels, gradient, momentum
        # the real side's phase: one chunk in float and its activations, the chunks' features
        # and their concatenation; then the synthetic side's forward with gradients
        "real_chunk": n_chunk * (a.input + a.infer_peak) + n_real * a.output,
        "syn_forward": classes * ipc * (a.input + a.train_saved),
    }
    held = parts["real_uint8"] + parts["real_features"] + parts["synset"]
    parts["peak"] = held + max(parts["real_chunk"], parts["syn_forward"])
    return parts
