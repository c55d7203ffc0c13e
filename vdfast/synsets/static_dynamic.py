"""StaticDynamicSynset: videos made of a frozen still image and a learnable dynamic memory.

Static-dynamic disentanglement (CVPR 2024; docs/s2d.md); a run's starting synset comes from
:func:`vdfast.methods.static.init_s2d`. Tensors (class-major throughout):

* ``static``  ``[nc * spc, C, H, W]`` the static memory (a buffer: frozen, never learned here);
* ``dynamic`` ``[nc * dpc, T, 1, H, W]`` the dynamic memory (learnable, N(0, 1) at init);
* ``weight`` ``[C, C + 1, 3, 3, 3]`` and ``bias`` ``[C]``: the integrator H, one
  ``Conv3d(C+1 -> C, 3x3x3, padding 1)`` over ``cat([static repeated over T, dynamic])`` (learnable).

Video ``n = c * ipc + j`` (slot j of class c) is ``H(static[s_n], dynamic[d_n])``, computed by
:func:`vdfast.ops.blend_static_dynamic` (no repeat, no concatenation). The pairing:

* ``"multi"`` (spc = dpc = 2 ipc): slot n owns statics ``2n, 2n+1`` and dynamics ``2n, 2n+1``;
  every call draws one of each at random (the synset's own generator, seeded by ``pairing_seed``,
  on the memory's device: no host sync). ``videos(deterministic=True)``, and every call while the
  synset is in eval mode (``synset.eval()``), uses the fixed pairing ``(2n, 2n)`` instead, so an
  evaluation sees one reproducible set of ``ipc`` videos per class.
* ``"1:1"`` (spc = dpc = ipc): slot n pairs static n with dynamic n, always.

Integrator init (``integrator_init``): ``"identity"`` (vdfast's default) makes the static part the
identity (centre tap 1 from input channel o to output channel o, everything else 0, bias 0) and draws
the dynamic channel's weights like PyTorch's Conv3d default (U(-b, b), b = 1/sqrt((C+1)·27)): the first
videos are the still image repeated plus a small (std ≈ 0.3 in normalised units) contribution of the
N(0, 1) dynamic memory, i.e. distillation starts from the static-only baseline. ``"default"``: all of
H like a fresh ``nn.Conv3d`` (the reference code's choice).

Storage (``storage()``): S + D + H bytes against ``ipc`` full videos per class: ``(2·3 + 2T) / 3T``
with the multi pairing (79 % at T = 16, 92 % at T = 8), ``(3 + T) / 3T`` with 1:1 (40 % at T = 16,
46 % at T = 8), plus 327 numbers for H.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from vdfast.profiling import traced
from vdfast.synsets.base import Synset, SynsetError, register

PAIRINGS = ("multi", "1:1")


def per_slot(pairing: str) -> int:
    """Still images (and dynamic memories) per synthetic video: 2 (multi) or 1 (1:1)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; choose from {', '.join(PAIRINGS)}")
    return 2 if pairing == "multi" else 1


def init_integrator(channels: int, gen: torch.Generator, mode: str = "identity"):
    """(weight ``[C, C+1, 3, 3, 3]``, bias ``[C]``) of the integrator; see the module docstring."""
    fan_in = (channels + 1) * 27
    bound = 1.0 / math.sqrt(fan_in)
    weight = torch.empty(channels, channels + 1, 3, 3, 3).uniform_(-bound, bound, generator=gen)
    bias = torch.empty(channels).uniform_(-bound, bound, generator=gen)
    if mode == "identity":
        weight[:, :channels] = 0
        weight[torch.arange(channels), torch.arange(channels), 1, 1, 1] = 1
        bias.zero_()
    elif mode != "default":
        raise ValueError(f"unknown integrator init {mode!r}; choose identity or default")
    return weight, bias


@register("static_dynamic")
class StaticDynamicSynset(Synset):
    """See the module docstring. ``labels`` ``[nc * ipc]`` (class-major, ipc per class)."""

    def __init__(self, static: torch.Tensor, dynamic: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, labels: torch.Tensor, classes, mean, std,
                 pairing: str = "multi", pairing_seed: int = 0,
                 soft_labels: torch.Tensor | None = None, meta: dict | None = None):
        k = per_slot(pairing)
        n, nc = labels.numel(), len(classes)
        if static.dim() != 4:
            raise SynsetError(f"static memory must be [Ns, C, H, W], got {tuple(static.shape)}")
        C, H, W = static.shape[1:]
        if dynamic.dim() != 5 or dynamic.shape[2] != 1 or tuple(dynamic.shape[3:]) != (H, W):
            raise SynsetError(f"dynamic memory must be [Nd, T, 1, {H}, {W}], got "
                              f"{tuple(dynamic.shape)}")
        if n % nc or static.shape[0] != k * n or dynamic.shape[0] != k * n:
            raise SynsetError(f"pairing {pairing!r} needs {k} still image(s) and {k} dynamic "
                              f"memor{'ies' if k > 1 else 'y'} per video: {n} videos of {nc} classes, "
                              f"got {static.shape[0]} and {dynamic.shape[0]}")
        if tuple(weight.shape) != (C, C + 1, 3, 3, 3) or tuple(bias.shape) != (C,):
            raise SynsetError(f"integrator must be weight [{C}, {C + 1}, 3, 3, 3] and bias [{C}], "
                              f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
        super().__init__(classes, dynamic.shape[1], H, mean, std, labels, soft_labels, meta)
        self.pairing, self.pairing_seed = pairing, int(pairing_seed)
        self.meta.update(pairing=pairing, pairing_seed=self.pairing_seed)
        self.register_buffer("static", static.detach().float().clone())
        self.dynamic = nn.Parameter(dynamic.detach().float().clone())
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone())
        self._gen: torch.Generator | None = None

    # ------------------------------------------------------------------ videos
    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.pairing_seed)
        return self._gen

    def pairing_indices(self, deterministic: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(static_idx, dynamic_idx), int64 ``[N]`` on the memory's device (see the module
        docstring); ``deterministic=None`` means ``not self.training``."""
        dev = self.dynamic.device
        n = self.labels.numel()
        slots = torch.arange(n, device=dev)
        if self.pairing == "1:1":
            return slots, slots
        base = 2 * slots
        if deterministic is None:
            deterministic = not self.training
        if deterministic:
            return base, base
        r = torch.randint(0, 2, (2, n), generator=self._generator(dev), device=dev)
        return base + r[0], base + r[1]

    @traced("vdfast.synset.videos")
    def videos(self, deterministic: bool | None = None, backend: str | None = None):
        """(float videos ``[nc * ipc, C, T, H, W]`` in normalised space, labels ``[nc * ipc]``),
        differentiable w.r.t. ``dynamic``, ``weight`` and ``bias`` (not the frozen ``static``).

        ``deterministic``: fixed pairing (True), a fresh random one (False), or None: random while
        ``self.training`` (the default mode), fixed after ``synset.eval()``. Only the multi pairing
        is random at all. ``backend``: passed to :func:`vdfast.ops.blend_static_dynamic`.
        """
        from vdfast.ops import blend_static_dynamic

        sidx, didx = self.pairing_indices(deterministic)
        out = blend_static_dynamic(self.static, self.dynamic, self.weight, self.bias, sidx, didx,
                                   backend=backend)
        return out, self.labels

    def param_groups(self, cfg) -> list[dict]:
        """[dynamic memory at ``lr_dynamic``, integrator at ``lr_integrator``] with the objective's
        published values unless set (:meth:`vdfast.config.S2DConfig.optim`); a group carries
        ``momentum`` when the objective's S2D setting fixes one (DM: 0.95), which SGD reads and
        other optimizers ignore."""
        objective = cfg.method.split("-", 1)[1] if "-" in cfg.method else cfg.method
        lr_d, lr_h, momentum = cfg.s2d.optim(objective)
        groups = [{"params": [self.dynamic], "lr": lr_d, "name": "dynamic"},
                  {"params": [self.weight, self.bias], "lr": lr_h, "name": "integrator"}]
        if momentum is not None:
            for g in groups:
                g["momentum"] = momentum
        return groups

    # ------------------------------------------------------------------ storage / io
    def storage(self) -> dict:
        d = super().storage()
        d.update(pairing=self.pairing,
                 static_bytes=self.static.numel() * self.static.element_size(),
                 dynamic_bytes=self.dynamic.numel() * self.dynamic.element_size(),
                 integrator_bytes=(self.weight.numel() + self.bias.numel()) * self.weight.element_size(),
                 integrator_params=self.weight.numel() + self.bias.numel())
        return d

    @classmethod
    def _from_header(cls, header, tensors):
        norm = header["normalization"]
        meta = {k: v for k, v in header.items()
                if k not in ("format", "kind", "vdfast", "classes", "frames", "size", "normalization",
                             "num_videos", "soft_labels", "storage", "pairing", "pairing_seed")}
        return cls(tensors["static"], tensors["dynamic"], tensors["weight"], tensors["bias"],
                   tensors["labels"], header["classes"], norm["mean"], norm["std"],
                   pairing=header.get("pairing", "multi"), pairing_seed=header.get("pairing_seed", 0),
                   soft_labels=tensors.get("soft_labels"), meta=meta)

