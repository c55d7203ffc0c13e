"""ConvNet3D, the network of every published video-distillation table, and the 2-D ConvNet used
for still images (static learning).

ConvNet3D (the video-distillation papers' network): ``depth`` blocks of ``Conv3d(k=(3,7,7), stride=(1,2,2), pad=(1,3,3))
-> [norm] -> ReLU -> MaxPool3d``; pool 1 is (1,2,2), the others 2x2x2; widths ``w, 2w, 2w, ...``
(64 -> 128 -> 128 by default); the class has no normalisation unless asked (``NetConfig``'s
default, the published video setting, asks for instance norm). ``embed`` flattens the last block (2048-d
at 16x112², 256-d at 8x64²). The head: AvgPool3d((2,2,2), stride 1) when H > 64 else (2,1,1),
Dropout(0.5), a 1x1x1 conv to the classes, then the max over the remaining time (and any remaining
space). Without normalisation or with instance norm (per clip), embedding a batch of all classes at
once gives exactly the per-class results (DM relies on it).

Example::

    net = ConvNet3D(num_classes=50, frames=16, size=112)
    logits = net(torch.randn(2, 3, 16, 112, 112))   # [2, 50]
    feats = net.embed(torch.randn(2, 3, 16, 112, 112))  # [2, 2048]
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("none", "instance", "batch")


def _norm3d(kind: str, ch: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "instance":
        return nn.GroupNorm(ch, ch, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(ch)
    raise ValueError(f"unknown norm {kind!r}; choose from {NORMS}")


def _norm2d(kind: str, ch: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "instance":
        return nn.GroupNorm(ch, ch, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    raise ValueError(f"unknown norm {kind!r}; choose from {NORMS}")


def cpu_layout(x: torch.Tensor) -> torch.Tensor:
    """On a CPU, videos in ``channels_last_3d`` memory order (oneDNN's fast layout for Conv3d and
    the pooling after it: ~1.7x faster than NCDHW at 8x32² here); unchanged on a GPU. A
    differentiable copy (a no-op when already in that order)."""
    if x.device.type == "cpu" and x.dim() == 5:
        try:
            return x.contiguous(memory_format=torch.channels_last_3d)
        except RuntimeError:  # inside torch.func.vmap (DC's batched mode) only the default layout
            return x
    return x


def feature_shape(frames: int, size: int, depth: int) -> tuple[int, int]:
    """(time, space) extent after ``depth`` ConvNet3D blocks."""
    t, s = frames, size
    for d in range(depth):
        s = (s + 2 * 3 - 7) // 2 + 1  # conv stride 2, pad 3, kernel 7
        if d == 0:
            s //= 2
        else:
            t //= 2
            s //= 2
    return t, s


class RowDropout(nn.Dropout):
    """``nn.Dropout`` that can draw its mask for a whole batch while this process holds only some
    of its rows. Data-parallel training sets ``split = (start, stop, total)``: the mask of all
    ``total`` rows is drawn (same global-RNG draws as one process running the whole batch, in the
    input's memory order) and rows ``start:stop`` are applied, so N processes train what one does.
    With ``split`` None it is ``nn.Dropout`` exactly."""

    split: tuple[int, int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split is None or not self.training or self.p == 0:
            return super().forward(x)
        start, stop, total = self.split
        if x.shape[0] != stop - start:
            raise ValueError(f"RowDropout split {self.split} for a batch of {x.shape[0]} rows")
        fmt = (torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous()
               and x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format)
        full = torch.ones((total, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return x * F.dropout(full.contiguous(memory_format=fmt), self.p, True)[start:stop]


class ConvNet3D(nn.Module):
    def __init__(self, num_classes: int, frames: int = 16, size: int = 112, channels: int = 3,
                 width: int = 64, depth: int = 3, norm: str = "none", dropout: float = 0.5):
        super().__init__()
        t, s = feature_shape(frames, size, depth)
        if t < 1 or s < 1:
            raise ValueError(
                f"ConvNet3D with depth {depth} cannot take {frames} frames at {size}x{size} "
                f"(features would be {t}x{s}x{s}); use a smaller depth or larger clips")
        layers = []
        cin = channels
        for d in range(depth):
            cout = width if d == 0 else 2 * width
            layers += [nn.Conv3d(cin, cout, (3, 7, 7), (1, 2, 2), (1, 3, 3)), _norm3d(norm, cout),
                       nn.ReLU(inplace=True), nn.MaxPool3d((1, 2, 2) if d == 0 else 2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.feat_dim = cin * t * s * s
        self.feat_shape = (cin, t, s, s)
        kt = min(2, t)
        self.pool = nn.AvgPool3d((kt, 2, 2) if size > 64 and s >= 2 else (kt, 1, 1), stride=1)
        self.dropout = RowDropout(dropout)
        self.classifier = nn.Conv3d(cin, num_classes, 1)
        self.num_classes = num_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, T, H, W] -> [N, feat_dim]."""
        return self.features(cpu_layout(x)).flatten(1)

    def _head(self, f: torch.Tensor) -> torch.Tensor:
        """The logits ``[N, classes]`` of the last block's features ``f``."""
        return self.classifier(self.dropout(self.pool(f))).flatten(2).amax(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self.features(cpu_layout(x)))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward: the logits ``[N, classes]`` and the last block's features averaged over
        time and space ``[N, channels]`` (a compact appearance-and-motion descriptor)."""
        f = self.features(cpu_layout(x))
        return self._head(f), f.flatten(2).mean(2)


class ConvNet2D(nn.Module):
    """The image ConvNet of static learning: ``depth`` x (Conv 3x3 -> norm -> ReLU -> AvgPool 2),
    width 128, instance norm by default; a linear classifier on the flattened features."""

    def __init__(self, num_classes: int, size: int = 112, channels: int = 3, width: int = 128,
                 depth: int = 4, norm: str = "instance"):
        super().__init__()
        layers = []
        cin, s = channels, size
        for _ in range(depth):
            layers += [nn.Conv2d(cin, width, 3, padding=1), _norm2d(norm, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            cin, s = width, s // 2
        if s < 1:
            raise ValueError(f"ConvNet2D depth {depth} is too deep for {size}x{size} images")
        self.features = nn.Sequential(*layers)
        self.feat_dim = width * s * s
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class FrameRNN(nn.Module):
    """Cross-architecture student: a 2-D ConvNet per frame, then a GRU or LSTM over time, then a
    linear classifier on the last hidden state (the "CNN+GRU/LSTM" rows of the published tables)."""

    def __init__(self, num_classes: int, size: int = 112, channels: int = 3, cell: str = "gru",
                 width: int = 64, depth: int = 3, hidden: int = 256):
        super().__init__()
        self.cnn = ConvNet2D(num_classes, size=size, channels=channels, width=width, depth=depth,
                             norm="instance")
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cell)
        if rnn is None:
            raise ValueError(f"unknown recurrent cell {cell!r}; choose gru or lstm")
        self.rnn = rnn(self.cnn.feat_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        f = self.cnn.embed(x.transpose(1, 2).reshape(n * t, c, h, w)).view(n, t, -1)
        out, _ = self.rnn(f)
        return self.head(out[:, -1])


STUDENTS = ("convnet3d", "cnn_gru", "cnn_lstm")


def build_student(name: str, num_classes: int, frames: int, size: int, width: int = 64,
                  depth: int = 3, norm: str = "none") -> nn.Module:
    """A fresh student network by name (see ``STUDENTS``)."""
    if name == "convnet3d":
        return ConvNet3D(num_classes, frames, size, width=width, depth=depth, norm=norm)
    if name in ("cnn_gru", "cnn_lstm"):
        d = max(1, min(3, (size.bit_length() - 3)))
        return FrameRNN(num_classes, size, cell=name.split("_")[1], width=width, depth=d)
    raise ValueError(f"unknown student {name!r}; choose from {', '.join(STUDENTS)}")


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
