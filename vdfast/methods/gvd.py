"""GVD: guiding video diffusion (docs/gvd.md). Non-iterative: all the work is in ``init``.

Stages, each cached in its own folder ``<workdir>/<stage>-<key>`` where ``key`` hashes the stage's
settings and those of the stages it uses (another setting = another folder, never a stale reuse):

1. ``ae``       a per-frame autoencoder trained on TRAIN frames (or a local diffusers folder);
                checkpointed every ``gvd.checkpoint_every`` steps and resumed.
2. ``latents``  every train clip encoded, one fp16 tensor per class LABEL NAME.
3. ``gen``      the class-conditional VideoDiT trained with the DDPM loss on those latents (train
                split only), EMA weights; checkpointed and resumed.
4. ``modes``    per class: k-means of the flattened latents with ``k = ipc * segments``, keyed by
                label name (class enumeration order changes nothing).
5. ``samples``  guided sampling in chunks of ``gvd.chunk`` instances, each chunk decoded and saved as
                it finishes (a killed run resumes at the next chunk; peak memory independent of ipc).
6. ``teacher``  a ConvNet3D trained on the real train split; soft labels softmax(logits / tau) per
                MVIC segment, averaged over the segments of an instance.

Every label->index mapping the generator sees is the index in the SORTED label names, and each
instance's noise comes from a generator seeded by (seed, label name, slot): a store with the same
classes in another order gives the same modes and the same videos per label.

Several processes (``self.dist``): the autoencoder, the generator and the teacher train
data-parallel (each rank computes its rows of every batch through ``DistributedDataParallel``,
whose all-reduce sums the gradients: the same training as one process; the teacher's dropout masks
are drawn for the whole batch; caches and checkpoints hold the plain modules' weights); rank 0
computes the latents and modes first and the others load them from the workdir once it is done
(``Dist.main_process_first``; without a workdir every rank computes them); then sampling is
sharded by class (``Dist.shard``) and the ranks' rows are summed into the whole set on every rank.

``workdir``: ``gvd.workdir`` if set, else ``<run_dir>/gvd`` when the caller set ``GVD.run_dir``
(the run's ``out``), else nothing is written and nothing resumes.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vdfast.data.store import ClipStore
from vdfast.distributed import Dist, unwrap
from vdfast.engine import checkpoint
from vdfast.engine.checkpoint import StageCache, data_identity, identity_key
from vdfast.engine.worklist import run_worklist
from vdfast.engine.train import class_probability, soft_labels, train_stats, train_teacher
from vdfast.methods.base import Method
from vdfast.methods.gvd_sample import instance_generator, kmeans, noise_schedule, sample

log = logging.getLogger(__name__)

__all__ = ["GVD", "train_autoencoder", "encode_train", "train_generator", "discover_modes",
           "generate", "train_teacher", "soft_labels", "data_identity"]


# ------------------------------------------------------------------------------------- helpers
def _load_cached(path: Path, device="cpu"):
    """A cached stage file (:func:`vdfast.engine.checkpoint.load_cached`)."""
    return checkpoint.load_cached(path, device)


def _train_ckpt(path: Path | None):
    """The Checkpointer of a training stage's resumable state (``<stage>/ae-state/`` for
    ``path`` = ``<stage>/ae.pt``)."""
    return None if path is None else checkpoint.Checkpointer(path.with_name(path.stem + "-state"),
                                                             kind="gvd-train")


def _save_train_state(path: Path, modules: dict, opt, gen: torch.Generator, step: int) -> None:
    """A resumable training checkpoint: the modules' weights, optimizer, data RNG and step, one
    verified checkpoint directory (:mod:`vdfast.engine.checkpoint`)."""
    state = {**{k: m.state_dict() for k, m in modules.items()}, "opt": opt.state_dict(),
             "gen": gen.get_state(), "step": step}
    _train_ckpt(path).save(step, lambda d: torch.save(state, d / "state.pt"))


def _load_train_state(path: Path | None, modules: dict, opt, gen: torch.Generator) -> int:
    """Restore what :func:`_save_train_state` wrote (if any); the step to resume at. A damaged
    newest checkpoint falls back to the one before."""
    if path is None:
        return 0
    found = _train_ckpt(path).load(warn=log.warning)
    if found is None:
        return 0
    s = _load_cached(found.path / "state.pt")
    for k, m in modules.items():
        m.load_state_dict(s[k])
    opt.load_state_dict(s["opt"])
    gen.set_state(s["gen"])
    return s["step"]


def _train_loop(train_step, steps: int, start: int, desc: str, metric: str, g, dist, progress,
                state: Path | None, modules: dict, opt, gen: torch.Generator) -> None:
    """A training stage's steps ``start .. steps - 1`` (:class:`vdfast.engine.loop.Loop`): the
    loss shown every 50 steps, the resumable state (:func:`_save_train_state`, written by the main
    process) saved every ``g.checkpoint_every`` steps and on SIGINT / SIGTERM."""
    from vdfast.engine.loop import Loop

    def save(done, pending):
        if dist.main:
            _save_train_state(state, modules, opt, gen, done)

    Loop(total=steps, start=start, desc=desc, unit="step", progress=progress, dist=dist, window=50,
         partial=True, postfix=lambda v: {metric: f"{v:.4f}"}, every=g.checkpoint_every,
         save=None if state is None else save, save_at_end=False, what=f"{desc} step").run(train_step)


def _to_unit(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float in [-1, 1] ``[..., 3, H, W]``."""
    return u8.float().div(127.5).sub(1.0).movedim(-1, -3)


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] ``[..., 3, H, W]`` -> uint8 ``[..., H, W, 3]``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def _fingerprint(path: str) -> str:
    """sha256 of the file at ``path``, or of a folder's files in name order (hashed once per
    process while the files' sizes and times stay the same: stage keys are asked for repeatedly)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    if not files or not all(f.exists() for f in files):
        raise FileNotFoundError(f"gvd.generator_init={path!r} does not exist or is an empty folder")
    return _sha256(p, tuple((f, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=8)
def _sha256(p: Path, files: tuple) -> str:
    h = hashlib.sha256()
    for f, _, _ in files:
        h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _seeded(build, seed: int):
    """``build()`` with its parameter initialisation drawn from ``seed`` (the caller's global RNG
    is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _sorted_train(store: ClipStore) -> list[tuple[str, np.ndarray]]:
    return [(lab, store.clips("train", store.classes.index(lab))) for lab in sorted(store.classes)]


# ------------------------------------------------------------------------ stage 1: autoencoder
def build_autoencoder(g, channels: int = 3):
    from vdfast.models.autoencoder import DiffusersAE, FrameAutoencoder

    if g.autoencoder:
        return DiffusersAE(g.autoencoder)
    return FrameAutoencoder(channels, 4, down=g.ae_down, width=g.ae_width)


def _share(dist, batch: int, what: str) -> slice:
    """This process's rows of a ``batch`` every process draws alike (data-parallel training: each
    computes its rows' share of the batch loss, :meth:`Dist.data_parallel`'s all-reduce adds the
    shares' gradients)."""
    rows = dist.shard(batch)
    if not len(rows):
        raise ValueError(f"gvd {what} ({batch}) is smaller than the {dist.world} processes; "
                         f"raise it to at least {dist.world}")
    return slice(rows.start, rows.stop)


class _Reconstruct(torch.nn.Module):
    """``decoder(encoder(x))`` of an autoencoder as a module's forward (what the autoencoder's
    training step runs, wrapped by :meth:`Dist.data_parallel`)."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, x):
        return self.ae.decoder(self.ae.encoder(x))


def train_autoencoder(store: ClipStore, g, seed: int, device, ckpt: Path | None = None,
                      progress: bool = True, dist=None):
    """The frame autoencoder of config ``g`` (GVDConfig) trained on random TRAIN frames (MSE),
    then its latent ``scale`` set to 1 / std of the training latents. Resumes from ``ckpt/ae-state/``.
    With ``dist`` (N processes, all calling this) each process computes its share of every batch
    through a ``DistributedDataParallel`` wrapper that sums the gradients: the same training as
    one process; the main one writes ``ckpt`` (the autoencoder's own state dict)."""
    dist = dist or Dist()
    ae = _seeded(lambda: build_autoencoder(g), seed * 7 + 3).to(device)
    if g.autoencoder:
        return ae.eval()
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    done = checkpoint.weights_file(ckpt, "ae_final")
    if done is not None:
        ae.load_state_dict(checkpoint.load_weights(done, device))
        return ae.eval()
    arrays = [a for _, a in _sorted_train(store)]
    offsets = np.cumsum([0] + [a.shape[0] for a in arrays])
    gen = torch.Generator().manual_seed(seed * 7 + 1)
    opt = torch.optim.Adam(ae.parameters(), lr=g.ae_lr)
    state = ckpt / "ae.pt" if ckpt else None
    step = _load_train_state(state, {"model": ae}, opt, gen)

    def frames_batch(n):
        ci = torch.randint(int(offsets[-1]), (n,), generator=gen).numpy()
        fi = torch.randint(store.frames, (n,), generator=gen).numpy()
        cls = np.searchsorted(offsets, ci, side="right") - 1
        u8 = np.stack([arrays[c][i - offsets[c], f] for c, i, f in zip(cls, ci, fi)])
        return _to_unit(torch.from_numpy(u8)).to(device)

    mine = _share(dist, g.ae_batch, "ae_batch")
    ae.train()
    recon = dist.data_parallel(_Reconstruct(ae))  # after the resume: every rank holds its weights

    def train_step(_):
        x = frames_batch(g.ae_batch)[mine]
        loss = F.mse_loss(recon(x), x) * (x.shape[0] / g.ae_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # N processes: the DDP wrapper sums the gradients
        opt.step()
        return loss.detach()

    _train_loop(train_step, g.ae_steps, step, "gvd autoencoder", "mse", g, dist, progress, state,
                {"model": ae}, opt, gen)
    ae.eval()
    with torch.no_grad():
        z = torch.cat([ae.encode_raw(frames_batch(g.ae_batch)) for _ in range(max(1, 1024 // g.ae_batch))])
        ae.scale.fill_(1.0 / float(z.std().clamp_min(1e-6)))
    if ckpt is not None and dist.main:
        checkpoint.save_weights(ckpt / "ae_final.safetensors", ae.state_dict())
    return ae


# ---------------------------------------------------------------------------- stage 2: latents
@torch.no_grad()
def encode_clips(ae, u8: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """uint8 clips ``[n, T, H, W, 3]`` -> latents ``[n, T, c, h, w]`` (float32)."""
    dev = next(ae.parameters()).device
    out = []
    for s in range(0, u8.shape[0], chunk):
        x = _to_unit(u8[s:s + chunk].to(dev))            # [b, T, 3, H, W]
        b, t = x.shape[:2]
        z = ae.encode(x.flatten(0, 1))
        out.append(z.view(b, t, *z.shape[1:]).float())
    return torch.cat(out) if out else torch.zeros(0)


def encode_train(ae, store: ClipStore, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """Every train clip's latent, ``{label name: fp16 [n, T, c, h, w]}`` (CPU)."""
    f = cache / "latents.safetensors" if cache else None
    if f is not None and f.exists():
        from safetensors.torch import load_file

        return load_file(str(f))
    lat = {lab: encode_clips(ae, torch.from_numpy(np.ascontiguousarray(a))).half().cpu()
           for lab, a in _sorted_train(store)}
    if f is not None:
        from safetensors.torch import save_file

        checkpoint.atomic_write(f, lambda tmp: save_file(lat, str(tmp)))
    return lat


# -------------------------------------------------------------------------- stage 3: generator
def build_generator(g, labels: list[str], frames: int, latent_shape):
    from vdfast.models.video_dit import VideoDiT

    c, s = latent_shape[0], latent_shape[-1]
    return VideoDiT.from_preset(g.generator, len(labels), frames, s, channels=c, patch=g.patch,
                                class_tokens=g.class_tokens, attention=g.attention)


def generator_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor,
                   prediction: str, min_snr: float) -> torch.Tensor:
    """The diffusion loss of one batch: MSE of the network's ``pred`` against its target (the noise
    for ``eps``, ``v = sqrt(ab) noise - sqrt(1 - ab) x0`` for ``v``), per instance weighted by
    min-SNR-gamma (``min(snr, gamma) / snr`` for eps, ``/ (snr + 1)`` for v; ``min_snr`` 0: all 1).
    ``ab``: alpha-bar of each instance's timestep, ``[B, 1, 1, 1, 1]``."""
    target = noise if prediction == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    per = (pred.float() - target).pow(2).flatten(1).mean(1)
    if min_snr > 0:
        snr = (ab / (1 - ab)).flatten()
        w = snr.clamp(max=min_snr) / (snr if prediction == "eps" else snr + 1)
        per = per * w
    return per.mean()


def _lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then 1 (``constant``) or a cosine decay to 0 at
    ``steps`` (``cosine``)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))
    return 1.0


def generator_batch_loss(net, x_all: torch.Tensor, y_all: torch.Tensor, ab: torch.Tensor, g,
                         gen: torch.Generator, mine: slice = slice(None)) -> torch.Tensor:
    """This process's share of one training batch's loss: the whole batch (clips, timesteps,
    class dropout, noise) is drawn from ``gen`` alike in every process, ``mine`` selects this
    process's rows, and their loss is weighted by rows / batch, so the shares sum to the loss of
    the whole batch. ``net``: the VideoDiT, or its :meth:`Dist.data_parallel` wrapper."""
    n = x_all.shape[0]
    idx = torch.randint(n, (g.gen_batch,), generator=gen)
    t = torch.randint(g.train_timesteps, (g.gen_batch,), generator=gen)
    drop = torch.rand(g.gen_batch, generator=gen) < g.p_uncond
    noise = torch.randn((g.gen_batch,) + tuple(x_all.shape[1:]), generator=gen)
    idx, t, drop, noise = (v[mine].to(x_all.device) for v in (idx, t, drop, noise))
    x0 = x_all[idx].float()
    y = torch.where(drop, torch.full_like(y_all[idx], unwrap(net).null_class), y_all[idx])
    a = ab[t].view(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.autocast("cuda", torch.bfloat16, enabled=x_t.is_cuda):  # bf16 matmuls on GPU
        pred = net(x_t, t, y)
    return generator_loss(pred, x0, noise, a, g.prediction, g.min_snr) * (x0.shape[0] / g.gen_batch)


def start_from(net, path: str, ckpt: Path | None = None, progress: bool = True) -> dict:
    """``net`` initialised from the local weights at ``path`` where names and shapes match
    (:func:`vdfast.models.video_dit.load_matching`); the report goes to ``ckpt/init_report.json``.
    No weight matrix matching is an error (the wrong file, or a generator of another size)."""
    from vdfast.models.video_dit import load_matching

    rep = load_matching(net, path)
    shapes = net.state_dict()
    if not any(shapes[k].dim() > 1 for k in rep["loaded"]):  # a bias or two is no start
        some = "; ".join(f"{k}: {v}" for k, v in list(rep["skipped"].items())[:4])
        raise ValueError(f"gvd.generator_init={path!r}: no weight matrix matches this generator's names and "
                         f"shapes ({rep['format']} weights; {some}); check --gvd-generator and "
                         f"--gvd-patch against the weights")
    if ckpt is not None:
        (ckpt / "init_report.json").write_text(json.dumps(rep, indent=1))
    if progress:
        log.info(f"gvd generator: {len(rep['loaded'])} tensors from {path} ({rep['format']}), "
                 f"{len(rep['skipped'])} of the source skipped, {len(rep['not_in_source'])} of the "
                 f"generator's {len(net.state_dict())} left at their initialisation"
            + (f" (report: {ckpt / 'init_report.json'})" if ckpt else ""))
    return rep


def train_generator(latents: dict[str, torch.Tensor], g, seed: int, device, ckpt: Path | None = None,
                    progress: bool = True, dist=None):
    """The class-conditional VideoDiT (EMA weights, eval mode) trained with the diffusion loss
    (:func:`generator_loss`: eps or v target, optional min-SNR weights) on ``latents`` (train
    split), the lr warmed up over 5 % of the steps (at most 500) and then constant or cosine-decayed
    to 0 (``g.lr_schedule``); class index = index of the label in ``sorted(latents)``. With
    ``dist`` the training is data-parallel, as in :func:`train_autoencoder`."""
    dist = dist or Dist()
    labels = sorted(latents)
    x_all = torch.cat([latents[k] for k in labels]).to(device)
    y_all = torch.cat([torch.full((latents[k].shape[0],), i, dtype=torch.long)
                       for i, k in enumerate(labels)]).to(device)
    frames, lat_shape = x_all.shape[1], tuple(x_all.shape[2:])
    net = _seeded(lambda: build_generator(g, labels, frames, lat_shape), seed * 7 + 4).to(device)
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    done = checkpoint.weights_file(ckpt, "gen_final")
    if done is not None:
        net.load_state_dict(checkpoint.load_weights(done, device))
        return net.eval()
    if g.generator_init:
        start_from(net, g.generator_init, ckpt if dist.main else None, progress)
    ema = copy.deepcopy(net)
    ema.requires_grad_(False)
    ab = noise_schedule(g.schedule, g.train_timesteps).to(device=device, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=g.gen_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed * 7 + 2)
    state = ckpt / "gen.pt" if ckpt else None
    step = _load_train_state(state, {"model": net, "ema": ema}, opt, gen)
    warmup = max(1, min(500, g.gen_steps // 20))
    mine = _share(dist, g.gen_batch, "gen_batch")
    net.train()
    model = dist.data_parallel(net)  # after the resume; the EMA and the checkpoints use net itself

    def train_step(step):
        loss = generator_batch_loss(model, x_all, y_all, ab, g, gen, mine)
        for pg in opt.param_groups:
            pg["lr"] = g.gen_lr * _lr_factor(step, g.gen_steps, warmup, g.lr_schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # N processes: the DDP wrapper sums the gradients
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - g.ema)
        return loss.detach()

    _train_loop(train_step, g.gen_steps, step, "gvd generator", "loss", g, dist, progress, state,
                {"model": net, "ema": ema}, opt, gen)
    if ckpt is not None and dist.main:
        checkpoint.save_weights(ckpt / "gen_final.safetensors", ema.state_dict())
    return ema.eval()


# ------------------------------------------------------------------------------ stage 4: modes
def discover_modes(latents: dict[str, torch.Tensor], k: int, iters: int, seed: int,
                   cache: Path | None = None) -> dict[str, torch.Tensor]:
    """``{label: modes [k, T, c, h, w]}``: k-means of each class's flattened latents, seeded by
    (seed, label NAME); cached as one safetensors file keyed by label."""
    f = cache / "modes.safetensors" if cache else None
    if f is not None and f.exists():
        from safetensors.torch import load_file

        return load_file(str(f))
    out = {}
    for lab in sorted(latents):
        z = latents[lab]
        gen = torch.Generator().manual_seed(instance_generator(seed, lab, -1).initial_seed())
        centres, _ = kmeans(z.flatten(1).float(), k, iters, gen)
        out[lab] = centres.view(k, *z.shape[1:]).contiguous()
    if f is not None:
        from safetensors.torch import save_file

        checkpoint.atomic_write(f, lambda tmp: save_file(out, str(tmp)))
    return out


# ---------------------------------------------------------------------------- stage 5: samples
def mvic_guides(modes: torch.Tensor, slot: int, segments: int) -> torch.Tensor:
    """The per-frame guide ``[T, c, h, w]`` of instance ``slot``: segment s (frames
    ``s*T/M .. (s+1)*T/M``) takes those frames of mode ``slot * M + s``."""
    T = modes.shape[1]
    seg = T // segments
    parts = [modes[slot * segments + s, s * seg:(s + 1) * seg] for s in range(segments)]
    return torch.cat(parts)


@torch.no_grad()
def generate(model, ae, modes: dict[str, torch.Tensor] | None, classes: list[str], ipc: int, g,
             seed: int, device, cache: Path | None = None, progress: bool = True,
             backend: str | None = None, score=None,
             labels: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ipc`` instances of every class (class-major in ``classes`` order), generated in chunks of
    ``g.chunk``; each chunk is decoded and, with ``cache``, saved as it finishes (resume), then
    copied into the preallocated result: the working memory is one chunk's whatever ``ipc`` is,
    plus the result itself (uint8 videos and fp16 latents, the synset's own size).

    With ``g.select`` = R > 1, each instance is drawn R times (candidate r's noise from
    ``instance_generator(seed, label, slot, candidate=r)``, the same guide) and the candidate with
    the highest ``score(uint8 videos [B, T, H, W, 3], labels [B] names) -> [B]`` is kept (first
    on ties); the chunk's candidates are drawn one after another, so memory does not grow with R.
    ``labels``: every label name the generator was trained on (its class index of a label is the
    label's position in ``sorted(labels)``, :func:`train_generator`); default ``classes``. Pass it
    whenever ``classes`` is a part of them (a process's shard), or the part's own order would pick
    other classes' embeddings.
    Returns (uint8 videos ``[N, T, H, W, 3]``, labels ``[N]`` in ``classes`` order, latents fp16)."""
    if g.select > 1 and score is None:
        raise ValueError(f"gvd select={g.select} needs a score function (the teacher's probability "
                         f"of the class); pass score= or set select=1")
    sorted_labels = sorted(labels if labels is not None else classes)
    if model.num_classes != len(sorted_labels) or not set(classes) <= set(sorted_labels):
        raise ValueError(f"gvd: the generator knows {model.num_classes} classes; labels gives "
                         f"{len(sorted_labels)} and must hold every class asked for")
    jobs = [(c, lab, k) for c, lab in enumerate(classes) for k in range(ipc)]
    ab = noise_schedule(g.schedule, g.train_timesteps)
    shape = (model.frames, model.channels, model.latent_size, model.latent_size)
    vids = lats = None  # filled chunk by chunk (no list of chunks concatenated at the end: a 2nd copy)
    chunks = range(0, len(jobs), g.chunk)

    def draw(s, tick):
        part = jobs[s:s + g.chunk]
        y = torch.tensor([sorted_labels.index(lab) for _, lab, _ in part], device=device)
        guide = None
        if modes is not None and g.lam > 0:
            guide = torch.stack([mvic_guides(modes[lab], k, g.segments) for _, lab, k in part]).to(device)
        d = best = None
        for r in range(g.select):
            gens = [instance_generator(seed, lab, k, device, candidate=r) for _, lab, k in part]
            z = sample(model, y, gens, shape, ab, g.steps, g.sampler, g.cfg_scale, guide,
                       g.lam, g.rho, g.t_stop, g.segments, backend=backend, prediction=g.prediction)
            frames = ae.decode(z.flatten(0, 1).to(next(ae.parameters()).dtype))
            u8 = _to_u8(frames.float()).view(len(part), shape[0], *frames.shape[-2:], 3).cpu()
            z = z.half().cpu()
            sc = score(u8, [lab for _, lab, _ in part]).float().cpu() if g.select > 1 else None
            if d is None:
                d, best = {"videos": u8, "latents": z}, sc
            else:  # a later candidate replaces the kept one where it scores higher
                better = sc > best
                d["videos"][better], d["latents"][better] = u8[better], z[better]
                best = torch.where(better, sc, best)
            tick(len(part))
        return d

    def keep(s, d):
        nonlocal vids, lats
        if vids is None:
            vids = torch.empty((len(jobs),) + tuple(d["videos"].shape[1:]), dtype=torch.uint8)
            lats = torch.empty((len(jobs),) + tuple(d["latents"].shape[1:]), dtype=torch.float16)
        vids[s:s + g.chunk] = d["videos"]
        lats[s:s + g.chunk] = d["latents"]

    # each chunk is saved as it finishes: a rerun resumes at the first missing one; one process
    # stops at a signal after its chunk (processes sampling their shares cannot stop alone)
    alone = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    run_worklist(chunks, lambda s: cache / f"chunk{s // g.chunk:05d}.pt" if cache else None, draw,
                 lambda d, tmp: torch.save(d, tmp), load=lambda s, f: keep(s, _load_cached(f)),
                 after=keep, size=lambda s: len(jobs[s:s + g.chunk]) * g.select,
                 desc="gvd sampling", unit="video", progress=progress,
                 stop="gvd sampling chunk" if alone else None)
    labels = torch.tensor([c for c, _, _ in jobs], dtype=torch.long)
    return vids, labels, lats


# ---------------------------------------------------------------------- stage 6: soft labels
# the teacher and its soft labels are vdfast.engine.train's (train_teacher, soft_labels,
# class_probability, train_stats), shared with the evaluation


# ------------------------------------------------------------------------------------ method
class GVD(Method):
    """GVD (objective ``gvd``), non-iterative. ``run_dir`` (set by the caller before ``init``)
    places the stage cache at ``run_dir/gvd`` when ``gvd.workdir`` is empty."""

    iterative = False
    shardable = True  # sampling split by class across processes (training stages: rank 0 first)

    def workdir(self, cfg) -> Path | None:
        return self.stage_root(cfg.gvd.workdir)

    @staticmethod
    def stage_identities(store, cfg) -> dict[str, dict]:
        """What each stage's cache folder is keyed by (``<stage>-<hash of this dict>``)."""
        g, seed = cfg.gvd, cfg.seed
        data = data_identity(store)
        ids = {"ae": {"data": data, "seed": seed, **{k: getattr(g, k) for k in (
            "autoencoder", "ae_down", "ae_width", "ae_steps", "ae_batch", "ae_lr")}}}
        ids["latents"] = {"ae": identity_key(ids["ae"])}
        ids["gen"] = {"latents": identity_key(ids["latents"]), "seed": seed,
                      **{k: getattr(g, k) for k in (
            "generator", "patch", "gen_steps", "gen_batch", "gen_lr", "ema", "p_uncond",
            "train_timesteps", "schedule", "prediction", "min_snr", "class_tokens", "lr_schedule")}}
        if g.generator_init:  # the weights' content, not just their path (empty: keys as before)
            ids["gen"]["generator_init"] = {"path": g.generator_init,
                                            "sha256": _fingerprint(g.generator_init)}
        ids["modes"] = ({"latents": identity_key(ids["latents"]), "k": cfg.ipc * g.segments,
                         "iters": g.kmeans_iters, "seed": seed} if g.lam > 0 else None)
        ids["samples"] = {"gen": identity_key(ids["gen"]),
                          "modes": ids["modes"] and identity_key(ids["modes"]),
                          "ipc": cfg.ipc, "classes": store.classes, "seed": seed,
                          **{k: getattr(g, k) for k in ("sampler", "steps", "cfg_scale", "lam",
                                                         "rho", "t_stop", "segments", "chunk")}}
        ids["teacher"] = {"data": data, "classes": store.classes, "seed": seed,
                          "net": dataclasses.asdict(cfg.net), "epochs": g.teacher_epochs,
                          "eval": {k: getattr(cfg.eval, k) for k in (
                              "lr", "momentum", "weight_decay", "batch", "standardize")}}
        if g.select > 1:  # candidates ranked by the teacher (select 1 keeps the earlier keys)
            ids["samples"]["select"] = g.select
            ids["samples"]["teacher"] = identity_key(ids["teacher"])
        return ids

    def teacher(self, store, cfg, device, progress: bool = True, dist=None):
        """The soft-label teacher of this run (trained, or loaded from the workdir's cache), e.g. to
        give random real clips the same soft labels: ``soft_labels(teacher, clips_u8, ...)``."""
        work = StageCache(self.workdir(cfg))
        return train_teacher(store, cfg.net, cfg.eval, cfg.gvd.teacher_epochs, cfg.seed, device,
                             work.stage("teacher", self.stage_identities(store, cfg)["teacher"]),
                             progress, dist)

    def for_device(self, cfg, device):
        """``gvd.attention`` resolved for ``device`` (``auto`` -> xformers or sdpa); a one-line
        ConfigError when ``xformers`` is asked for and cannot run."""
        from vdfast.models.video_dit import resolve_attention

        backend = resolve_attention(cfg.gvd.attention, device)
        if backend == cfg.gvd.attention:
            return cfg
        return dataclasses.replace(cfg, gvd=dataclasses.replace(cfg.gvd, attention=backend))

    def init(self, store, cfg, device, gen, progress: bool = True):
        """Runs (or loads) every stage; ``gen`` is unused: each stage draws from its own generator
        seeded by ``cfg.seed``, so cached and fresh stages agree."""
        from vdfast.synsets.generated import GeneratedSynset

        cfg = self.for_device(cfg, device)  # distill did this already; direct callers may not have
        g, seed = cfg.gvd, cfg.seed
        if store.frames % g.segments:
            raise ValueError(f"gvd segments={g.segments} must divide the clip's {store.frames} frames")
        device = torch.device(device)
        dist = self.process_group(device)
        progress = progress and dist.main  # one set of progress bars, the main process's
        work = StageCache(self.workdir(cfg))
        ids = self.stage_identities(store, cfg)

        # several processes: the autoencoder, the generator and the teacher train data-parallel
        # (every rank its share of each batch); the cheap stages (latents, modes) are computed by
        # rank 0 and cached before the others load them when they share a workdir, else by every
        # rank (deterministic: the same result; waiting for rank 0 would only serialise them)
        shared = dist.active and work.root is not None

        def main_first(run):
            if not shared:
                return run()
            with dist.main_process_first():
                return run()

        ae = train_autoencoder(store, g, seed, device, work.stage("ae", ids["ae"]), progress, dist)
        ae.requires_grad_(False)
        latents = main_first(lambda: encode_train(ae, store, work.stage("latents", ids["latents"])))
        model = train_generator(latents, g, seed, device, work.stage("gen", ids["gen"]), progress,
                                dist)
        modes = None
        if g.lam > 0:
            modes = main_first(lambda: discover_modes(latents, cfg.ipc * g.segments, g.kmeans_iters,
                                                      seed, work.stage("modes", ids["modes"])))
        teacher = None
        if g.soft_labels or g.select > 1:  # trained data-parallel by every process
            teacher = self.teacher(store, cfg, device, progress, dist)
        # sampling sharded by class: this rank's contiguous block of classes, its own chunk folder;
        # each instance's noise is seeded by (seed, label, slot), so the videos equal a 1-rank run's
        mine = dist.shard(store.num_classes)
        cache = work.stage("samples", ids["samples"])
        if dist.active and cache is not None:
            cache = cache / f"rank{dist.rank}of{dist.world}"
            cache.mkdir(exist_ok=True)
        score = None
        if g.select > 1:
            stats = train_stats(store) if cfg.eval.standardize else None

            def score(u8, labs):
                return class_probability(teacher, u8, [store.classes.index(lab) for lab in labs],
                                         store, g.segments, stats)
        videos, _, z = generate(model, ae, modes, [store.classes[c] for c in mine], cfg.ipc, g,
                                seed, device, cache, progress, score=score, labels=store.classes)
        labels = torch.arange(store.num_classes).repeat_interleave(cfg.ipc)
        if dist.active:  # every rank gets the whole set: zeros elsewhere, summed across ranks
            rows = slice(mine.start * cfg.ipc, mine.stop * cfg.ipc)
            full = torch.zeros((len(labels),) + tuple(videos.shape[1:]), dtype=torch.int32)
            full[rows] = videos.to(torch.int32)
            videos = dist.all_reduce_(full.to(dist.device)).cpu().to(torch.uint8)
            zf = torch.zeros((len(labels),) + tuple(z.shape[1:]), dtype=torch.float32)
            zf[rows] = z.float()
            z = dist.all_reduce_(zf.to(dist.device)).cpu().half()
        soft = None
        if teacher is not None and g.soft_labels:
            soft = soft_labels(teacher, videos, store.mean, store.std, g.temperature, g.segments,
                               cfg.eval.standardize)
        if g.store_as == "fp16":
            from vdfast.ops import normalize_clips

            videos = normalize_clips(videos, store.mean, store.std)
        stages = {k: v and identity_key(v) for k, v in ids.items()}
        recipe = None  # how to rebuild the teacher (evaluation.teacher_of) without the cache
        if teacher is not None:
            recipe = {k: ids["teacher"][k] for k in ("net", "epochs", "seed", "eval")}
        cached = (str(work.root / f"teacher-{stages['teacher']}")
                  if work.root and stages.get("teacher") else None)
        meta = {"method": self.name, "ipc": cfg.ipc, "dataset": store.name,
                "teacher": {"temperature": g.temperature, "select": g.select, "recipe": recipe,
                            "cache": cached, "weights": None},
                "gvd": {"workdir": str(work.root) if work.root else None, "segments": g.segments,
                        "attention": g.attention,  # the backend that ran (auto resolved)
                        "stages": stages}}
        if work.root is None:
            log.info("gvd: no workdir (--gvd-workdir): stages are neither cached nor resumable")
        return GeneratedSynset(videos.to(device), labels.to(device), store.classes, store.mean,
                               store.std, soft_labels=None if soft is None else soft.to(device),
                               latents=z.to(device) if g.keep_latents else None,
                               store_as=g.store_as, meta=meta)
