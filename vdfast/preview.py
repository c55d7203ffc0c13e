"""Previews people can look at: an animated GIF of every distilled video side by side, and a PNG
grid (one row per video, one column per frame), with class names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _frames_uint8(synset, max_videos: int) -> tuple[np.ndarray, list[str]]:
    synset.eval()
    with torch.no_grad():
        v, labels = synset.videos()
        v = synset.denormalize(v[:max_videos].detach().float().cpu())
    arr = (v.permute(0, 2, 3, 4, 1).numpy() * 255 + 0.5).astype(np.uint8)  # [N, T, H, W, 3]
    names = [synset.classes[int(i)] for i in labels[:max_videos].cpu()]
    return arr, names


def _upscale(a: np.ndarray, target: int = 96) -> np.ndarray:
    k = max(1, target // a.shape[-2])
    return a.repeat(k, axis=-3).repeat(k, axis=-2) if k > 1 else a


def preview(synset, out_dir, max_videos: int = 64, columns: int | None = None, fps: int = 6) -> dict:
    """Write ``preview.gif`` and ``preview.png`` into ``out_dir``; returns their paths."""
    from PIL import Image, ImageDraw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arr, names = _frames_uint8(synset, max_videos)
    arr = _upscale(arr)
    n, t, h, w, _ = arr.shape
    cols = columns or max(1, synset.ipc if synset.ipc > 1 else int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    pad, label_h = 2, 12
    cell_w, cell_h = w + pad, h + pad + label_h

    frames = []
    for f in range(t):
        canvas = Image.new("RGB", (cols * cell_w + pad, rows * cell_h + pad), (20, 20, 20))
        draw = ImageDraw.Draw(canvas)
        for i in range(n):
            r, c = divmod(i, cols)
            x0, y0 = pad + c * cell_w, pad + r * cell_h
            canvas.paste(Image.fromarray(arr[i, f]), (x0, y0 + label_h))
            draw.text((x0, y0), names[i][: max(4, w // 6)], fill=(230, 230, 230))
        frames.append(canvas)
    gif = out / "preview.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)

    grid = Image.new("RGB", (t * (w + pad) + pad + 90, n * (h + pad) + pad), (20, 20, 20))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        y0 = pad + i * (h + pad)
        draw.text((pad, y0 + h // 2 - 5), names[i][:14], fill=(230, 230, 230))
        for f in range(t):
            grid.paste(Image.fromarray(arr[i, f]), (90 + pad + f * (w + pad), y0))
    png = out / "preview.png"
    grid.save(png)
    return {"gif": str(gif), "png": str(png)}
