"""Synset: the distilled set, the currency between methods, evaluation, saving and other tools.

A synset knows its parametrisation (``kind``), produces its videos (differentiably while
distilling) in the normalised space the networks see, carries hard labels (and soft labels when a
method made them), and reports its storage. On disk a synset is a directory::

    synset.safetensors   every tensor (parameters, labels, soft labels)
    synset.json          kind, method, ipc, class names, frames, size, normalisation, storage, config,
                         vdfast version

so that a synset made on one machine loads and evaluates on another (``vdfast.load``). The
safetensors header's ``metadata`` repeats what a reader without vdfast needs (all strings, lists as
JSON): ``format`` (``vdfast.synset``), ``format_version``, ``kind``, ``vdfast``, ``classes``,
``mean``, ``std``, ``frames``, ``size``, ``num_videos``, ``soft_labels`` (``true``/``false``),
``method`` and ``ipc``; ``safetensors.safe_open(path, "pt").metadata()`` reads it.

Outside vdfast: :meth:`Synset.dataset` is a ``torch.utils.data.Dataset`` of the rendered videos and
their labels; :func:`vdfast.export` writes them as video files (a Hugging Face VideoFolder tree).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.utils.data

from vdfast.version import __version__

SYNSET_FORMAT = 1
KINDS: dict[str, type] = {}      # kind -> Synset subclass (for load)


def register(kind: str):
    def deco(cls):
        cls.kind = kind
        KINDS[kind] = cls
        return cls
    return deco


class Synset(nn.Module):
    kind = "base"

    def __init__(self, classes: Sequence[str], frames: int, size: int, mean, std,
                 labels: torch.Tensor, soft_labels: torch.Tensor | None = None,
                 meta: dict | None = None):
        super().__init__()
        self.classes = list(classes)
        self.frames, self.size = int(frames), int(size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.register_buffer("labels", labels.long().clone())
        self.register_buffer("soft_labels", None if soft_labels is None else soft_labels.float().clone())
        self.register_parameter("label_targets", None)  # learnable regression targets (FRePo)
        self.meta = dict(meta or {})

    # ---------------------------------------------------------------- what every kind provides
    def videos(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float videos ``[N, C, T, H, W]`` in normalised space, hard labels ``[N]``)."""
        raise NotImplementedError

    def param_groups(self, cfg) -> list[dict]:
        """Optimizer parameter groups (with their learning rates) that distillation updates."""
        raise NotImplementedError

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that make up the synset (what storage is counted on)."""
        return {k: v for k, v in self.state_dict().items()
                if k not in ("labels", "soft_labels", "label_targets")}

    # ---------------------------------------------------------------- shared
    def learn_labels(self, targets: torch.Tensor) -> nn.Parameter:
        """Attach learnable label targets ``[N, nc]`` (FRePo's regression labels, initialised to
        ``onehot - 1/nc``). They are an ``nn.Parameter`` saved with the synset as
        ``label_targets``; the hard ``labels`` stay as they are. Returns the parameter."""
        if targets.shape != (self.labels.numel(), self.num_classes):
            raise ValueError(f"label targets must be [{self.labels.numel()}, {self.num_classes}] "
                             f"(one row per video), got {tuple(targets.shape)}")
        self.label_targets = nn.Parameter(targets.detach().float().clone().to(self.labels.device))
        return self.label_targets

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ipc(self) -> int:
        return int(self.meta.get("ipc", len(self.labels) // max(1, self.num_classes)))

    def storage(self) -> dict:
        """Bytes of the synset against ``ipc`` full videos per class (uint8 and fp32 pixels);
        ``soft_label_bytes``: its soft labels (fp32 ``[N, classes]``), stored besides ``bytes``."""
        stored = sum(t.numel() * t.element_size() for t in self.stored_tensors().values())
        n_videos = self.ipc * self.num_classes
        pixels = n_videos * 3 * self.frames * self.size * self.size
        soft = 0 if self.soft_labels is None else self.soft_labels.numel() * self.soft_labels.element_size()
        return {"bytes": stored, "videos": n_videos, "video_bytes_uint8": pixels,
                "video_bytes_fp32": pixels * 4, "ratio_vs_fp32_videos": stored / (pixels * 4),
                "fp32_mib": stored / 2**20, "soft_label_bytes": soft}

    def fixed_videos(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`videos` in eval mode (a fixed set: a static-dynamic synset does not redraw its
        pairings), the module's training mode restored after."""
        was = self.training
        self.eval()
        try:
            return self.videos()
        finally:
            self.train(was)

    @torch.no_grad()
    def render(self, uint8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Every video rendered once, detached, on the CPU, with its hard label: float
        ``[N, C, T, H, W]`` in normalised space (:meth:`videos`), or with ``uint8`` the pixels
        ``round(255 * denormalize(x))`` as ``torch.uint8`` (what :func:`vdfast.preview` shows and
        :func:`vdfast.export` encodes)."""
        v, y = self.fixed_videos()
        v = v.detach().float().cpu()
        if uint8:
            v = (self.denormalize(v) * 255 + 0.5).floor_().to(torch.uint8)
        return v, y.detach().cpu().long()

    def dataset(self, uint8: bool = False, soft: bool | None = None) -> "SynsetDataset":
        """The synset as a ``torch.utils.data.Dataset`` of ``(video, target)`` for a plain
        training loop (``DataLoader(synset.dataset(), batch_size=..., shuffle=True)``).

        video: ``[C, T, H, W]`` float in the normalised space the networks see (the synset's
        ``mean``/``std``), or with ``uint8`` the ``torch.uint8`` pixels. target: the hard label (a
        long), or with ``soft`` the soft label vector ``[classes]`` (float); ``soft=None``: soft
        labels where the synset has them, else hard. The videos are rendered once, here (a
        parametrised synset, s2d or generated, is not re-rendered per item)."""
        if soft and self.soft_labels is None:
            raise SynsetError(f"this {self.kind} synset has no soft labels (made by "
                              f"{self.meta.get('method', 'its method')}); pass soft=False")
        use_soft = self.soft_labels is not None if soft is None else bool(soft)
        videos, labels = self.render(uint8)
        targets = self.soft_labels.detach().float().cpu() if use_soft else labels
        return SynsetDataset(videos, targets, labels, self.classes, self.mean, self.std)

    def safetensors_metadata(self) -> dict[str, str]:
        """The safetensors header's ``metadata`` (strings only): kind, classes, normalisation and
        the clip format, readable without vdfast (see the module docstring)."""
        return {"format": "vdfast.synset", "format_version": str(SYNSET_FORMAT), "kind": self.kind,
                "vdfast": __version__, "classes": json.dumps(self.classes),
                "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
                "frames": str(self.frames), "size": str(self.size),
                "num_videos": str(int(self.labels.numel())),
                "soft_labels": "true" if self.soft_labels is not None else "false",
                "method": str(self.meta.get("method", "")), "ipc": str(self.ipc)}

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[N, C, T, H, W]`` -> [0, 1] pixels."""
        m = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return (x * s + m).clamp(0, 1)

    def header(self) -> dict:
        return {"format": SYNSET_FORMAT, "kind": self.kind, "vdfast": __version__,
                "classes": self.classes, "frames": self.frames, "size": self.size,
                "normalization": {"mean": list(self.mean), "std": list(self.std)},
                "num_videos": int(self.labels.numel()), "soft_labels": self.soft_labels is not None,
                "storage": self.storage(), **self.meta}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the synset directory atomically (a half-written synset never replaces a good one)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(tmp / "synset.safetensors"), metadata=self.safetensors_metadata())
        (tmp / "synset.json").write_text(json.dumps(self.header(), indent=1, default=str))
        if path.exists():
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
        return path

    @classmethod
    def _from_header(cls, header: dict, tensors: dict[str, torch.Tensor]) -> "Synset":
        raise NotImplementedError


class SynsetError(ValueError):
    pass


class SynsetDataset(torch.utils.data.Dataset):
    """``(video, target)`` pairs of a rendered synset (:meth:`Synset.dataset`). Attributes:
    ``videos`` ``[N, C, T, H, W]``, ``targets`` (hard ``[N]`` or soft ``[N, classes]``), ``labels``
    (hard, always), ``classes``, ``mean``, ``std`` (to denormalise a float video)."""

    def __init__(self, videos: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                 classes: Sequence[str], mean, std):
        self.videos, self.targets, self.labels = videos, targets, labels
        self.classes, self.mean, self.std = list(classes), tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i):
        return self.videos[i], self.targets[i]


def load(path: str | os.PathLike, device="cpu") -> Synset:
    """Load a saved synset directory (or its ``synset.json``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        path = path.parent
    meta_file = path / "synset.json"
    if not meta_file.exists():
        raise SynsetError(f"{path} is not a synset directory (no synset.json); synsets are written "
                          f"by `vdfast distill --out DIR` into DIR/synset")
    header = json.loads(meta_file.read_text())
    kind = header.get("kind")
    if kind not in KINDS:
        raise SynsetError(f"{path}: synset kind {kind!r} is unknown to vdfast {__version__} "
                          f"(known: {', '.join(KINDS)}); upgrade vdfast")
    tensors = load_file(str(path / "synset.safetensors"), device=str(device))
    synset = KINDS[kind]._from_header(header, tensors)
    if "label_targets" in tensors and synset.label_targets is None:
        synset.learn_labels(tensors["label_targets"])
    return synset


def check_matches(synset: Synset, classes: Sequence[str], frames: int, size: int) -> None:
    """Clear error when a synset is evaluated against data of other classes or clip format."""
    if list(classes) != list(synset.classes):
        missing = [c for c in synset.classes if c not in classes]
        extra = [c for c in classes if c not in synset.classes]
        raise SynsetError(
            f"the synset's {len(synset.classes)} classes do not match the data's {len(classes)}"
            + (f"; not in the data: {', '.join(missing[:5])}" if missing else "")
            + (f"; not in the synset: {', '.join(extra[:5])}" if extra else "")
            + ("; same names in another order" if not missing and not extra else "")
            + ". Evaluate on the dataset the synset was distilled from.")
    if (frames, size) != (synset.frames, synset.size):
        raise SynsetError(f"the synset holds {synset.frames}x{synset.size}² videos but the data has "
                          f"{frames}x{size}² clips; prepare the data with --frames {synset.frames} "
                          f"--size {synset.size}")
