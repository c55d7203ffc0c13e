"""The embedded default dataset: procedurally generated actions.

A class is a SHAPE (square, disc, triangle) x a MOTION (left, right, up, down): appearance alone
tells a third of the answer and motion alone a quarter, so a method that keeps only still images
(static-only) loses to one that keeps motion. Every clip has its own random background colour and
texture, object colour, size, start point and speed, so one random clip per class is a poor summary
of its class — the gap that distillation is meant to close.

Deterministic by seed (a local ``numpy.random.Generator``, never the global RNG); ~1 s to build.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("square", "disc", "triangle")
MOTIONS = ("left", "right", "up", "down")
_DIRS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}  # (dy, dx)

BUILTIN_CLASSES = tuple(f"{s}-{m}" for s in SHAPES for m in MOTIONS)


def _mask(shape: str, yy, xx, cy, cx, r):
    """Soft (anti-aliased) mask of ``shape`` centred at (cy, cx) with radius r; arrays [T, H, W]."""
    dy, dx = yy - cy, xx - cx
    if shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
    elif shape == "disc":
        d = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "triangle":  # pointing up; signed distance of the max of three half-planes
        k = np.sqrt(3.0)
        d1 = dy - r * 0.6
        d2 = (-k * dx - dy) / 2 - r * 0.6
        d3 = (k * dx - dy) / 2 - r * 0.6
        d = np.maximum(np.maximum(d1, d2), d3)
    else:
        raise ValueError(shape)
    return np.clip(0.5 - d, 0.0, 1.0)


def render_clip(rng: np.random.Generator, shape: str, motion: str, frames: int, size: int) -> np.ndarray:
    """One clip, uint8 [frames, size, size, 3]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy[None], xx[None]
    # background: a dark colour, a faint gradient and pixel noise (fresh noise every frame)
    bg = rng.uniform(0.05, 0.35, size=3)
    gdir = rng.normal(size=2)
    grad = (yy * gdir[0] + xx * gdir[1]) / size * 0.08
    noise = rng.normal(0, 0.04, size=(frames, size, size, 1))
    img = bg[None, None, None, :] + grad[..., None] + noise
    # object: a bright colour of random hue, clearly above the background
    col = rng.uniform(0.2, 1.0, size=3)
    col = col / col.max() * rng.uniform(0.75, 1.0)
    r = rng.uniform(0.12, 0.18) * size
    speed = rng.uniform(0.06, 0.1) * size
    vy, vx = _DIRS[motion]
    travel = speed * (frames - 1)
    margin = r + 1
    lo_x = margin + (travel if vx < 0 else 0)
    hi_x = size - margin - (travel if vx > 0 else 0)
    lo_y = margin + (travel if vy < 0 else 0)
    hi_y = size - margin - (travel if vy > 0 else 0)
    cx0 = rng.uniform(lo_x, max(lo_x, hi_x))
    cy0 = rng.uniform(lo_y, max(lo_y, hi_y))
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    m = _mask(shape, yy, xx, cy0 + vy * speed * t, cx0 + vx * speed * t, r)[..., None]
    img = img * (1 - m) + col[None, None, None, :] * m
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_builtin_arrays(seed: int = 0, train_per_class: int = 60, test_per_class: int = 30,
                        frames: int = 8, size: int = 32):
    """{"train": [uint8 [n, T, H, W, 3] per class], "test": [...]} and the class names."""
    rng = np.random.default_rng(seed)
    out = {"train": [], "test": []}
    for name in BUILTIN_CLASSES:
        shape, motion = name.split("-")
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            out[split].append(np.stack([render_clip(rng, shape, motion, frames, size) for _ in range(n)]))
    return out, list(BUILTIN_CLASSES)
