"""A class-conditional latent video diffusion transformer in the style of Latte (spec/gvd.md).

Input: per-frame latents, frame-major ``[B, F, C, h, w]`` (the layout of
:func:`vdfast.ops.guided_step`). Each frame is cut into ``patch x patch`` patches (tokens); the
blocks alternate **spatial** attention (the tokens of one frame) and **temporal** attention (one
patch position across frames). The timestep and the class enter every block through adaptive layer
norm with zero-initialised gates (adaLN-zero, DiT). Class ``num_classes`` is the null class of
classifier-free guidance; with ``class_tokens`` the class embedding is also added to every token
(a direct class signal that a small network trained briefly picks up much sooner than through the
adaLN modulation alone). The output has the input's shape: the predicted noise epsilon or the
velocity v, as the network was trained (``vdfast.methods.gvd.train_generator``).

Attention uses xformers' ``memory_efficient_attention`` on CUDA when it imports, and
``torch.nn.functional.scaled_dot_product_attention`` elsewhere (xformers has no CPU kernel).

Example::

    net = VideoDiT.from_preset("tiny", num_classes=12, frames=8, latent_size=8)
    eps = net(torch.randn(2, 8, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([3, 12]))
    eps = net.forward_cfg(x, t, y, scale=4.0)   # classifier-free guidance (12 = the null class)
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# width, depth (blocks, spatial and temporal alternating), heads. DiT-S/B/L/XL widths.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 4, 4),
    "small": (192, 8, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


@functools.lru_cache(maxsize=None)
def _xformers_attention():
    try:
        from xformers.ops import memory_efficient_attention
        return memory_efficient_attention
    except Exception:  # not installed, or built without kernels for this torch
        return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention, ``[B, L, H, d]`` in and out (xformers' BMHK layout)."""
    if q.is_cuda:
        mea = _xformers_attention()
        if mea is not None:
            return mea(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Fixed sinusoidal embedding ``[len(pos), dim]``."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    ang = pos.double()[:, None] * freq[None]
    emb = torch.cat([ang.sin(), ang.cos()], 1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros(len(pos), 1, dtype=emb.dtype)], 1)
    return emb.float()


def sincos_2d(dim: int, n: int) -> torch.Tensor:
    """Fixed 2-D sinusoidal embedding of an ``n x n`` grid, ``[n*n, dim]`` (half rows, half cols)."""
    g = torch.arange(n)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, yy.flatten()), sincos_1d(dim - dim // 2, xx.flatten())], 1)


class TimestepEmbed(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32)
                         / half)
        ang = t.float()[:, None] * freq[None]
        return self.mlp(torch.cat([ang.cos(), ang.sin()], 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).unbind(2)
        return self.proj(attention(q, k, v).reshape(B, L, D))


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """A DiT block with adaLN-zero; ``kind`` says whether its sequence is a frame's tokens
    (spatial) or one position's frames (temporal)."""

    def __init__(self, dim: int, heads: int, kind: str, mlp_ratio: float = 4.0):
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x ``[B, F, N, D]`` (F frames of N tokens), c ``[B, D]``."""
        B, Fr, N, D = x.shape
        if self.kind == "spatial":
            seq, cc = x.reshape(B * Fr, N, D), c.repeat_interleave(Fr, 0)
        else:
            seq, cc = x.transpose(1, 2).reshape(B * N, Fr, D), c.repeat_interleave(N, 0)
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(cc).chunk(6, 1)
        seq = seq + g1[:, None] * self.attn(_modulate(self.norm1(seq), sh1, sc1))
        seq = seq + g2[:, None] * self.mlp(_modulate(self.norm2(seq), sh2, sc2))
        if self.kind == "spatial":
            return seq.view(B, Fr, N, D)
        return seq.view(B, N, Fr, D).transpose(1, 2)


class VideoDiT(nn.Module):
    """Latte-style latent video transformer predicting epsilon; see the module docstring.

    Args:
        num_classes: real classes; index ``num_classes`` is the null class (CFG).
        frames, latent_size, channels: the latent clip ``[F, C, s, s]``.
        patch: patch side (``latent_size % patch == 0``).
        width, depth, heads: transformer size (or use :meth:`from_preset`).
        class_tokens: also add the class embedding to every input token.
    """

    def __init__(self, num_classes: int, frames: int, latent_size: int, channels: int = 4,
                 patch: int = 2, width: int = 64, depth: int = 4, heads: int = 4,
                 class_tokens: bool = False):
        super().__init__()
        if latent_size % patch:
            raise ValueError(f"latent size {latent_size} is not divisible by the patch {patch}")
        self.num_classes, self.frames, self.latent_size = num_classes, frames, latent_size
        self.channels, self.patch, self.width = channels, patch, width
        self.class_tokens = class_tokens
        self.config = dict(num_classes=num_classes, frames=frames, latent_size=latent_size,
                           channels=channels, patch=patch, width=width, depth=depth, heads=heads,
                           class_tokens=class_tokens)
        self.embed = nn.Conv2d(channels, width, patch, stride=patch)
        n = latent_size // patch
        self.register_buffer("pos_space", sincos_2d(width, n), persistent=False)
        self.register_buffer("pos_time", sincos_1d(width, torch.arange(frames)), persistent=False)
        self.t_embed = TimestepEmbed(width)
        self.y_embed = nn.Embedding(num_classes + 1, width)
        self.blocks = nn.ModuleList(Block(width, heads, "spatial" if i % 2 == 0 else "temporal")
                                    for i in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, patch * patch * channels)
        self._init_weights()

    @classmethod
    def from_preset(cls, size: str, num_classes: int, frames: int, latent_size: int,
                    channels: int = 4, patch: int = 2, class_tokens: bool = False) -> "VideoDiT":
        if size not in PRESETS:
            raise ValueError(f"unknown generator size {size!r}; choose from {', '.join(PRESETS)}")
        w, d, h = PRESETS[size]
        return cls(num_classes, frames, latent_size, channels, patch, w, d, h, class_tokens)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @torch.no_grad()
    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for m in list(self.blocks) + [self]:   # adaLN-zero: every block starts as the identity
            ada = m.ada if isinstance(m, Block) else m.ada_out
            nn.init.zeros_(ada[-1].weight)
            nn.init.zeros_(ada[-1].bias)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x ``[B, F, C, s, s]``, t ``[B]`` timesteps, y ``[B]`` labels -> epsilon (or v) ``[B, F, C, s, s]``."""
        B, Fr, C, S, _ = x.shape
        p, n = self.patch, S // self.patch
        tok = self.embed(x.reshape(B * Fr, C, S, S)).flatten(2).transpose(1, 2)  # [B*F, N, D]
        tok = tok.view(B, Fr, n * n, -1) + self.pos_space[None, None].to(tok.dtype)
        tok = tok + self.pos_time[None, :Fr, None].to(tok.dtype)
        ye = self.y_embed(y)
        if self.class_tokens:
            tok = tok + ye[:, None, None].to(tok.dtype)
        c = self.t_embed(t) + ye
        for blk in self.blocks:
            tok = blk(tok, c)
        shift, scale = self.ada_out(c).chunk(2, 1)
        h = self.out(_modulate(self.norm_out(tok.reshape(B, Fr * n * n, -1)), shift, scale))
        h = h.view(B, Fr, n, n, p, p, C).permute(0, 1, 6, 2, 4, 3, 5)
        return h.reshape(B, Fr, C, S, S)

    def forward_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                    scale: float) -> torch.Tensor:
        """Classifier-free guidance: ``out_u + scale (out_c - out_u)``; one forward when scale == 1
        (for v-prediction this is the same guidance as on epsilon: the map v -> eps is affine)."""
        if scale == 1.0:
            return self(x, t, y)
        null = torch.full_like(y, self.null_class)
        eps = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        e_c, e_u = eps.chunk(2)
        return e_u + scale * (e_c - e_u)
