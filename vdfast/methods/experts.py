"""Expert trajectories for MTT: ConvNet3D trained on the real train split, parameters saved every epoch.

One expert is two files in the buffer directory::

    expert_0000.safetensors   one float32 tensor "trajectory" [epochs + 1, P]: row e is the flat
                              parameter vector after epoch e (row 0: the initialisation)
    expert_0000.json          net config, parameter layout, store identity and classes, input
                              normalisation, training settings, epochs_done, complete

Input normalisation: experts see exactly what distillation feeds the student, ``normalize_clips``
with the store's mean/std, and nothing else (no per-batch standardisation: the reference trained
its experts on batch-standardised inputs and then unrolled students on raw ones, so the matched
trajectories came from another input distribution). ``normalization.standardize`` is recorded as
``false`` in every sidecar so a buffer made otherwise is refused by :meth:`ExpertBuffer.check`.

Writing is streamed: the safetensors header for the full ``[epochs + 1, P]`` tensor is written
first, each row lands at its offset when its epoch ends, and the sidecar's ``epochs_done`` is updated
after the row is on disk. Each epoch's data order and dropout draws come from seeds of
``(seed, expert, epoch)``, so an interrupted expert resumes from its last finished epoch with the
same result as an uninterrupted run (exactly so with ``momentum == 0``, the published setting;
with momentum the optimizer state is not saved and the expert restarts from epoch 0).

Reading is lazy: :class:`ExpertBuffer` opens the file with ``safetensors.safe_open`` and reads only
the requested rows (``get_slice``), so a buffer of many 3.65 M-parameter experts costs two rows of
I/O per MTT iteration.

Example::

    paths = train_experts(store, "buffers/builtin", num_experts=4, epochs=10, batch=64,
                          net_cfg=NetConfig(width=32, depth=2))
    buf = ExpertBuffer("buffers/builtin")
    theta_s, theta_t = buf.pair(expert=3, start=2, target=3)      # [P], [P] float32
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vdfast.data.store import ClipStore
from vdfast.version import __version__

log = logging.getLogger(__name__)

EXPERT_FORMAT = 1
TENSOR = "trajectory"


class BufferError(ValueError):
    """An expert buffer that cannot serve the request (missing, other net, other data ...)."""


# ---------------------------------------------------------------------------------------------
# flat parameters
# ---------------------------------------------------------------------------------------------
def param_layout(net: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter, in the order of the flat vector."""
    return [(n, tuple(p.shape)) for n, p in net.named_parameters()]


def flatten_params(net: nn.Module) -> torch.Tensor:
    """The flat parameter vector ``[P]`` (detached copy) in :func:`param_layout` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def unflatten(flat: torch.Tensor, layout: Sequence[tuple[str, tuple[int, ...]]]) -> list[torch.Tensor]:
    """Views of ``flat`` ``[P]`` shaped like the layout's parameters (no copy)."""
    sizes = [_numel(s) for _, s in layout]
    return [t.view(s) for t, (_, s) in zip(flat.split(sizes), layout)]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _epoch_seed(seed: int, expert: int, epoch: int) -> int:
    # distinct, reproducible seeds per (run seed, expert, epoch); epoch -1 is the initialisation
    return (seed * 1_000_003 + expert * 10_007 + epoch + 1) % (2**63 - 1)


def net_header(store: ClipStore, net_cfg) -> dict:
    return {"arch": "convnet3d", "num_classes": store.num_classes, "frames": store.frames,
            "size": store.size, "width": net_cfg.width, "depth": net_cfg.depth, "norm": net_cfg.norm}


def store_header(store: ClipStore) -> dict:
    d = store.describe()
    return {"name": d["name"], "frames": d["frames"], "size": d["size"], "train": d["train"],
            "fingerprint": store.train_fingerprint()}


def normalization_header(store: ClipStore) -> dict:
    return {"mean": [float(m) for m in store.mean], "std": [float(s) for s in store.std],
            "standardize": False}


def build_net(net: dict) -> nn.Module:
    """The network a buffer's ``net`` header (:func:`net_header`) describes, on the CPU with its
    initialisation drawn from the global RNG."""
    from vdfast.config import NetConfig
    from vdfast.models import DataShape, build

    shape = DataShape(net["num_classes"], net["frames"], net["size"])
    return build(NetConfig(width=net["width"], depth=net["depth"], norm=net["norm"]), shape,
                 net.get("arch", "convnet3d"))


# ---------------------------------------------------------------------------------------------
# streamed safetensors file: header for [rows, P] float32, rows written as they come
# ---------------------------------------------------------------------------------------------
def _create_trajectory_file(path: Path, rows: int, p: int) -> None:
    nbytes = rows * p * 4
    header = {TENSOR: {"dtype": "F32", "shape": [rows, p], "data_offsets": [0, nbytes]},
              "__metadata__": {"format": f"vdfast-expert-{EXPERT_FORMAT}"}}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        f.truncate(8 + len(h) + nbytes)


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _write_row(path: Path, row: int, vec: torch.Tensor) -> None:
    data = vec.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    with open(path, "r+b") as f:
        f.seek(_data_start(path) + row * len(data))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, d: dict) -> None:
    from vdfast.engine.checkpoint import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(d, indent=1)))


def _row_sha(vec: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(vec.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def _read_rows(path: Path, rows: Sequence[int]) -> list[torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        sl = f.get_slice(TENSOR)
        # the slices are views of the memory-mapped file: copy, so a later write cannot alias them
        return [sl[r:r + 1][0].clone() for r in rows]


def _redo(path: Path) -> str:
    return (f"delete {path.with_suffix('.json').name} and {path.with_suffix('.safetensors').name} "
            f"in {path.parent}, then run again (`vdfast experts --out {path.parent}`, or the same "
            f"distill, retrains that expert)")


def read_sidecar(path) -> dict:
    """An expert's ``expert_XXXX.json``; a damaged one raises :class:`BufferError` naming it."""
    from vdfast.engine.checkpoint import read_json_object

    path = Path(path)
    try:
        return read_json_object(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise BufferError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          f"{_redo(path)}") from None


def _trajectory_bytes(path: Path) -> tuple[int, tuple[int, int]] | None:
    """(the size a trajectory file must have, its [rows, P]) from its own header; None when the
    header itself is unreadable."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 1 << 20:
                return None
            h = json.loads(f.read(n))
        rows, p = h[TENSOR]["shape"]
        return 8 + n + h[TENSOR]["data_offsets"][1], (int(rows), int(p))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def expert_paths(out_dir, i: int) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"expert_{i:04d}.safetensors", out_dir / f"expert_{i:04d}.json"


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train_experts(store: ClipStore, out_dir, num_experts: int = 30, epochs: int = 50,
                  lr: float = 0.01, batch: int = 256, momentum: float = 0.0,
                  weight_decay: float = 0.0, net_cfg=None, seed: int = 0, device="cpu",
                  progress: bool = True, shard: tuple[int, int] = (0, 1),
                  flag: str = "--out") -> list[Path]:
    """Train ``num_experts`` ConvNet3D on ``store``'s train split; save every epoch's parameters.

    Defaults are the published buffer settings (SGD lr 0.01, no momentum, 50 epochs, batch 256,
    30 experts). Inputs are ``normalize_clips(clips, store.mean, store.std)`` only; the net trains
    in train mode (dropout on). Expert ``i`` is initialised from seed ``(seed, i)``, so experts differ
    and each is reproducible on its own.

    ``shard = (rank, world)``: this process trains only experts ``i`` with ``i % world == rank``
    (experts are independent, so N processes train a buffer N times faster with no communication
    and write the same files as one process).

    Resumable: complete experts are skipped; an interrupted one continues after its last saved
    epoch (restarts when ``momentum > 0``). A directory holding experts made with other settings
    raises :class:`BufferError`. Before any training, the directory must be writable and hold
    the free space of the trajectories still to write (else :class:`DiskFullError`, naming
    ``flag``, the option that gave ``out_dir``).

    Args:
        store: the real data (uint8 clips; the whole train split is moved to ``device``).
        out_dir: buffer directory (created).
        net_cfg: a :class:`vdfast.config.NetConfig` (width, depth, norm); default the published net.
    Returns:
        The ``expert_XXXX.safetensors`` paths, ``num_experts`` of them, each ``[epochs + 1, P]``.
    """
    from vdfast.config import NetConfig

    if num_experts < 1 or epochs < 1 or batch < 1 or lr <= 0:
        raise ValueError(f"train_experts needs num_experts, epochs, batch >= 1 and lr > 0; got "
                         f"{num_experts}, {epochs}, {batch}, {lr}")
    from vdfast.engine import checkpoint

    net_cfg = net_cfg or NetConfig()
    device = torch.device(device)
    out_dir = Path(out_dir)
    checkpoint.preflight(out_dir, flag=flag)
    # one writer per buffer: rank 0 of N processes holds the lock for all of them
    with checkpoint.RunLock(out_dir, "experts") if shard[0] == 0 else contextlib.nullcontext():
        return _train_experts(store, out_dir, num_experts, epochs, lr, batch, momentum,
                              weight_decay, net_cfg, seed, device, progress, shard, flag)


def _train_experts(store, out_dir: Path, num_experts, epochs, lr, batch, momentum, weight_decay,
                   net_cfg, seed, device, progress, shard, flag="--out") -> list[Path]:
    from vdfast.progress import bar

    training = {"epochs": epochs, "lr": lr, "batch": batch, "momentum": momentum,
                "weight_decay": weight_decay, "seed": seed, "dropout": True}
    net_h = net_header(store, net_cfg)
    base = {"format": EXPERT_FORMAT, "kind": "expert_trajectory", "net": net_h,
            "store": store_header(store), "classes": list(store.classes),
            "normalization": normalization_header(store), "training": training}

    todo, paths = [], []
    for i in range(num_experts):
        tpath, jpath = expert_paths(out_dir, i)
        paths.append(tpath)
        old = {}
        if jpath.exists():
            try:
                old = read_sidecar(jpath)
            except BufferError as e:  # this directory's own expert: it is trained again
                log.warning(f"{str(e).split('; delete')[0]}; expert {i} is trained again")
                jpath.unlink(missing_ok=True)
                old = None
        if old is not None and jpath.exists():
            diff = _differences({k: old.get(k) for k in base if k != "format"},
                                {k: v for k, v in base.items() if k != "format"})
            if diff:
                raise BufferError(
                    f"{jpath} was trained with other settings ({diff}); pass another buffer "
                    f"directory (--mtt-buffer) or delete {out_dir} to retrain")
            if old.get("complete"):
                continue
        if i % shard[1] == shard[0]:
            todo.append(i)
    if not todo:
        return paths
    from vdfast.engine import checkpoint

    row = 4 * sum(p.numel() for p in build_net(net_h).parameters())
    have = sum(t.stat().st_blocks * 512 for t in (expert_paths(out_dir, i)[0] for i in todo)
               if t.exists())  # the rows on disk (a trajectory file is sparse until written)
    checkpoint.preflight(out_dir, len(todo) * (epochs + 1) * row - have, f"{len(todo)} expert(s)",
                         why=f"{epochs + 1} rows of {row / 2**20:.2f} MiB each", flag=flag)

    u8, labels = store.tensors("train", device)
    with bar(total=len(todo) * epochs, desc=f"experts {out_dir.name}", unit="ep",
             enable=progress) as pb:
        for i in todo:
            tpath, jpath = expert_paths(out_dir, i)
            net = build_net(net_h)
            layout = param_layout(net)
            p = sum(_numel(s) for _, s in layout)
            start = 0
            if jpath.exists() and tpath.exists() and momentum == 0:
                old = read_sidecar(jpath)
                start = int(old.get("epochs_done", 0)) if old.get("num_params") == p else 0
            if start > 0:
                want = old.get("rows_sha256", [])
                try:
                    rows = _read_rows(tpath, list(range(start + 1)))
                    ok = [_row_sha(r) for r in rows] == want[:start + 1]
                except Exception:  # truncated: safetensors cannot map it
                    ok = False
                if not ok:
                    log.warning(f"{tpath} does not match the row checksums in {jpath.name} (the "
                                f"file is damaged or truncated); expert {i} restarts from epoch 0")
                    start = 0
            if start > 0:
                last = rows[start]
                with torch.no_grad():
                    for q, v in zip(net.parameters(), unflatten(last, layout)):
                        q.copy_(v)
            else:
                from vdfast.methods.base import reinit_

                reinit_(net, torch.Generator().manual_seed(_epoch_seed(seed, i, -1)))
                _create_trajectory_file(tpath, epochs + 1, p)
                _write_row(tpath, 0, flatten_params(net))
                header = {**base, "vdfast": __version__, "expert": i, "params": layout,
                          "num_params": p, "epochs_done": 0, "complete": False,
                          "rows_sha256": [_row_sha(flatten_params(net))]}
                _write_json(jpath, header)
            header = read_sidecar(jpath)
            pb.update(start)
            net = net.to(device).train()
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                                  weight_decay=weight_decay)
            _expert_loop(net, opt, u8, labels, store, i, seed, batch, epochs, start, device,
                         tpath, jpath, header, pb, alone=shard[1] == 1)
    return paths


def _expert_loop(net, opt, u8, labels, store, i, seed, batch, epochs, start, device, tpath, jpath,
                 header, pb, alone: bool = True) -> None:
    """Expert ``i``'s epochs ``start .. epochs - 1`` (:class:`vdfast.engine.loop.Loop`, one step
    per epoch): after each, its parameters are written as the trajectory's next row and the sidecar
    records the epoch (the expert's checkpoint). ``alone`` (one process): a SIGINT / SIGTERM stops
    after the epoch's row; processes sharing a buffer train different experts and cannot agree on
    a step, so they finish theirs and the run stops at its next checkpoint."""
    from vdfast.engine.loop import Loop
    from vdfast.ops import normalize_clips

    n = u8.shape[0]
    last = {}

    def epoch(e):
        s = _epoch_seed(seed, i, e)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(s)).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(s)  # dropout draws, inside the fork: the caller's RNG is untouched
            for b in range(0, n, batch):
                idx = perm[b:b + batch]
                x = normalize_clips(u8[idx], store.mean, store.std)
                loss = F.cross_entropy(net(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return loss.detach()

    def save(done, pending):
        row = flatten_params(net)
        _write_row(tpath, done, row)
        header["rows_sha256"] = header["rows_sha256"][:done] + [_row_sha(row)]
        header.update(epochs_done=done, complete=done == epochs, final_train_loss=last["loss"])
        _write_json(jpath, header)

    def on_window(done, vals, dt):
        last["loss"] = vals[-1]

    # experts are split across processes without communication: each process runs its own loop
    Loop(total=epochs, start=start, unit="ep", bar=pb, window=1, every=1, save=save,
         on_window=on_window, postfix=lambda v: {"expert": i, "loss": f"{v:.3f}"},
         stop_on_signal=alone, what=f"expert {i} epoch").run(epoch)


def _differences(a: dict, b: dict) -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _differences(va, vb)
            if d:
                out.append(f"{k}: {d}")
        elif va != vb and not (isinstance(va, list) and isinstance(vb, (list, tuple))
                               and list(va) == list(vb)):
            short = (lambda v: f"{len(v)} items" if isinstance(v, (list, tuple)) and len(v) > 4 else repr(v))
            out.append(f"{k} {short(va)} vs {short(vb)}")
    return ", ".join(out)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class ExpertBuffer:
    """The complete experts of a buffer directory, read lazily.

    ``len(buffer)`` experts (``expert_*.json`` with ``complete: true``, in index order), each with
    ``buffer.epochs + 1`` saved parameter vectors of ``buffer.num_params`` floats.
    ``pair(expert, start, target)`` reads just those two rows.

    Damage is refused, naming the file: a sidecar that is not JSON, a trajectory file whose size
    is not its header's (truncated), and a row whose sha256 differs from the sidecar's
    ``rows_sha256`` (checked the first time this buffer reads the row: each row once per run,
    one hash of ``4 * P`` bytes).
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BufferError(f"expert buffer {self.path} does not exist; train one with "
                              f"vdfast.methods.experts.train_experts(store, '{self.path}', ...) or let "
                              f"`vdfast distill --method mtt` train it (leave --mtt-buffer empty)")
        self.headers: list[dict] = []
        self.files: list[Path] = []
        self._verified: set[tuple[int, int]] = set()
        for j in sorted(self.path.glob("expert_*.json")):
            h = read_sidecar(j)
            t = j.with_suffix(".safetensors")
            if h.get("complete") and t.exists():
                want = _trajectory_bytes(t)
                size = t.stat().st_size
                if want is None or want[0] != size or want[1][1] != h.get("num_params"):
                    raise BufferError(f"{t} is damaged (" + ("its header is unreadable" if want is None
                                      else f"{size} bytes, its header says {want[0]}" if want[0] != size
                                      else f"{want[1][1]} parameters, {j.name} says "
                                           f"{h.get('num_params')}") + f"); {_redo(t)}")
                self.headers.append(h)
                self.files.append(t)
        if not self.files:
            raise BufferError(f"{self.path} holds no complete expert; finish training it with "
                              f"train_experts(store, '{self.path}', ...) (it resumes)")
        first = self.headers[0]
        for h, f in zip(self.headers[1:], self.files[1:]):
            d = _differences({k: h[k] for k in ("net", "store", "classes", "normalization", "num_params")},
                             {k: first[k] for k in ("net", "store", "classes", "normalization",
                                                    "num_params")})
            if d:
                raise BufferError(f"{f} does not match {self.files[0]} ({d}); one buffer directory "
                                  f"must hold experts of one net and one dataset")
        self.net = dict(first["net"])
        self.layout = [(n, tuple(s)) for n, s in first["params"]]
        self.num_params = int(first["num_params"])
        self.epochs = min(int(h["epochs_done"]) for h in self.headers)
        self.classes = list(first["classes"])
        self.normalization = first["normalization"]
        self.training = first["training"]

    def __len__(self) -> int:
        return len(self.files)

    def check(self, store: ClipStore, net_cfg, need_epochs: int = 0) -> None:
        """Raise :class:`BufferError`, naming the fix, unless this buffer's experts were trained on
        ``store`` (classes, clip format, train split, normalisation) with ``net_cfg``'s ConvNet3D and
        saved at least ``need_epochs`` epochs."""
        problems = []
        want_net = net_header(store, net_cfg)
        d = _differences(self.net, want_net)
        if d:
            problems.append(f"net: {d} (buffer vs config)")
        if self.classes != list(store.classes):
            problems.append(f"classes: the buffer has {len(self.classes)} "
                            f"({', '.join(self.classes[:3])} ...), the data {store.num_classes} "
                            f"({', '.join(list(store.classes)[:3])} ...)")
        have, want = self.headers[0]["store"], store_header(store)
        d = _differences(have, want)
        if d:
            problems.append(f"data: {d} (re-prepared with other settings, or another store?)")
        d = _differences(self.normalization, normalization_header(store))
        if d:
            problems.append(f"input normalisation: {d}")
        if problems:
            raise BufferError(f"expert buffer {self.path} does not match this run: "
                              + "; ".join(problems) + ". Pass --mtt-buffer with a buffer trained on "
                              "this data and net, or an empty/new directory to train one there")
        if need_epochs > self.epochs:
            raise BufferError(f"expert buffer {self.path} saved {self.epochs} epochs but this run "
                              f"needs {need_epochs} (max_start_epoch + expert_epochs); lower "
                              f"--mtt-max-start-epoch / --mtt-expert-epochs or train longer experts")

    def pair(self, expert: int, start: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(parameters after epoch ``start``, after epoch ``target``) of ``expert``: two float32
        ``[P]`` CPU tensors, read from disk without touching the other epochs."""
        if not 0 <= expert < len(self.files):
            raise IndexError(f"expert {expert} out of range: the buffer has {len(self.files)}")
        for e in (start, target):
            if not 0 <= e <= self.epochs:
                raise IndexError(f"epoch {e} out of range 0..{self.epochs}")
        f = self.files[expert]
        try:
            a, b = _read_rows(f, [start, target])
        except Exception as e:  # changed on disk since it was opened
            raise BufferError(f"{f} is damaged ({type(e).__name__}: {e}); {_redo(f)}") from e
        for e, row in ((start, a), (target, b)):
            self._verify(expert, e, row)
        return a, b

    def _verify(self, expert: int, epoch: int, row: torch.Tensor) -> None:
        """``row`` (epoch ``epoch`` of ``expert``) against its sidecar's sha256, the first time."""
        if (expert, epoch) in self._verified:
            return
        sums = self.headers[expert].get("rows_sha256", [])
        if epoch >= len(sums) or _row_sha(row) != sums[epoch]:
            f = self.files[expert]
            raise BufferError(f"{f}: the parameters of epoch {epoch} do not match their sha256 in "
                              f"{f.with_suffix('.json').name} (the file is damaged); {_redo(f)}")
        self._verified.add((expert, epoch))

    def trajectory(self, expert: int) -> torch.Tensor:
        """All saved epochs of one expert ``[epochs + 1, P]`` (reads the whole file)."""
        from safetensors import safe_open

        with safe_open(str(self.files[expert]), framework="pt") as f:
            t = f.get_tensor(TENSOR).clone()  # a copy, not a view of the mapped file
        for e in range(t.shape[0]):
            self._verify(expert, e, t[e])
        return t


__all__ = ["train_experts", "ExpertBuffer", "BufferError", "param_layout", "flatten_params",
           "unflatten"]
