"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021) for video clips.

Each call of :func:`draw` makes ONE set of parameters; :func:`apply` applies it to every clip it is
given, and the distillation step applies the same set to its real batch and to its synthetic batch
("siamese": both sides see the same transformation, so matching them is not disturbed by it), and
to every frame of a clip alike (a change of the scene, never a flicker between frames). Everything
is differentiable with respect to the clips: colour as arithmetic, crop / flip / scale / rotate as
one affine resampling (``grid_sample``), cutout as a mask. The parameters are tensors drawn on the
generator's device, so a step never reads a value back to the host.

Strategy: names joined by ``_`` (DSA's spelling), e.g. ``color_crop_cutout_flip_scale_rotate``:

* ``color``: brightness + U(-0.5, 0.5), saturation x U(0, 2) around the pixel's channel mean,
  contrast x U(0.5, 1.5) around the clip's mean (DSA's ranges, on normalised clips);
* ``crop``: a shift of up to 1/8 of the side each way (DSA's crop by padding);
* ``flip``: a horizontal flip with probability 1/2;
* ``scale``: each axis scaled by U(1/1.2, 1.2);
* ``rotate``: a rotation by U(-15, 15) degrees;
* ``cutout``: a square of half the side set to 0 (the mean colour of normalised clips).

The order of application is fixed: colour, then the affine resampling, then cutout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vdfast.config import dsa_names

SCALE, ROTATE_DEG, CROP, CUTOUT = 1.2, 15.0, 0.125, 0.5


def draw(strategy: str, gen: torch.Generator, device=None) -> dict:
    """One set of parameters for ``strategy`` (tensors on ``device``, drawn from ``gen``)."""
    names = dsa_names(strategy)  # ConfigError (a ValueError) for an unknown name
    device = torch.device(device) if device is not None else gen.device
    u = torch.rand(11, generator=gen, device=gen.device).to(device)  # one draw, fixed layout
    p: dict = {"names": names}
    if "color" in names:
        p["brightness"] = u[0] - 0.5
        p["saturation"] = u[1] * 2.0
        p["contrast"] = u[2] + 0.5
    sx = torch.ones((), device=device)
    sy = torch.ones((), device=device)
    ang = torch.zeros((), device=device)
    tx = torch.zeros((), device=device)
    ty = torch.zeros((), device=device)
    if "scale" in names:
        sx = 1 / SCALE + u[3] * (SCALE - 1 / SCALE)
        sy = 1 / SCALE + u[4] * (SCALE - 1 / SCALE)
    if "rotate" in names:
        ang = (u[5] * 2 - 1) * math.radians(ROTATE_DEG)
    if "crop" in names:  # affine_grid's coordinates span 2 per side: a shift of 1/8 side = 0.25
        tx = (u[6] * 2 - 1) * 2 * CROP
        ty = (u[7] * 2 - 1) * 2 * CROP
    flip = torch.where(u[8] < 0.5, -1.0, 1.0) if "flip" in names else torch.ones((), device=device)
    if {"scale", "rotate", "crop", "flip"} & set(names):
        cos, sin = torch.cos(ang), torch.sin(ang)
        p["theta"] = torch.stack([torch.stack([sx * cos * flip, -sin * sy, tx]),
                                  torch.stack([sin * sx * flip, cos * sy, ty])])
    if "cutout" in names:
        p["cutout"] = u[9:11]  # the square's centre (y, x) as fractions of the side
    return p


def apply(x: torch.Tensor, p: dict) -> torch.Tensor:
    """``x`` (float ``[N, C, T, H, W]``) under the parameters ``p`` of :func:`draw`."""
    if not p or not p.get("names"):
        return x
    n, c, t, h, w = x.shape
    if "brightness" in p:
        x = x + p["brightness"].to(x.dtype)
        m = x.mean(dim=1, keepdim=True)
        x = m + (x - m) * p["saturation"].to(x.dtype)
        m = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        x = m + (x - m) * p["contrast"].to(x.dtype)
    if "theta" in p:
        frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        grid = F.affine_grid(p["theta"].to(x.dtype).expand(n * t, 2, 3), [n * t, c, h, w],
                             align_corners=False)
        frames = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = frames.reshape(n, t, c, h, w).permute(0, 2, 1, 3, 4)
    if "cutout" in p:
        cy, cx = p["cutout"][0], p["cutout"][1]
        ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
        inside = ((ys[:, None] - cy).abs() < CUTOUT / 2) & ((xs[None, :] - cx).abs() < CUTOUT / 2)
        x = x * (~inside).to(x.dtype)
    return x
