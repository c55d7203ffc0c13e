"""A class-conditional latent video diffusion transformer in the style of Latte (docs/gvd.md).

Input: per-frame latents, frame-major ``[B, F, C, h, w]`` (the layout of
:func:`vdfast.ops.guided_step`). Each frame is cut into ``patch x patch`` patches (tokens); the
blocks alternate **spatial** attention (the tokens of one frame) and **temporal** attention (one
patch position across frames). The timestep and the class enter every block through adaptive layer
norm with zero-initialised gates (adaLN-zero, DiT). Class ``num_classes`` is the null class of
classifier-free guidance; with ``class_tokens`` the class embedding is also added to every token
(a direct class signal that a small network trained briefly picks up much sooner than through the
adaLN modulation alone). The output has the input's shape: the predicted noise epsilon or the
velocity v, as the network was trained (``vdfast.methods.gvd.train_generator``).

Attention is a choice (``attention=``, GVD's ``--gvd-attention``): ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``), ``xformers`` (xformers'
``memory_efficient_attention``, CUDA only: xformers has no CPU kernel) or ``auto`` (xformers on a CUDA
tensor when xformers imports, SDPA otherwise). The two agree to float rounding, not bit for bit;
:func:`resolve_attention` turns a choice into the backend a device will use.

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


ATTENTION = ("auto", "xformers", "sdpa")  # the choices of VideoDiT(attention=...) and gvd.attention


def xformers_available() -> bool:
    """Whether xformers' ``memory_efficient_attention`` imports here."""
    return _xformers_attention() is not None


def resolve_attention(choice: str, device) -> str:
    """The backend (``xformers`` | ``sdpa``) that ``choice`` (one of :data:`ATTENTION`) uses on
    ``device``: ``auto`` is xformers on CUDA when it imports, else SDPA. A
    :class:`vdfast.config.ConfigError` (one line) when ``xformers`` is asked for and cannot run: not
    importable, or not a CUDA device."""
    from vdfast.config import ConfigError

    if choice not in ATTENTION:
        raise ConfigError(f"gvd attention={choice!r} is not one of: {', '.join(ATTENTION)}")
    cuda = torch.device(device).type == "cuda"
    if choice == "xformers":
        if not xformers_available():
            raise ConfigError("gvd attention=xformers, but xformers does not import here (install "
                              "xformers built for this torch), or pass --gvd-attention sdpa or auto")
        if not cuda:
            raise ConfigError(f"gvd attention=xformers needs a CUDA device (xformers has no CPU "
                              f"kernel), the run's device is {torch.device(device)}; pass "
                              f"--gvd-attention sdpa or auto")
        return "xformers"
    if choice == "auto":
        return "xformers" if cuda and xformers_available() else "sdpa"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Multi-head attention, ``[B, L, H, d]`` in and out (xformers' BMHK layout). ``backend``:
    ``sdpa``, ``xformers`` or ``auto`` (xformers for CUDA tensors when it imports, else SDPA)."""
    if backend == "auto":
        backend = "xformers" if q.is_cuda and xformers_available() else "sdpa"
    if backend == "xformers":
        mea = _xformers_attention()
        if mea is None:
            raise RuntimeError("attention backend xformers: xformers does not import")
        return mea(q, k, v)
    if backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(ATTENTION)}")
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
        self.backend = "auto"  # set by VideoDiT.set_attention
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).unbind(2)
        return self.proj(attention(q, k, v, self.backend).reshape(B, L, D))


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
        attention: ``auto`` | ``xformers`` | ``sdpa`` (see the module docstring); not a weight:
            :meth:`set_attention` changes it on a built network.
    """

    def __init__(self, num_classes: int, frames: int, latent_size: int, channels: int = 4,
                 patch: int = 2, width: int = 64, depth: int = 4, heads: int = 4,
                 class_tokens: bool = False, attention: str = "auto"):
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
        self.set_attention(attention)

    def set_attention(self, backend: str) -> "VideoDiT":
        """Every block's attention backend: ``auto`` | ``xformers`` | ``sdpa``."""
        if backend not in ATTENTION:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(ATTENTION)}")
        self.attention = backend
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend
        return self

    @classmethod
    def from_preset(cls, size: str, num_classes: int, frames: int, latent_size: int,
                    channels: int = 4, patch: int = 2, class_tokens: bool = False,
                    attention: str = "auto") -> "VideoDiT":
        if size not in PRESETS:
            raise ValueError(f"unknown generator size {size!r}; choose from {', '.join(PRESETS)}")
        w, d, h = PRESETS[size]
        return cls(num_classes, frames, latent_size, channels, patch, w, d, h, class_tokens, attention)

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


# ------------------------------------------------------------------ starting from local weights
def _latte_names(sd: dict[str, torch.Tensor], channels: int, patch: int) -> dict[str, torch.Tensor]:
    """A diffusers ``LatteTransformer3DModel`` state dict in VideoDiT's names, for the parts the two
    share: the patch embedding, every block's attention (q, k, v fused into ``qkv``; Latte has no
    q/k/v biases, so those are zeros), the timestep embedder and the output projection (its noise
    half when Latte learns sigma). Latte's GEGLU feed-forwards, affine norms, text cross-attention,
    caption projection and single adaLN table have no counterpart here and stay behind (reported by
    :func:`load_matching`). Latte's spatial block i is VideoDiT block 2i, its temporal block i 2i+1."""
    out: dict[str, torch.Tensor] = {}
    pairs = {"pos_embed.proj.weight": "embed.weight", "pos_embed.proj.bias": "embed.bias",
             "adaln_single.emb.timestep_embedder.linear_1.weight": "t_embed.mlp.0.weight",
             "adaln_single.emb.timestep_embedder.linear_1.bias": "t_embed.mlp.0.bias",
             "adaln_single.emb.timestep_embedder.linear_2.weight": "t_embed.mlp.2.weight",
             "adaln_single.emb.timestep_embedder.linear_2.bias": "t_embed.mlp.2.bias"}
    out.update({ours: sd[theirs] for theirs, ours in pairs.items() if theirs in sd})
    for prefix, offset in (("transformer_blocks", 0), ("temporal_transformer_blocks", 1)):
        i = 0
        while f"{prefix}.{i}.attn1.to_q.weight" in sd:
            a, b = f"{prefix}.{i}.attn1", f"blocks.{2 * i + offset}.attn"
            q, k, v = (sd[f"{a}.to_{n}.weight"] for n in "qkv")
            out[f"{b}.qkv.weight"] = torch.cat([q, k, v])
            out[f"{b}.qkv.bias"] = torch.cat([sd.get(f"{a}.to_{n}.bias", torch.zeros(len(q)))
                                              for n in "qkv"])
            out[f"{b}.proj.weight"], out[f"{b}.proj.bias"] = sd[f"{a}.to_out.0.weight"], sd[f"{a}.to_out.0.bias"]
            i += 1
    if "proj_out.weight" in sd:  # rows ordered (p, q, c) as VideoDiT's; learned sigma: keep the noise half
        w, bias = sd["proj_out.weight"], sd["proj_out.bias"]
        c_out = w.shape[0] // (patch * patch)
        if c_out in (channels, 2 * channels):
            out["out.weight"] = w.view(patch * patch, c_out, -1)[:, :channels].reshape(-1, w.shape[1])
            out["out.bias"] = bias.view(patch * patch, c_out)[:, :channels].reshape(-1)
    return out


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict at ``path`` and its format: a diffusers ``LatteTransformer3DModel`` folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``; ``latte``), a ``.safetensors`` file
    (a vdfast ``gen_final.safetensors``) or a ``.pt`` file (a state dict of
    the generator, or a dict with ``model``/``ema`` in it, as training scripts save; ``vdfast``).
    Local files only."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        cfg_file, weights = p / "config.json", sorted(p.glob("*.safetensors"))
        if not cfg_file.is_file() or not weights:
            raise FileNotFoundError(f"gvd.generator_init={path!r}: a folder needs config.json and "
                                    f"*.safetensors (a diffusers model written by save_pretrained)")
        import json

        from safetensors.torch import load_file

        kind = json.loads(cfg_file.read_text()).get("_class_name", "")
        if kind != "LatteTransformer3DModel":
            raise ValueError(f"gvd.generator_init={path!r} holds a diffusers {kind or 'unknown'} "
                             f"model; vdfast maps LatteTransformer3DModel weights only")
        sd = {}
        for f in weights:
            sd.update(load_file(str(f)))
        return sd, "latte"
    if not p.is_file():
        raise FileNotFoundError(f"gvd.generator_init={path!r} does not exist; pass a vdfast "
                                f"generator file (gen_final.safetensors) or a local diffusers Latte folder")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:  # tensors and plain containers only: a pickle from elsewhere runs no code here
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"gvd.generator_init={path!r} cannot be read as weights "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             f"pass a .safetensors file (a vdfast gen_final.safetensors), a .pt or a diffusers "
                             f"Latte folder") from e
        sd = sd.get("ema", sd.get("model", sd)) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise ValueError(f"gvd.generator_init={path!r} is not a state dict")
    return sd, ("latte" if any(k.startswith("transformer_blocks.") for k in sd) else "vdfast")


@torch.no_grad()
def load_matching(net: VideoDiT, path: str) -> dict:
    """Copy into ``net`` every tensor of the weights at ``path`` (:func:`read_weights`) whose
    VideoDiT name and shape match; the rest of ``net`` keeps its initialisation. Returns the report
    ``{"format", "loaded": [names], "skipped": {name: reason}, "not_in_source": [names]}`` (names
    in VideoDiT's terms; for Latte also Latte's tensors that have no counterpart)."""
    sd, fmt = read_weights(path)
    src = _latte_names(sd, net.channels, net.patch) if fmt == "latte" else sd
    own = net.state_dict()
    loaded, skipped = [], {}
    for name, value in src.items():
        if name not in own:
            skipped[name] = "no such tensor in this generator"
        elif tuple(value.shape) != tuple(own[name].shape):
            skipped[name] = f"shape {tuple(value.shape)} here {tuple(own[name].shape)}"
        else:
            own[name].copy_(value.to(own[name].dtype))
            loaded.append(name)
    if fmt == "latte":
        used = {"pos_embed.", "adaln_single.emb.timestep_embedder.", "proj_out."}
        for name in sd:
            attn = ".attn1.to_" in name and name.startswith(("transformer_blocks.", "temporal_transformer_blocks."))
            if not attn and not any(name.startswith(u) for u in used):
                skipped[name] = "Latte part with no VideoDiT counterpart"
    return {"format": fmt, "loaded": sorted(loaded), "skipped": skipped,
            "not_in_source": sorted(set(own) - set(loaded))}
