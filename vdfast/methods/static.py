"""Static learning: the still images (static memory) of static-dynamic disentanglement, and the
static-only baseline.

Static learning distills one random frame of each real clip, per class, into ``spc`` still images
with an image method on a 2-D ConvNet (:class:`~vdfast.models.ConvNet2D`; the paper: DC, depth 4,
width 128, instance norm):

* ``dm``: each iteration a NEW random ConvNet2D (weights redrawn from the run's generator) embeds
  ``batch_real`` random real frames per class and the still images; the loss is
  :func:`vdfast.ops.dm_loss` (per-class feature means, all classes in one batch: ConvNet2D's instance
  norm is per sample, so this equals the per-class loop). SGD(momentum 0.5).
* ``dc``: per-class gradient matching (:func:`vdfast.methods.dc.dc_loss`) on the same network,
  the paper's outer/inner loops by images per class (:func:`vdfast.methods.dc.dc_loops`), the network
  training on the still images between outer steps. SGD(momentum 0.5), lr 0.1.

The result ``[nc * spc, C, H, W]`` lives in the same normalised space as the videos (the store's
mean/std), class-major. It is saved as a *static memory file*, a directory holding::

    static.safetensors   "static" [nc*spc, C, H, W] float32, "labels" [nc*spc] int64
    static.json          kind "static_memory", classes, spc, size, normalization, how it was made

so a user can bring their own (``s2d.static_path``), and learned ones are reused across runs
(``s2d.static_cache``): ``s2d-dm`` with the 1:1 pairing and the static-only baseline at the same ipc
read the SAME static memory, so the comparison isolates the dynamic memory.

The static-only baseline (method ``static``): every still image repeated over time as a pixel synset,
``spc = ipc`` (no dynamic memory, no integrator).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from vdfast.data.store import ClipPool, ClipStore
from vdfast.engine.loop import Loop
from vdfast.memory import auto_chunk
from vdfast.methods.base import Method, reinit_
from vdfast.methods.dm import embed
from vdfast.models import ConvNet2D
from vdfast.ops import dm_loss, normalize_clips
from vdfast.version import __version__

log = logging.getLogger(__name__)

STATIC_FORMAT = 1
STATIC_LR = {"dm": 1.0, "dc": 0.1}   # the image methods' usual pixel learning rates
STATIC_METHODS = tuple(STATIC_LR)


class StaticMemoryError(ValueError):
    """A static memory file that does not fit the data or the request; the message says why."""


def random_frames(u8: torch.Tensor, mean, std, gen: torch.Generator | None = None,
                  rows: range | None = None, total: int = 0) -> torch.Tensor:
    """One random frame of each clip: uint8 ``[N, T, H, W, 3]`` -> normalised float ``[N, 3, H, W]``.
    Random numbers from ``gen`` on the clips' device (no host sync). With ``rows`` (and ``total``),
    ``u8`` holds rows ``rows`` of a batch of ``total`` clips: the picks are drawn for the whole
    batch and sliced, so a process holding some classes draws what one process holding all does."""
    n, t = u8.shape[:2]
    pick = torch.randint(0, t, (total or n,), generator=gen, device=u8.device)
    if rows is not None:
        pick = pick[rows.start:rows.stop]
    frames = u8[torch.arange(n, device=u8.device), pick]           # [N, H, W, 3]
    return normalize_clips(frames.unsqueeze(1), mean, std).squeeze(2)


def _dc():
    """The DC module (gradient matching), or None where this install lacks it."""
    try:
        from vdfast.methods import dc
    except ImportError:
        return None
    return dc if hasattr(dc, "dc_loss") and hasattr(dc, "dc_loops") else None


def _net2d(nc: int, size: int, width: int, depth: int, norm: str, device) -> ConvNet2D:
    """A ConvNet2D allocated without drawing from the global RNG (weights come from ``reinit_``)."""
    with torch.device("meta"):
        net = ConvNet2D(nc, size, width=width, depth=depth, norm=norm)
    return net.to_empty(device=device).eval()


def learn_static(store: ClipStore, spc: int, method: str = "dm", iterations: int = 1000,
                 lr: float = 0.0, batch_real: int = 256, width: int = 128, depth: int = 4,
                 norm: str = "instance", seed: int = 0, device="cpu", momentum: float = 0.5,
                 progress: bool = False, dist=None, bank: int = 0, bank_clips: int = 0,
                 bank_dtype: str = "float32", bank_cache=None) -> torch.Tensor:
    """Distill still images from one random frame per real clip.

    Args:
        store: the clips; ``spc`` still images per class are learned.
        method: ``"dm"`` or ``"dc"`` (the image method).
        iterations: optimisation steps (0: the real-frame initialisation itself).
        lr: SGD learning rate of the pixels (0: :data:`STATIC_LR` of the method).
        batch_real: real frames per class per iteration.
        width, depth, norm: the :class:`~vdfast.models.ConvNet2D` (paper: 128, 4, instance).
        seed: everything is drawn from local generators seeded with it (never the global RNG).
        dist: a :class:`vdfast.distributed.Dist` of N processes splits the work by classes (each
            embeds its classes' real frames and still images, the pixel gradients are summed);
            every process returns the same images, the 1-process ones up to float summation order.
        bank: ``method="dm"`` only: K >= 1 uses a bank of K random ConvNet2D networks with cached
            real frame means (:mod:`vdfast.methods.dm_bank`; network ``k``'s weights, clips and
            frames all from its own generator), ``bank_clips`` clips per class and network (0: all),
            stored as ``bank_dtype`` in ``bank_cache`` (None: in memory); 0: off.

    Returns:
        float32 ``[nc * spc, 3, H, W]`` still images in the store's normalised space, class-major,
        detached, on ``device``.

    Example::

        S = learn_static(ClipStore.builtin(), spc=2, method="dm", iterations=100, width=32, depth=3)
    """
    if method not in STATIC_METHODS:
        raise ValueError(f"static method {method!r} is not one of: {', '.join(STATIC_METHODS)}")
    store.check_request(ipc=spc)
    if bank and method != "dm" or bank < 0:
        raise ValueError(f"a static learning bank needs method 'dm' and bank >= 1 networks; got "
                         f"method {method!r}, bank {bank} (0: off)")
    device = torch.device(device)
    nc = store.num_classes
    gen_cpu = torch.Generator().manual_seed(seed)
    clips, labels = store.random_clips(spc, gen_cpu)
    static = random_frames(clips, store.mean, store.std, gen_cpu).to(device)
    labels = labels.to(device)
    if iterations == 0:
        return static.contiguous()
    dc = _dc() if method == "dc" else None
    if method == "dc" and dc is None:
        raise RuntimeError("static learning with DC needs vdfast.methods.dc (dc_loss), which this "
                           "install lacks; use --s2d-static-method dm")
    from vdfast.distributed import Dist

    dist = dist if dist is not None and dist.world <= nc else Dist(0, 1, device)  # else: each whole
    classes = dist.shard(nc)  # this process's block of classes
    gen = torch.Generator(device=device).manual_seed(seed)
    net = _net2d(nc, store.size, width, depth, norm, device)
    net.requires_grad_(method == "dc")
    pool = ClipPool(store, "train", device, classes=classes)
    x = static.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=lr or STATIC_LR[method], momentum=momentum)
    # DM: real frames per embedding forward (all of them at once would hold ~166 GB of
    # activations at MiniUCF on a GPU; instance norm is per image, so chunks change nothing)
    per_class = (bank_clips or max(store.counts("train"))) if bank else batch_real
    chunk = auto_chunk(net, (3, store.size, store.size), device, total=len(classes) * per_class)
    if bank:  # DM against a bank of random networks with cached real frame means
        return _learn_static_bank(store, net, pool, x, labels, classes, spc, opt, dist, iterations,
                                  seed, device, bank, bank_clips, bank_dtype, bank_cache,
                                  {"width": width, "depth": depth, "norm": norm}, progress, chunk)
    # DC: the paper's (outer, inner) loops by images per class; the network trains on the still
    # images between outer steps (plain SGD, lr 0.01, batch 256)
    outer, inner = dc.dc_loops(spc) if dc is not None else (1, 0)

    def step(_):
        reinit_(net, gen)
        for ol in range(outer):
            opt.zero_grad(set_to_none=True)
            _static_step(net, pool, store, x, labels, classes, spc, batch_real, gen, dc, chunk)
            dist.sum_grads_([x])
            opt.step()
            if ol < outer - 1:
                dc.train_epochs(net, x.detach(), labels, inner, 256, 0.01, gen)

    _loop(iterations, f"static memory ({method})", progress, dist).run(step)
    return x.detach().contiguous()


def _loop(iterations: int, desc: str, progress: bool, dist) -> Loop:
    """Static learning's loop: a stage of a method's ``init``, so no checkpoints of its own and no
    stop on a signal (the run stops at the distillation loop's first checkpoint after it)."""
    return Loop(total=iterations, desc=desc, progress=progress, dist=dist, stop_on_signal=False)


def _static_step(net, pool, store, x, labels, classes: range, spc, batch_real, gen, dc, chunk=0):
    """One outer step's gradient of static learning into ``x.grad``, from the block ``classes``
    (this process's): its real frames and its ``spc`` still images per class; DM embeds the real
    frames ``chunk`` at a time (0: all at once)."""
    nc = store.num_classes
    real_u8, real_labels = pool.sample(batch_real, gen)
    real = random_frames(real_u8, store.mean, store.std, gen, total=nc * batch_real,
                         rows=range(classes.start * batch_real, classes.stop * batch_real))
    own = slice(classes.start * spc, classes.stop * spc)  # this block's still images
    mine = x[own]
    if dc is None:
        with torch.no_grad():
            real_feat = embed(net, real, chunk)
        loss = dm_loss(real_feat, real_labels, net.embed(mine), labels[own], nc)
    else:  # class-major real frames and still images, as dc_loss wants
        loss = dc.dc_loss(net, real, mine, len(classes), first_class=classes.start)
    loss.backward(inputs=[x])


def _learn_static_bank(store, net, pool, x, labels, classes, spc, opt, dist, iterations, seed,
                       device, K, M, dtype, cache, net_cfg, progress, chunk) -> torch.Tensor:
    """Static learning with DM against a bank (:mod:`vdfast.methods.dm_bank`): iteration ``i``
    regenerates network ``schedule(seed, K, i)`` and matches its cached real frame means, built
    ``chunk`` frames per forward (0: all at once)."""
    from vdfast.methods import dm_bank

    key = dm_bank.bank_key(store, "convnet2d", net_cfg, K, M, seed, dtype, device)
    frames = lambda u8, g, rows, total: random_frames(u8, store.mean, store.std, g,  # noqa: E731
                                                      rows=rows, total=total)
    fn = dm_bank.dm_means_fn(net, store, pool, classes, M, seed, device, chunk, frames=frames)
    bank = dm_bank.build_bank(key, classes, device, fn, cache, progress=progress and dist.main,
                              desc=f"static dm bank ({K} networks)")
    if dist.main:
        log.info(bank.describe().replace("dm bank", "static memory dm bank", 1))
    own = slice(classes.start * spc, classes.stop * spc)

    def step(i):
        k = dm_bank.schedule(seed, K, i)
        reinit_(net, dm_bank.network_generator(seed, k, device))
        opt.zero_grad(set_to_none=True)
        loss = dm_bank.bank_dm_loss(bank.means(k), classes, net.embed(x[own]), labels[own],
                                    store.num_classes)
        loss.backward(inputs=[x])
        dist.sum_grads_([x])
        opt.step()

    _loop(iterations, "static memory (dm, bank)", progress, dist).run(step)
    return x.detach().contiguous()


# ------------------------------------------------------------------------ static memory files
def save_static(path: str | os.PathLike, static: torch.Tensor, classes, mean, std,
                meta: dict | None = None) -> Path:
    """Write a static memory directory (``static.safetensors`` + ``static.json``); returns it.

    ``static``: ``[nc * spc, C, H, W]`` normalised still images, class-major."""
    from safetensors.torch import save_file

    nc = len(classes)
    if static.dim() != 4 or static.shape[0] % nc:
        raise StaticMemoryError(f"static memory must be [nc * spc, C, H, W] with nc={nc}, got "
                                f"{tuple(static.shape)}")
    spc = static.shape[0] // nc
    path = Path(path)
    # every process of an N-process s2d run learns the same static memory and may write it to the
    # same cache at the same time: each writes its own folder and moves it (or its files) into
    # place atomically, so no writer trips over another's and a reader never sees a partial file
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    labels = torch.arange(nc).repeat_interleave(spc)
    from vdfast.engine.checkpoint import fsync_dir, fsync_file, sha256_file

    save_file({"static": static.detach().float().cpu().contiguous(), "labels": labels},
              str(tmp / "static.safetensors"))
    fsync_file(tmp / "static.safetensors")
    header = {"format": STATIC_FORMAT, "kind": "static_memory", "vdfast": __version__,
              "classes": list(classes), "spc": spc, "channels": static.shape[1],
              "size": static.shape[-1], "normalization": {"mean": list(mean), "std": list(std)},
              "sha256": sha256_file(tmp / "static.safetensors"), **(meta or {})}
    (tmp / "static.json").write_text(json.dumps(header, indent=1, default=str))
    fsync_file(tmp / "static.json")
    fsync_dir(tmp)
    try:
        tmp.rename(path)   # atomic; fails when the directory exists (another writer was first)
    except OSError:
        if not path.is_dir():
            raise
        for f in ("static.safetensors", "static.json"):  # tensors first, json last
            os.replace(tmp / f, path / f)
        tmp.rmdir()
    return path


def load_static(path: str | os.PathLike, store: ClipStore | None = None, spc: int | None = None,
                device="cpu") -> tuple[torch.Tensor, dict]:
    """Read a static memory: a directory (or its ``static.safetensors``) written by
    :func:`save_static`, or a saved ``static_dynamic`` synset directory (its frozen static memory).

    With ``store`` the classes, image size and normalisation are checked against it; with ``spc``
    the number of still images per class. Returns (``[nc * spc, C, H, W]`` float32, header)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        path = path.parent
    if (path / "static.json").exists():
        from vdfast.engine.checkpoint import sha256_file

        header = json.loads((path / "static.json").read_text())
        f = path / "static.safetensors"
        if not f.is_file() or ("sha256" in header and sha256_file(f) != header["sha256"]):
            raise StaticMemoryError(f"{f} is missing or does not match the sha256 in static.json "
                                    f"(the file is damaged); delete {path} to learn it again, or "
                                    f"pass another --s2d-static-path")
        static = load_file(str(f), device=str(device))["static"]
    elif (path / "synset.json").exists():
        header = json.loads((path / "synset.json").read_text())
        if header.get("kind") != "static_dynamic":
            raise StaticMemoryError(f"{path} is a {header.get('kind')!r} synset; only a "
                                    f"static_dynamic synset carries a static memory")
        static = load_file(str(path / "synset.safetensors"), device=str(device))["static"]
        header["spc"] = static.shape[0] // len(header["classes"])
    else:
        raise StaticMemoryError(f"{path} holds no static memory (no static.json or synset.json); "
                                f"pass a directory written by vdfast.methods.static.save_static or "
                                f"an s2d synset directory")
    if static.dim() != 4 or static.shape[0] != header["spc"] * len(header["classes"]):
        raise StaticMemoryError(f"{path}: static tensor {tuple(static.shape)} does not hold "
                                f"{header['spc']} images for each of {len(header['classes'])} classes")
    if store is not None:
        if list(header["classes"]) != list(store.classes):
            raise StaticMemoryError(f"{path}: its {len(header['classes'])} classes do not match the "
                                    f"data's {store.num_classes}; learn a static memory on this data "
                                    f"(leave s2d.static_path empty)")
        if static.shape[-1] != store.size or static.shape[-2] != store.size:
            raise StaticMemoryError(f"{path}: {static.shape[-1]}x{static.shape[-2]} images for "
                                    f"{store.size}x{store.size} clips; resize them or learn anew")
        norm = header.get("normalization", {})
        if norm and (tuple(norm["mean"]) != tuple(store.mean) or tuple(norm["std"]) != tuple(store.std)):
            raise StaticMemoryError(f"{path}: normalised with mean/std {norm['mean']}/{norm['std']}, "
                                    f"the data with {list(store.mean)}/{list(store.std)}")
    if spc is not None and header["spc"] != spc:
        raise StaticMemoryError(f"{path} holds {header['spc']} still images per class, {spc} are "
                                f"needed (s2d pairing 'multi': 2 x ipc, '1:1': ipc); learn one "
                                f"(leave s2d.static_path empty) or pass a matching file")
    return static.float().contiguous(), header


def _static_settings(cfg, spc: int) -> dict:
    s = cfg.s2d
    return {"spc": spc, "method": s.static_method, "iterations": s.static_iterations,
            "lr": s.static_lr or STATIC_LR[s.static_method], "batch_real": s.static_batch_real,
            "width": s.static_width, "depth": s.static_depth, "norm": s.static_norm, "seed": cfg.seed,
            **({"bank": [cfg.dm_bank, cfg.dm_bank_clips, cfg.dm_bank_dtype]}
               if cfg.dm_bank and s.static_method == "dm" else {})}


def _bank_options(cfg) -> dict:
    """learn_static's bank arguments from the run's ``--dm-bank*`` options (static method dm only);
    the bank is kept in ``$VDFAST_BANK_CACHE``, else ``s2d.static_cache``, else in memory."""
    if not cfg.dm_bank or cfg.s2d.static_method != "dm":
        return {}
    from vdfast.methods.dm_bank import cache_root

    return {"bank": cfg.dm_bank, "bank_clips": cfg.dm_bank_clips, "bank_dtype": cfg.dm_bank_dtype,
            "bank_cache": cache_root(None, cfg.s2d.static_cache or None)}


def cache_dir(cache: str | os.PathLike, store: ClipStore, settings: dict) -> Path:
    """``<cache>/static-<hash>``: one directory per (data, static settings)."""
    key = json.dumps({"data": store.train_fingerprint(), "classes": store.classes, **settings},
                     sort_keys=True, default=str)
    return Path(cache) / f"static-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def get_static(store: ClipStore, cfg, spc: int, device="cpu", progress: bool = False,
               dist=None) -> torch.Tensor:
    """The static memory of an s2d run: ``cfg.s2d.static_path`` when given, else a cached one from
    ``cfg.s2d.static_cache`` with the same settings, else learned with :func:`learn_static` (split
    by classes across the processes of ``dist``, and written to the cache when one is set).
    ``[nc * spc, C, H, W]`` on ``device``."""
    s = cfg.s2d
    if s.static_path:
        return load_static(s.static_path, store, spc, device)[0]
    settings = _static_settings(cfg, spc)
    where = cache_dir(s.static_cache, store, settings) if s.static_cache else None
    if where is not None and (where / "static.json").exists():
        try:
            return load_static(where, store, spc, device)[0]
        except StaticMemoryError as e:  # a damaged cache entry is learned again, not used
            log.warning(f"{e}; learning the static memory again")
    static = learn_static(store, spc, method=s.static_method, iterations=s.static_iterations,
                          lr=settings["lr"], batch_real=s.static_batch_real, width=s.static_width,
                          depth=s.static_depth, norm=s.static_norm, seed=cfg.seed, device=device,
                          progress=progress, dist=dist, **_bank_options(cfg))
    if where is not None:
        save_static(where, static, store.classes, store.mean, store.std,
                    meta={"dataset": store.name, "learned": settings})
    return static


def init_s2d(store: ClipStore, cfg, device, method: str, dist=None):
    """The starting :class:`~vdfast.synsets.StaticDynamicSynset` of an ``s2d-*`` method: the static
    memory from :func:`get_static` (``s2d.static_path``, the ``s2d.static_cache``, or static
    learning, split across the processes of ``dist``), N(0, 1) dynamic memory and the integrator,
    all drawn from generators seeded by ``cfg.seed`` (the global RNG is untouched)."""
    from vdfast.synsets.static_dynamic import StaticDynamicSynset, init_integrator, per_slot

    s2d = cfg.s2d
    k = per_slot(s2d.pairing)
    nc, ipc = store.num_classes, cfg.ipc
    static = get_static(store, cfg, k * ipc, device, dist=dist)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    dynamic = torch.randn(nc * k * ipc, store.frames, 1, store.size, store.size, generator=gen)
    weight, bias = init_integrator(static.shape[1], gen, s2d.integrator_init)
    labels = torch.arange(nc).repeat_interleave(ipc)
    return StaticDynamicSynset(static, dynamic.to(device), weight.to(device), bias.to(device),
                               labels.to(device), store.classes, store.mean, store.std,
                               pairing=s2d.pairing, pairing_seed=cfg.seed,
                               meta={"method": method, "ipc": ipc, "dataset": store.name})


class StaticOnly(Method):
    """The static-only baseline: ``ipc`` still images per class (static learning with the run's
    ``s2d.static_*`` settings, or ``s2d.static_path``), each repeated over the clip's frames, as a
    pixel synset. Same static memory as ``s2d-<objective>`` with ``--s2d-pairing 1:1``."""

    name = "static"
    iterative = False

    def init(self, store, cfg, device, gen):
        from vdfast.synsets import PixelSynset

        static = get_static(store, cfg, cfg.ipc, device, dist=self.dist)
        videos = static.unsqueeze(2).expand(-1, -1, store.frames, -1, -1)
        labels = torch.arange(store.num_classes, device=device).repeat_interleave(cfg.ipc)
        return PixelSynset(videos, labels, store.classes, store.mean, store.std,
                           meta={"method": "static", "ipc": cfg.ipc, "dataset": store.name,
                                 "static": _static_settings(cfg, cfg.ipc)})
