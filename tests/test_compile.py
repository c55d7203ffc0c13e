"""torch.compile(fullgraph=True) of code that calls the fused ops, on the CPU.

The fused ops are custom ops (``torch.ops.vdfast.<op>``, with fake kernels and registered
autograd), and the backend choice is traceable, so Dynamo captures a whole DM step, the ops
included, in one graph: no graph break, the same loss and the same gradient as eager.
"""
import pytest
import torch

import vdfast.ops  # noqa: F401
from vdfast.methods.dm import embed
from vdfast.models import ConvNet3D
from vdfast.ops import dm_loss, normalize_clips, trajectory_loss
from vdfast.ops.dispatch import OPS, compiled_extension

pytestmark = pytest.mark.skipif(compiled_extension()[0] is None, reason="needs vdfast._C (cpp)")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _capturing(graphs, backend):
    """A torch.compile backend that keeps each Dynamo graph and then compiles it with ``backend``."""
    inner = torch._dynamo.lookup_backend(backend)

    def compile_fn(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)
    return compile_fn


def _vdfast_calls(graphs) -> set[str]:
    return {str(n.target) for gm in graphs for n in gm.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("vdfast.")}


def _dm_case(gen):
    nc, frames, size = 3, 4, 16
    net = ConvNet3D(nc, frames, size, width=8, depth=1)
    net.requires_grad_(False)
    real_u8 = torch.randint(0, 256, (6, frames, size, size, 3), generator=gen, dtype=torch.uint8)
    real_labels = torch.arange(nc).repeat_interleave(2)
    syn = torch.randn(nc, 3, frames, size, size, generator=gen)
    return net, real_u8, real_labels, syn, torch.arange(nc), nc


def _dm_step(net, real_u8, real_labels, syn, syn_labels, nc):
    """DM's step computation (``vdfast.methods.dm.DM.step``): real clips normalised and embedded
    without gradient (in chunks), synthetic clips embedded, the distribution-matching loss."""
    with torch.no_grad():
        real_feat = embed(net, real_u8, 4, lambda u: normalize_clips(u, MEAN, STD))
    syn_feat = embed(net, syn)
    return dm_loss(real_feat.to(syn_feat.dtype), real_labels, syn_feat, syn_labels, nc)


def test_dm_step_compiles_fullgraph(gen, monkeypatch):
    """Compiled with ``aot_eager``: the same capture as inductor (one Dynamo graph, AOT autograd
    tracing the ops' fake kernels and their registered backward), in ~6 s. Inductor also passes
    (to float32 reordering, ~2e-7 on the gradient) but generates and compiles C++ for the graph,
    80 s on the 2-core test machine: too slow for this suite."""
    backend = "aot_eager"
    monkeypatch.delenv("VDFAST_BACKEND", raising=False)
    net, real_u8, rl, syn, sl, nc = _dm_case(gen)
    torch._dynamo.reset()
    syn_e = syn.clone().requires_grad_()
    loss_e = _dm_step(net, real_u8, rl, syn_e, sl, nc)  # eager (runs the first-call checks)
    loss_e.backward()
    for name in ("dm_loss", "normalize_clips"):  # the eager run used the fused C++ kernels
        assert OPS[name].checked.get(("cpp", "cpu", torch.float32), "unchecked") is None

    graphs = []
    step = torch.compile(_dm_step, fullgraph=True, backend=_capturing(graphs, backend))
    syn_c = syn.clone().requires_grad_()
    loss_c = step(net, real_u8, rl, syn_c, sl, nc)
    loss_c.backward()
    assert len(graphs) == 1
    assert {"vdfast.dm_loss.default", "vdfast.normalize_clips.default"} <= _vdfast_calls(graphs)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(syn_c.grad, syn_e.grad, rtol=1e-5, atol=1e-7)
    assert syn_c.grad.abs().sum() > 0


def test_trajectory_loss_compiles_fullgraph(gen):
    """MTT's outer loss after a (here: one-step) unrolled update, compiled whole: the fused op's
    backward runs inside the compiled backward, and the gradient reaches the synthetic step size
    through the student's own graph."""
    torch._dynamo.reset()
    P = 140000  # above the cpp backend's automatic minimum (131072)
    start, target = torch.randn(P, generator=gen), torch.randn(P, generator=gen)
    g = torch.randn(P, generator=gen)

    def outer(lr):
        student = start - lr * g
        return trajectory_loss(student, start, target)

    graphs = []
    lr_e = torch.tensor(0.1, requires_grad=True)
    loss_e = outer(lr_e)
    loss_e.backward()
    lr_c = torch.tensor(0.1, requires_grad=True)
    loss_c = torch.compile(outer, fullgraph=True, backend=_capturing(graphs, "aot_eager"))(lr_c)
    loss_c.backward()
    assert "vdfast.trajectory_loss.default" in _vdfast_calls(graphs)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(lr_c.grad, lr_e.grad)


def test_explicit_reference_backend_compiles_to_plain_torch(gen):
    """``backend="reference"`` under torch.compile traces the plain-PyTorch form (no custom op)."""
    torch._dynamo.reset()
    real, syn = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen)
    rl, sl = torch.arange(6) % 3, torch.arange(3)
    graphs = []
    f = torch.compile(lambda r, s: dm_loss(r, rl, s, sl, 3, backend="reference"), fullgraph=True,
                      backend=_capturing(graphs, "aot_eager"))
    torch.testing.assert_close(f(real, syn), dm_loss(real, rl, syn, sl, 3, backend="reference"))
    assert not _vdfast_calls(graphs)


def _aot_capturing(graphs):
    """A torch.compile backend that keeps AOT autograd's forward and backward graphs (where a
    triton_op shows as its kernels) and runs them eagerly (what ``aot_eager`` does)."""
    from torch._dynamo.backends.common import aot_autograd

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm
    return aot_autograd(fw_compiler=keep, bw_compiler=keep)


def _kernel_nodes(graphs) -> int:
    return sum("triton_kernel_wrapper" in str(n.target) for gm in graphs for n in gm.graph.nodes
               if n.op == "call_function")


@pytest.mark.gpu
@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_triton_backend_compiles_into_its_kernels(inner, gen):
    """On a GPU: a DM loss and an MTT outer loss on the triton backend compile fullgraph, with
    the eager results; AOT autograd's forward and backward graphs hold the Triton kernels
    themselves (the ops are torch.library.triton_op's), which inductor then compiles with the
    graph (``inner="inductor"``: the same capture, compiled)."""
    pytest.importorskip("triton")
    torch._dynamo.reset()
    dev = "cuda"
    real = torch.randn(40, 96, generator=gen).to(dev)
    rl = (torch.arange(40) % 5).to(dev)
    sl = torch.arange(5).to(dev)
    start, target = (torch.randn(5000, generator=gen).to(dev) for _ in range(2))
    g = torch.randn(5000, generator=gen).to(dev)

    def step(syn, lr):
        a = dm_loss(real, rl, syn * 1.5, sl, 5, backend="triton")
        b = trajectory_loss(start - lr * g, start, target, backend="triton")
        return a + b

    syn0 = torch.randn(5, 96, generator=gen).to(dev)
    syn_e, lr_e = syn0.clone().requires_grad_(), torch.tensor(0.1, device=dev, requires_grad=True)
    step(syn_e, lr_e).backward()
    graphs = []
    syn_c, lr_c = syn0.clone().requires_grad_(), torch.tensor(0.1, device=dev, requires_grad=True)
    backend = _aot_capturing(graphs) if inner == "aot_eager" else "inductor"
    loss_c = torch.compile(step, fullgraph=True, backend=backend)(syn_c, lr_c)
    loss_c.backward()
    if inner == "aot_eager":
        assert len(graphs) == 2  # one forward, one backward graph
        fw_kernels, bw_kernels = _kernel_nodes(graphs[:1]), _kernel_nodes(graphs[1:])
        assert fw_kernels >= 4 and bw_kernels >= 2, (fw_kernels, bw_kernels)
        assert not any(str(n.target).startswith("vdfast.") for gm in graphs
                       for n in gm.graph.nodes if n.op == "call_function")
    torch.testing.assert_close(syn_c.grad, syn_e.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lr_c.grad, lr_e.grad, rtol=1e-5, atol=1e-6)
