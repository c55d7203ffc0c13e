"""Teacher-guided real-clip composition (``compose``): one pass over the data, no bilevel optimisation.

The image field's finding (RDED, and soft-label work after SRe2L) carried to video, with GVD's
multi-video instance composition:

1. **teacher**  a ConvNet3D (``--net``) trained on the store's train split with the evaluation's
   optimiser, cached under the workdir and keyed by its settings like GVD's teacher
   (:func:`~vdfast.engine.train.train_teacher`), or a user's own weights (``--compose-teacher``).
2. **scores**   each train video's candidate segments: ``segments`` = S pieces of L = T / S frames,
   starting every ``stride`` frames (0: L / 2), each stretched back to T frames by repeating
   frames (what the teacher was trained on) and scored by the teacher: the log-probability of the
   video's class, or the margin of its logit over the best other class. Streamed class by class,
   ``chunk`` videos at a time (memory does not grow with the class); each class's scores are
   cached in one file, so a killed run resumes where it stopped and gives the same result.
3. **compose**  per class, each video's best segment; ipc x S videos with the best such segments,
   all different (no video is used twice in a class): the best ones (``select="top"``), or, for
   a set that covers the class rather than its most typical corner, ``herding`` / ``kcenter``
   among the ``pool`` x ipc x S best, on the teacher's pooled features (``features="teacher"``)
   or on a random network's flattened ones (``"random"``: the herding baseline's embedding).
   Instance j's slot s (frames s*L .. (s+1)*L) takes the chosen video ranked s * ipc + j, so every instance gets one
   of the ipc best, one of the next ipc, and so on. ``tiles`` G > 1 also tiles space: each slot
   is a G x G grid of G² more videos' segments, each downscaled by G (ipc x S x G² videos).
4. **labels**   hard labels, and soft labels (``soft_labels``): softmax(teacher / tau) of each of
   the instance's segments, averaged (:func:`~vdfast.engine.train.soft_labels` with S segments).

The synset is a :class:`~vdfast.synsets.GeneratedSynset` of uint8 pixels (``store_as="uint8"``)
with the soft labels; ``meta["teacher"]`` records the teacher (:class:`~vdfast.engine.train.
TeacherRecord`), so the evaluation puts random real clips with the same teacher's soft labels
beside it, and ``meta["compose"]["picked"]`` says which video and frames fill each slot.

On N processes the teacher trains data-parallel and the classes are split in contiguous blocks
(``dist.shard``); every process ends with the whole set.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vdfast.engine import checkpoint
from vdfast.engine.checkpoint import StageCache, data_identity, identity_key
from vdfast.engine.train import load_teacher, soft_labels, train_stats, train_teacher
from vdfast.methods.base import Method
from vdfast.methods.coreset import embedding_net, herding, kcenter
from vdfast.ops import normalize_clips
from vdfast.progress import bar

log = logging.getLogger("vdfast")

__all__ = ["Compose", "segment_starts", "score_segments", "embed_segments", "compose_class",
           "check_budget", "place"]


def segment_starts(frames: int, segments: int, stride: int = 0) -> list[int]:
    """The first frames of a clip's candidate segments of ``frames // segments`` frames, every
    ``stride`` frames (0: half a segment, at least 1), the last one ending at the clip's end."""
    length = frames // segments
    step = stride or max(1, length // 2)
    starts = list(range(0, frames - length + 1, step))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    return starts


def check_budget(store, ipc: int, segments: int, frames: int, tiles: int = 1) -> None:
    """A one-line ValueError, before any work, when a class has too few train videos for ipc x
    segments x tiles² different ones, or the segments do not divide the clip, or the tiles its
    side."""
    if frames % segments:
        raise ValueError(f"compose segments={segments} must divide the clip's {frames} frames "
                         f"(e.g. --compose-segments {next(d for d in (2, 1) if frames % d == 0)})")
    if store.size % tiles:
        raise ValueError(f"compose tiles={tiles} must divide the clip's side of {store.size} pixels "
                         f"(e.g. --compose-tiles 1)")
    need = ipc * segments * tiles * tiles
    short = [(c, n) for c, n in zip(store.classes, store.counts("train")) if n < need]
    if short:
        c, n = min(short, key=lambda t: t[1])
        what = f"ipc {ipc} x segments {segments}" + (f" x tiles {tiles}x{tiles}" if tiles > 1 else "")
        raise ValueError(f"compose: {what} needs {need} different train videos per class, but "
                         f"{len(short)} class(es) have fewer ({c!r}: {n}); lower --ipc, "
                         f"--compose-segments" + (" or --compose-tiles" if tiles > 1 else ""))


def place(video: torch.Tensor, piece: np.ndarray, segment: int, tile: int, tiles: int) -> None:
    """Write the uint8 frames ``piece`` ``[L, H, W, 3]`` into slot (``segment``, ``tile``) of the
    uint8 instance ``video`` ``[T, H, W, 3]``: frames ``segment * L`` on; with ``tiles`` > 1,
    downscaled by ``tiles`` (area mean, rounded) into grid cell ``tile`` (row-major)."""
    x = torch.from_numpy(np.array(piece))                  # a copy: the store is read-only
    L, H = x.shape[0], video.shape[1]
    if tiles > 1:
        x = F.avg_pool2d(x.permute(0, 3, 1, 2).float(), tiles).round().to(torch.uint8).permute(0, 2, 3, 1)
    h = H // tiles
    r, col = divmod(tile, tiles)
    video[segment * L:(segment + 1) * L, r * h:(r + 1) * h, col * h:(col + 1) * h] = x


def _stretched_segments(x: torch.Tensor, segments: int, starts: list[int]) -> torch.Tensor:
    """``[n * len(starts), C, T, H, W]``: each clip's ``T // segments`` frames from each start,
    stretched back to T frames by repeating each frame ``segments`` times."""
    length = x.shape[2] // segments
    segs = torch.stack([x[:, :, p:p + length] for p in starts], 1).flatten(0, 1)
    return segs.repeat_interleave(segments, dim=2) if segments > 1 else segs


@torch.no_grad()
def embed_segments(net, u8: torch.Tensor, segments: int, starts: list[int], mean, std
                   ) -> torch.Tensor:
    """``[n, len(starts), D]``: ``net.embed`` (the flattened last-block features, what the
    herding baseline uses) of each stretched segment of the uint8 clips ``u8``."""
    dev = next(net.parameters()).device
    x = normalize_clips(u8.to(dev), mean, std)
    return net.embed(_stretched_segments(x, segments, starts)).float().view(
        u8.shape[0], len(starts), -1).cpu()


@torch.no_grad()
def score_segments(teacher, u8: torch.Tensor, label: int, segments: int, starts: list[int],
                   mean, std, stats: tuple[float, float], how: str = "logprob"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's score of each segment (``frames // segments`` frames from each start,
    stretched to the clip's length by repeating each frame ``segments`` times) of the uint8 clips
    ``u8`` ``[n, T, H, W, 3]`` of class ``label``, standardised by the fixed scalars ``stats``, and
    the teacher's pooled features of each, from the same forward: ``[n, len(starts)]`` and
    ``[n, len(starts), D]``. ``how``: ``logprob`` (log-probability of ``label``) or ``margin`` (its
    logit minus the largest other logit)."""
    dev = next(teacher.parameters()).device
    x = (normalize_clips(u8.to(dev), mean, std) - stats[0]) / stats[1]    # [n, C, T, H, W]
    logits, feats = teacher.logits_and_features(_stretched_segments(x, segments, starts))
    logits = logits.float()
    if how == "logprob":
        s = F.log_softmax(logits, 1)[:, label]
    else:
        own = logits[:, label]
        s = own - logits.clone().index_fill_(1, torch.tensor([label], device=dev), float("-inf")).amax(1)
    n = u8.shape[0]
    return s.view(n, len(starts)).cpu(), feats.float().view(n, len(starts), -1).cpu()


def compose_class(scores: torch.Tensor, ipc: int, segments: int, feats: torch.Tensor | None = None,
                  select: str = "top", pool: float = 1.0) -> torch.Tensor:
    """``[ipc, segments, 2]`` (video index, start index) of each slot, from every video's best
    segment. ``select="top"``: the ``ipc * segments`` best videos. ``herding`` / ``kcenter``: the
    same number chosen by herding (towards the mean of every video's best-segment features
    ``feats`` ``[videos, starts, D]``) or greedy k-center among the ``pool * ipc * segments``
    best videos, so that the set covers the class rather than its most typical corner. The chosen
    videos, ranked by score, fill slot s of instance j with rank ``s * ipc + j``, so every instance
    gets one of the ipc best, one of the next ipc, and so on. Ties broken by video order (stable)."""
    best, pos = scores.max(1)
    order = torch.sort(best, descending=True, stable=True).indices
    need = ipc * segments
    if select == "top":
        chosen = order[:need]
    else:
        if feats is None:
            raise ValueError(f"compose select={select!r} needs the teacher's features")
        f = feats[torch.arange(len(pos)), pos]                  # [videos, D] of the best segments
        cand = order[:min(len(order), max(need, math.ceil(pool * need)))]
        pick = {"herding": herding, "kcenter": kcenter}[select](f[cand], need, f.mean(0))
        chosen = cand[sorted(pick)]                              # back in score order
    vid = chosen.view(segments, ipc).t()                        # [ipc, segments]
    return torch.stack([vid, pos[vid]], -1)


class Compose(Method):
    """compose (non-iterative): the module docstring. ``run_dir`` places the cache at
    ``run_dir/compose`` when ``compose.workdir`` is empty."""

    iterative = False
    shardable = True   # classes split across processes; the teacher trains data-parallel

    def workdir(self, cfg) -> Path | None:
        return self.stage_root(cfg.compose.workdir)

    @staticmethod
    def identities(store, cfg) -> dict[str, dict]:
        """What the teacher's and the scores' cache folders are keyed by."""
        c = cfg.compose
        if c.teacher:
            teacher = {"weights": str(Path(c.teacher).resolve()),
                       "sha256": checkpoint.sha256_file(c.teacher), "net": dataclasses.asdict(cfg.net)}
        else:
            teacher = {"data": data_identity(store), "classes": store.classes, "seed": cfg.seed,
                       "net": dataclasses.asdict(cfg.net), "epochs": c.teacher_epochs,
                       "eval": {k: getattr(cfg.eval, k) for k in (
                           "lr", "momentum", "weight_decay", "batch", "standardize")}}
        scores = {"teacher": identity_key(teacher), "data": data_identity(store),
                  "segments": c.segments, "stride": c.stride, "score": c.score, "features": "pooled"}
        return {"teacher": teacher, "scores": scores}

    def teacher(self, store, cfg, device, progress: bool = True, dist=None):
        """The run's teacher: the user's weights, else trained (or loaded from the cache)."""
        c = cfg.compose
        if c.teacher:
            return load_teacher(c.teacher, cfg.net, store, device)
        work = StageCache(self.workdir(cfg))
        return train_teacher(store, cfg.net, cfg.eval, c.teacher_epochs, cfg.seed, device,
                             work.stage("teacher", self.identities(store, cfg)["teacher"]),
                             progress, dist)

    def init(self, store, cfg, device, gen, progress: bool = True):
        """Teacher, scores, composition and labels (``gen`` is unused: nothing here is random
        but the teacher, seeded by ``cfg.seed``)."""
        from vdfast.synsets.generated import GeneratedSynset

        c, ipc, T = cfg.compose, cfg.ipc, store.frames
        check_budget(store, ipc, c.segments, T, c.tiles)
        device = torch.device(device)
        dist = self.process_group(device)
        progress = progress and dist.main
        ids = self.identities(store, cfg)
        work = self.workdir(cfg)
        teacher = self.teacher(store, cfg, device, progress, dist)
        stats = train_stats(store)
        starts = segment_starts(T, c.segments, c.stride)
        L = T // c.segments
        cache = StageCache(work).stage("scores", ids["scores"])
        embedder = None  # features="random": the herding baseline's network, drawn from the seed
        if c.select != "top" and c.features == "random":
            embedder = embedding_net(cfg, store, device)

        mine = dist.shard(store.num_classes) if dist.active else range(store.num_classes)
        shape = (T, store.size, store.size, 3)
        videos = torch.zeros((store.num_classes * ipc,) + shape, dtype=torch.uint8)
        G2 = c.tiles * c.tiles
        picked = torch.zeros((store.num_classes, ipc, c.segments * G2, 2), dtype=torch.int64)
        with bar(total=len(mine), desc="compose: scoring classes", unit="class", enable=progress) as pb:
            for k in mine:
                scores, feats = self._class_scores(teacher, store, k, c, starts, stats, cache)
                clips = store.clips("train", k)
                if embedder is not None:
                    feats = torch.cat([embed_segments(
                        embedder, torch.from_numpy(np.array(clips[s:s + c.chunk])), c.segments,
                        starts, store.mean, store.std) for s in range(0, clips.shape[0], c.chunk)])
                slots = compose_class(scores, ipc, c.segments * G2, feats, c.select, c.pool)
                for j in range(ipc):
                    for q in range(c.segments * G2):                # slot q: segment q // G², tile q % G²
                        v, p = int(slots[j, q, 0]), starts[int(slots[j, q, 1])]
                        place(videos[k * ipc + j], clips[v, p:p + L], q // G2, q % G2, c.tiles)
                picked[k] = torch.stack([slots[..., 0], torch.tensor(starts)[slots[..., 1]]], -1)
                pb.update(1)
                sig = checkpoint.interrupt_requested()
                if sig and not dist.active:  # the finished classes' scores are cached: resume
                    raise checkpoint.Interrupted(k + 1, sig, saved=cache is not None,
                                                 what="compose class")
        if dist.active:  # every rank gets the whole set: zeros elsewhere, summed across ranks
            videos = dist.all_reduce_(videos.to(dist.device)).cpu()
            picked = dist.all_reduce_(picked.to(dist.device)).cpu()
        labels = torch.arange(store.num_classes).repeat_interleave(ipc)
        soft = None
        if c.soft_labels:
            soft = soft_labels(teacher, videos, store.mean, store.std, c.temperature, c.segments,
                               cfg.eval.standardize)
        if c.teacher:  # the user's file, and the network its weights fit
            recipe, cached, weights = {"net": ids["teacher"]["net"]}, None, ids["teacher"]["weights"]
        else:  # how to train it again (evaluation.teacher_of), and where it is cached
            recipe = {k: ids["teacher"][k] for k in ("net", "epochs", "seed", "eval")}
            cached = None if work is None else str(work / f"teacher-{identity_key(ids['teacher'])}")
            weights = None
        record = {"temperature": c.temperature if c.soft_labels else None, "select": 1,
                  "recipe": recipe, "cache": cached, "weights": weights}
        meta = {"method": self.name, "ipc": ipc, "dataset": store.name, "teacher": record,
                "compose": {"segments": c.segments, "segment_frames": L, "tiles": c.tiles,
                            "score": c.score,
                            "select": c.select, "pool": c.pool if c.select != "top" else None,
                            "features": c.features if c.select != "top" else None,
                            "picked": {store.classes[k]: picked[k].tolist()
                                       for k in range(store.num_classes)}}}
        if work is None:
            log.info("compose: no workdir (--compose-workdir / --out): the teacher and the scores "
                     "are neither cached nor resumable")
        return GeneratedSynset(videos.to(device), labels.to(device), store.classes, store.mean,
                               store.std, soft_labels=None if soft is None else soft.to(device),
                               store_as="uint8", meta=meta)

    @staticmethod
    def _class_scores(teacher, store, k: int, c, starts, stats, cache: Path | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class ``k``'s ``[videos, starts]`` scores and ``[videos, starts, D]`` features: read from
        ``cache`` when both files are whole, else computed ``c.chunk`` videos at a time and written
        atomically (the features first: a scores file means its class is done)."""
        f = None if cache is None else cache / f"class{k:06d}.npy"
        g = None if cache is None else cache / f"feat{k:06d}.npy"
        n = store.counts("train")[k]
        if f is not None and f.exists():
            try:
                a, b = np.load(f), np.load(g)
                if a.shape == (n, len(starts)) and b.shape[:2] == a.shape:
                    return torch.from_numpy(a), torch.from_numpy(b)
            except (OSError, ValueError) as e:
                log.warning("compose: cached scores %s unreadable (%s); scored again", f, e)
        clips = store.clips("train", k)
        out = [score_segments(teacher, torch.from_numpy(np.array(clips[s:s + c.chunk])),
                              k, c.segments, starts, store.mean, store.std, stats, c.score)
               for s in range(0, clips.shape[0], c.chunk)]
        scores, feats = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
        if f is not None:
            checkpoint.atomic_save_npy(g, feats.numpy())
            checkpoint.atomic_save_npy(f, scores.numpy())
        return scores, feats
