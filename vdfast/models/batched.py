"""N students of one architecture as ONE network: grouped convolutions (``groups = N``) with each
student's own batch in its own channel group, and batched matrix products for the recurrent and
linear parts. Used by the evaluation (:func:`vdfast.evaluation.train_students`) to train the N
students of a report together; :func:`stack` builds it from N ordinary students (their own
initialisations) and :meth:`students` gives their weights back as ordinary state dicts.

Layout: the input is ``[B, N * C, T, H, W]`` — rows are the B positions of every student's batch,
student j's clips in channels ``j*C:(j+1)*C`` (:func:`group_batches` builds it from ``[N, B, C,
T, H, W]``); with ``shared=True`` it is one batch ``[B, C, T, H, W]`` seen by every student (the
test pass: the first layer is then an ordinary convolution with N times the output channels). The
output is ``[N, B, classes]``.

Every layer is the per-student layer exactly: a grouped convolution computes each group from its
own input channels only; ``GroupNorm(N*C, N*C)`` is N instance norms; ``BatchNorm3d(N*C)`` keeps
per-channel (so per-student) statistics; pooling and ReLU act per channel. Dropout draws each
student's mask from that student's own copy of the global RNG state (:attr:`BatchedConvNet3D.
rng_states`), with the per-student shape and memory order, so the masks are the ones the student
would draw trained alone (the CPU and CUDA generators both). The optimiser is any elementwise one
over the stacked parameters (SGD with momentum and weight decay is per element, so per student).

Example::

    nets = [build_student("convnet3d", 12, 8, 32, width=32, depth=2) for _ in range(3)]
    bnet = stack(nets)
    logits = bnet(group_batches(torch.randn(3, 12, 3, 8, 32, 32)))   # [3, 12, 12]
    sd = bnet.students()                                                # 3 ConvNet3D state dicts
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vdfast.models.convnet3d import ConvNet3D, FrameRNN

_CL = torch.channels_last_3d


def group_batches(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """``[N, B, C, T, H, W]`` (student j's batch at ``x[j]``) -> ``[B, N * C, T, H, W]``; on a CPU
    with ``channels_last`` in ``channels_last_3d`` memory order (the order ConvNet3D students run in,
    see ``cpu_layout``), in one copy."""
    n, b, c, t, h, w = x.shape
    if x.device.type == "cpu" and channels_last:
        return x.permute(1, 3, 4, 5, 0, 2).reshape(b, t, h, w, n * c).permute(0, 4, 1, 2, 3)
    return x.transpose(0, 1).reshape(b, n * c, t, h, w)


def _cat(params) -> nn.Parameter:
    return nn.Parameter(torch.cat([p.detach() for p in params]).clone())


def _grouped_norm(mods: list[nn.Module]) -> nn.Module:
    m0 = mods[0]
    n = len(mods)
    if isinstance(m0, nn.Identity):
        return nn.Identity()
    t0 = next(iter(m0.parameters()), None)
    t0 = t0 if t0 is not None else next(m0.buffers())
    kw = dict(device=t0.device, dtype=t0.dtype)
    if isinstance(m0, nn.GroupNorm):
        if m0.num_groups != m0.num_channels:
            raise ValueError("batched students support GroupNorm only as instance norm (groups = channels)")
        g = nn.GroupNorm(n * m0.num_groups, n * m0.num_channels, m0.eps, m0.affine, **kw)
        if m0.affine:
            g.weight, g.bias = _cat(m.weight for m in mods), _cat(m.bias for m in mods)
        return g
    if isinstance(m0, nn.modules.batchnorm._BatchNorm):
        b = type(m0)(n * m0.num_features, m0.eps, m0.momentum, m0.affine, m0.track_running_stats, **kw)
        if m0.affine:
            b.weight, b.bias = _cat(m.weight for m in mods), _cat(m.bias for m in mods)
        if m0.track_running_stats:
            b.running_mean.copy_(torch.cat([m.running_mean for m in mods]))
            b.running_var.copy_(torch.cat([m.running_var for m in mods]))
            b.num_batches_tracked.copy_(m0.num_batches_tracked)
        return b
    raise ValueError(f"batched students cannot stack a {type(m0).__name__} layer")


def _split_norm(m: nn.Module, n: int, prefix: str, out: list[dict]) -> None:
    if isinstance(m, nn.Identity):
        return
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        parts = t.detach().chunk(n) if t.dim() > 0 else [t.detach()] * n
        for j in range(n):
            out[j][prefix + name] = parts[j].clone()


class _GroupedConvs(nn.Module):
    """The ``features`` of N ConvNet3D / ConvNet2D students: each conv grouped (``groups = N``)."""

    def __init__(self, seqs: list[nn.Sequential]):
        super().__init__()
        self.n = n = len(seqs)
        layers = []
        for i, m0 in enumerate(seqs[0]):
            mods = [s[i] for s in seqs]
            if isinstance(m0, (nn.Conv3d, nn.Conv2d)):
                c = type(m0)(n * m0.in_channels, n * m0.out_channels, m0.kernel_size, m0.stride,
                             m0.padding, groups=n, bias=m0.bias is not None, device="meta")
                c.weight = _cat(m.weight for m in mods)
                if m0.bias is not None:
                    c.bias = _cat(m.bias for m in mods)
                layers.append(c)
            elif isinstance(m0, (nn.ReLU, nn.MaxPool3d, nn.MaxPool2d, nn.AvgPool3d, nn.AvgPool2d)):
                layers.append(m0)
            else:
                layers.append(_grouped_norm(mods))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        layers = list(self.layers)
        i = 0
        while i < len(layers):
            m = layers[i]
            if i == 0 and shared:  # one batch for every student: an ungrouped first conv
                conv = F.conv3d if isinstance(m, nn.Conv3d) else F.conv2d
                x = conv(x, m.weight, m.bias, m.stride, m.padding)
            elif (isinstance(m, nn.ReLU) and i + 1 < len(layers)
                  and isinstance(layers[i + 1], (nn.MaxPool3d, nn.MaxPool2d))):
                # max-pool then ReLU: the same values and gradients as ReLU then max-pool (ReLU is
                # monotone; a window whose max is <= 0 passes no gradient either way), on 4-8x
                # fewer elements
                x = F.relu(layers[i + 1](x))
                i += 1
            else:
                x = m(x)
            i += 1
        return x

    def split(self, prefix: str, out: list[dict]) -> None:
        n = self.n
        for i, m in enumerate(self.layers):
            if isinstance(m, (nn.Conv3d, nn.Conv2d)):
                for name in ("weight", "bias"):
                    t = getattr(m, name)
                    if t is not None:
                        for j, part in enumerate(t.detach().chunk(n)):
                            out[j][f"{prefix}{i}.{name}"] = part.clone()
            else:
                _split_norm(m, n, f"{prefix}{i}.", out)


class BatchedConvNet3D(nn.Module):
    """N :class:`~vdfast.models.ConvNet3D` students (same shapes) as one network; see the module
    docstring. ``[B, N*C, T, H, W]`` (or ``[B, C, T, H, W]`` with ``shared``) -> ``[N, B, K]``."""

    def __init__(self, nets: list[ConvNet3D]):
        super().__init__()
        self.n = n = len(nets)
        self.features = _GroupedConvs([m.features for m in nets])
        self.pool = nets[0].pool
        self.p = nets[0].dropout.p
        c0 = nets[0].classifier
        self.classifier = nn.Conv3d(n * c0.in_channels, n * c0.out_channels, 1, groups=n, device="meta")
        self.classifier.weight = _cat(m.classifier.weight for m in nets)
        self.classifier.bias = _cat(m.classifier.bias for m in nets)
        self.num_classes = nets[0].num_classes
        # each student's global-RNG state (CPU and, on a GPU, CUDA) for its dropout draws: set by
        # the caller to the state right after that student was built; None: the global RNG
        self.rng_states: list[tuple] | None = None

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return h
        if self.rng_states is None:
            return F.dropout(h, self.p, True)
        b, nc = h.shape[:2]
        shape = (b, nc // self.n, *h.shape[2:])
        # the memory order a single student's tensor has here (channels_last_3d on a CPU)
        fmt = (_CL if h.dim() == 5 and not h.is_contiguous() and h.is_contiguous(memory_format=_CL)
               else torch.contiguous_format)
        ones = torch.ones(shape, dtype=h.dtype, device=h.device).contiguous(memory_format=fmt)
        cuda = h.device.type == "cuda"
        keep = (torch.get_rng_state(), torch.cuda.get_rng_state(h.device) if cuda else None)
        masks = []
        try:
            for j, (cpu_state, dev_state) in enumerate(self.rng_states):
                torch.set_rng_state(cpu_state)
                if cuda:
                    torch.cuda.set_rng_state(dev_state, h.device)
                masks.append(F.dropout(ones, self.p, True))
                self.rng_states[j] = (torch.get_rng_state(),
                                      torch.cuda.get_rng_state(h.device) if cuda else None)
        finally:
            torch.set_rng_state(keep[0])
            if cuda:
                torch.cuda.set_rng_state(keep[1], h.device)
        return h * torch.cat(masks, 1)

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 5:
            x = x.contiguous(memory_format=_CL)
        h = self.classifier(self._dropout(self.pool(self.features(x, shared))))
        return h.view(h.shape[0], self.n, self.num_classes, -1).amax(3).transpose(0, 1)

    def students(self) -> list[dict]:
        """The N students' weights as :class:`~vdfast.models.ConvNet3D` state dicts."""
        out = [{} for _ in range(self.n)]
        self.features.split("features.", out)
        for name in ("weight", "bias"):
            for j, part in enumerate(getattr(self.classifier, name).detach().chunk(self.n)):
                out[j][f"classifier.{name}"] = part.clone()
        return out


def _stack_param(ts) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in ts]).clone())


class BatchedFrameRNN(nn.Module):
    """N :class:`~vdfast.models.FrameRNN` students (frame ConvNet2D + GRU/LSTM + linear head) as one
    network: the frame CNN grouped, the recurrence and the head as batched matrix products over the
    students (PyTorch's GRU / LSTM equations, gate order r,z,n / i,f,g,o; zero initial state).
    ``[B, N*C, T, H, W]`` (or ``[B, C, T, H, W]`` with ``shared``) -> ``[N, B, K]``."""

    def __init__(self, nets: list[FrameRNN]):
        super().__init__()
        self.n = len(nets)
        r0 = nets[0].rnn
        if r0.num_layers != 1 or r0.bidirectional or not r0.batch_first:
            raise ValueError("batched students support a one-layer, one-direction batch-first RNN")
        self.cell = "lstm" if isinstance(r0, nn.LSTM) else "gru"
        self.cnn = _GroupedConvs([m.cnn.features for m in nets])
        self.w_ih = _stack_param(m.rnn.weight_ih_l0 for m in nets)   # [N, G*H, F]
        self.w_hh = _stack_param(m.rnn.weight_hh_l0 for m in nets)   # [N, G*H, H]
        self.b_ih = _stack_param(m.rnn.bias_ih_l0 for m in nets)     # [N, G*H]
        self.b_hh = _stack_param(m.rnn.bias_hh_l0 for m in nets)
        self.head_w = _stack_param(m.head.weight for m in nets)      # [N, K, H]
        self.head_b = _stack_param(m.head.bias for m in nets)
        self.hidden = r0.hidden_size
        self.rng_states = None  # no dropout in this student; kept for the common interface
        # the frame CNN's own classifier is not used by FrameRNN (kept as it is, for students())
        self._unused = [{f"cnn.classifier.{k}": v.detach().clone()
                         for k, v in m.cnn.classifier.state_dict().items()} for m in nets]

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        b, nc, t, hh, ww = x.shape
        n = self.n
        f = self.cnn(x.transpose(1, 2).reshape(b * t, nc, hh, ww), shared)    # [B*T, N*w, s, s]
        f = f.reshape(b, t, n, -1).permute(2, 0, 1, 3)                         # [N, B, T, F]
        gi = torch.baddbmm(self.b_ih.unsqueeze(1), f.reshape(n, b * t, -1),
                           self.w_ih.transpose(1, 2)).view(n, b, t, -1)      # [N, B, T, G*H]
        h = x.new_zeros(n, b, self.hidden)
        c = x.new_zeros(n, b, self.hidden)
        for s in range(t):
            gh = torch.baddbmm(self.b_hh.unsqueeze(1), h, self.w_hh.transpose(1, 2))  # [N, B, G*H]
            g = gi[:, :, s]
            if self.cell == "gru":
                ir, iz, inn = g.chunk(3, 2)
                hr, hz, hn = gh.chunk(3, 2)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                h = (1 - z) * torch.tanh(inn + r * hn) + z * h
            else:
                i, fg, gg, o = (g + gh).chunk(4, 2)
                c = torch.sigmoid(fg) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c)
        return torch.baddbmm(self.head_b.unsqueeze(1), h, self.head_w.transpose(1, 2))

    def students(self) -> list[dict]:
        """The N students' weights as :class:`~vdfast.models.FrameRNN` state dicts."""
        out = [{} for _ in range(self.n)]
        self.cnn.split("cnn.features.", out)
        names = {"w_ih": "rnn.weight_ih_l0", "w_hh": "rnn.weight_hh_l0", "b_ih": "rnn.bias_ih_l0",
                 "b_hh": "rnn.bias_hh_l0", "head_w": "head.weight", "head_b": "head.bias"}
        for mine, theirs in names.items():
            for j in range(self.n):
                out[j][theirs] = getattr(self, mine)[j].detach().clone()
        for j in range(self.n):
            out[j].update({k: v.clone() for k, v in self._unused[j].items()})
        return out


def stack(nets: list[nn.Module]) -> nn.Module:
    """One batched network holding ``nets`` (N students of one architecture and shape, each with
    its own weights): :class:`BatchedConvNet3D` or :class:`BatchedFrameRNN`."""
    if not nets:
        raise ValueError("stack needs at least one student")
    kind = type(nets[0])
    shapes = [[tuple(t.shape) for t in m.state_dict().values()] for m in nets]
    if any(type(m) is not kind for m in nets) or any(s != shapes[0] for s in shapes):
        raise ValueError("stack needs students of one architecture and shape")
    if kind is ConvNet3D:
        return BatchedConvNet3D(nets)
    if kind is FrameRNN:
        return BatchedFrameRNN(nets)
    raise ValueError(f"no batched form of {kind.__name__}; use the one-by-one evaluation "
                     f"(--eval-batched off)")
