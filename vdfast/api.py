"""The public API: ``distill``, ``evaluate``, ``prepare``, ``load``, ``open_data``.

``vdfast.distill`` is the entry point other tools call. It resolves the configuration, checks the
request against the data BEFORE any long work, runs the method's steps with a progress bar,
checkpoints the synset (a killed run resumes from its last checkpoint) and returns a :class:`Result`
with the synset and the history (loss, seconds per iteration, peak memory).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vdfast import profiling
from vdfast.config import ConfigError, DistillConfig, EvalConfig, from_dict, resolve
from vdfast.data.store import ClipStore, StoreError
from vdfast.engine import checkpoint, loop
from vdfast.progress import quiet
from vdfast.synsets import Synset, load
from vdfast.version import __version__

BUILTIN = "builtin"
log = logging.getLogger("vdfast.distill")


def open_data(data=None) -> ClipStore:
    """A ClipStore from ``None``/``"builtin"`` (the embedded dataset), a prepared store directory,
    or a ClipStore (returned as is)."""
    if isinstance(data, ClipStore):
        return data
    if data is None or data == BUILTIN:
        return ClipStore.builtin()
    path = Path(data)
    if not path.exists():
        raise StoreError(f"data path {path} does not exist; pass a store made by `vdfast prepare`, "
                         f"or `builtin` for the embedded dataset")
    if (path / "store.json").exists():
        return ClipStore.open(path)
    raise StoreError(f"{path} is not a prepared store (no store.json). Decode it once with "
                     f"`vdfast prepare {path} --out STORE` (it detects the dataset layout), then pass "
                     f"--data STORE")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA device is visible; use --device cpu")
    return torch.device(device)


def memory_now_mb(device: torch.device) -> float:
    """Memory held now: CUDA allocator (GPU) or the process's resident set (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: the high-water mark instead
        return peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory (CUDA allocator) or peak resident memory of the process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Result:
    synset: Synset
    config: DistillConfig
    history: dict = field(default_factory=dict)
    out: Path | None = None
    store: ClipStore | None = None
    rank: int = 0


def _identity(cfg: DistillConfig, store: ClipStore) -> dict:
    """What must match for a checkpoint to be resumed."""
    d = cfg.to_dict()
    d.pop("iterations")
    d.pop("checkpoint_every")
    d.pop("eval")
    d.pop("device")
    d.pop("profile")
    # GVD's attention backend changes float rounding only (like the stage caches, not keyed by it):
    # a run resumes on a machine with or without xformers, and checkpoints from before the choice
    d["gvd"].pop("attention", None)
    if not cfg.dm_bank_heldout:  # a measurement, off: checkpoints from before it existed resume
        d.pop("dm_bank_heldout")
        d.pop("dm_bank_heldout_every")
    return {"config": d, "data": store.describe(), "train": store.train_fingerprint()}


def distill(data=None, method: str = "dm", ipc: int = 1, iterations: int | None = None,
            out: str | os.PathLike | None = None, resume: bool = True, preset: str = "auto",
            progress: bool = True, callback: Callable[[dict], None] | None = None,
            **options) -> Result:
    """Distill ``data`` into ``ipc`` synthetic videos per class.

    Args:
        data: ``None`` or ``"builtin"`` (embedded dataset), a store directory, or a ClipStore.
        method: a name of :func:`vdfast.methods.names` (``dm``, ``mtt``, ``dc``, ``frepo``, ``gvd``,
            ``s2d-dm`` ..., ``static``, and the coresets ``random``, ``herding``, ``kcenter``).
        ipc: videos per class.
        iterations: optimisation steps (default from the preset).
        out: directory for ``synset/``, ``checkpoint/``, ``config.json``, ``metrics.json``; with
            ``resume`` a run continues from ``out/checkpoint``.
        preset: ``auto`` (``builtin`` for the embedded data, else ``published``) or a name in
            :data:`vdfast.config.PRESETS`.
        callback: called on the main process after every 10 iterations (the loop's one host
            sync) and after the last, with a dict: ``iteration`` (done so far), ``iterations``,
            ``loss`` (the window's losses), ``seconds_per_it`` (the window's mean) and ``synset``.
            For logging to a tracker; the same record goes to the ``vdfast.distill`` logger at
            DEBUG level.
        **options: any DistillConfig field (``lr_img=...``, ``seed=...``, ``device=...``), dotted
            nested fields (``**{"net.width": 32}``) or ``net=``/``eval=`` dicts.

    Returns:
        :class:`Result` with ``.synset`` and ``.history`` (``loss``, ``seconds_per_it``,
        ``peak_memory_mb``, ``iterations``).

    Raises:
        :class:`vdfast.config.ConfigError` (a bad option, named), ``StoreError``,
        :class:`vdfast.engine.checkpoint.CheckpointError` (a checkpoint in ``out`` that cannot be
        resumed), ``RunLockedError`` (another run holds ``out``), ``DiskFullError``,
        ``OutDirError``; and :class:`vdfast.engine.checkpoint.Interrupted` (a
        ``KeyboardInterrupt``) after SIGINT / SIGTERM, once the checkpoint of the iteration it
        stopped at is written.

    Example::

        res = vdfast.distill(method="dm", ipc=1, iterations=100)
        videos, labels = res.synset.videos()     # [12, 3, 8, 32, 32]
    """
    from vdfast import methods

    store = open_data(data)
    if preset == "auto":
        preset = "builtin" if store.name == BUILTIN else "published"
    cfg = resolve(preset, method=method, ipc=ipc, iterations=iterations, **options)
    store.check_request(ipc=cfg.ipc)
    from vdfast.methods.dm_bank import check_request as check_bank

    check_bank(cfg, store)  # --dm-bank-clips against the smallest class, before any work
    from vdfast import distributed

    dist = distributed.setup(pick_device(cfg.device))
    device = dist.device
    m = methods.get(cfg.method)
    m.dist = dist
    cfg = m.for_device(cfg, device)  # e.g. gvd.attention auto -> the backend; before --out exists
    if dist.active and m.iterative and not m.shardable:
        raise ConfigError(f"method {cfg.method} does not run on {dist.world} processes yet; "
                           f"launch it as a single process")
    if dist.active and m.iterative and m.class_sharded and dist.world > store.num_classes:
        raise ConfigError(f"{cfg.method} splits the classes across processes: {dist.world} "
                          f"processes for {store.num_classes} classes would leave "
                          f"{dist.world - store.num_classes} without work; launch at most "
                          f"{store.num_classes} (--nproc_per_node / --num_processes)")
    out = Path(out) if out is not None else None
    created = out is not None and dist.main and not out.exists()
    if out is not None and dist.main:
        checkpoint.preflight(out)  # --out created and writable before any long work
    lock = checkpoint.RunLock(out, "distill") if out is not None and dist.main else contextlib.nullcontext()
    try:
        with lock, checkpoint.handle_signals(), quiet(not progress):
            return _distill(store, cfg, m, dist, out, preset, resume, progress, callback)
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {checkpoint.LOCK}:
            shutil.rmtree(out, ignore_errors=True)  # refused before writing anything: leave nothing
        raise


def _distill(store, cfg, m, dist, out, preset, resume, progress, callback) -> Result:
    """:func:`distill` after the checks, holding the run's lock on ``out``: resume, the method's
    ``init``, its steps in the loop, the result saved."""
    device = dist.device
    ident = _identity(cfg, store)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    ck = checkpoint.Checkpointer(out / "checkpoint", kind="distill") if out else None
    saved, synset = _resume(ck, dist, ident, resume, out, cfg, gen) if ck is not None else (None, None)
    start = saved["iteration"] if saved is not None else 0
    history = saved["history"] if saved is not None else {
        "loss": [], "seconds_per_it": [], "at_iteration": [], "peak_memory_mb": 0.0}
    profiling.check_request(cfg.profile, cfg.iterations - start, cfg.method, m.iterative, out)
    if synset is None:
        m.run_dir = out  # methods with cached stages (GVD) keep them under the run directory
        synset = m.init(store, cfg, device, gen)
    synset.meta.update(method=cfg.method, ipc=cfg.ipc, config=cfg.to_dict(), dataset=store.name)
    last_saved = start if saved is not None else None
    if m.iterative and start < cfg.iterations:
        last_saved = _steps(store, cfg, m, dist, out, ck, ident, synset, gen, saved, start, history,
                            progress, callback)
    history["iterations"] = cfg.iterations if m.iterative else 0
    history["iterative"] = m.iterative
    history["processes"] = dist.world
    result = Result(synset, cfg, history, out, store)
    if out is not None and dist.main:
        _save_result(out, ck, synset, m, gen, history, ident, cfg, preset, store, last_saved)
    dist.barrier()
    result.rank = dist.rank
    sig = checkpoint.interrupt_requested()
    if sig:  # a signal during the last iteration or after it: the run is complete and saved
        raise checkpoint.Interrupted(history["iterations"], sig, saved=out is not None)
    return result


def _resume(ck, dist, ident, resume, out, cfg, gen):
    """(the saved state, the synset) of ``out``'s checkpoint when the run resumes from it, else
    (None, None); ``--no-resume`` clears it. ``gen`` continues from the saved generator."""
    exists = ck.exists()
    dist.barrier()  # every process looked before any writes (rank 0 may save before rank 1 looks)
    if not exists:
        return None, None
    if not resume:
        if dist.main:
            ck.clear()
        dist.barrier()
        return None, None
    found = _find_checkpoint(ck, dist)
    if found is None:
        return None, None
    want = json.loads(json.dumps(ident, default=str))  # as the manifest holds it
    if found.identity != want:
        raise checkpoint.CheckpointError(
            f"{out} holds a run with other settings or other data; pass another --out, "
            f"or --no-resume to start over (differences: {_diff(found.identity, want)})")
    saved = _read_state(found.path / "state.pt")
    synset = _read_synset(found.path / "synset", dist.device)
    saved["iteration"] = found.iteration
    gen.set_state(saved["gen"])
    log.info(f"resuming {cfg.method} from iteration {found.iteration} ({found.path})")
    return saved, synset


def _steps(store, cfg, m, dist, out, ck, ident, synset, gen, saved, start, history, progress,
           callback) -> int | None:
    """The method's steps ``start .. cfg.iterations - 1`` in the loop
    (:class:`vdfast.engine.loop.Loop`): history, callback and logger every window, checkpoints
    every ``cfg.checkpoint_every`` iterations, at the end and on a signal, the profiler. Returns
    the iteration of the last checkpoint (None: none)."""
    device = dist.device
    state = m.setup(synset, store, cfg, device)
    if start > 0:
        m.load_state_dict(state, saved["method"])
    history.update(m.report(state))  # e.g. DM's network bank: size, build time, cache use
    if ck is not None and dist.main:  # room for a checkpoint beside the last and the result
        size = _nbytes(synset.state_dict()) + _nbytes(m.state_dict(state)) + (1 << 16)
        checkpoint.preflight(out, 2 * size + _nbytes(synset.state_dict()) - ck.nbytes(),
                             f"{cfg.method} ipc {cfg.ipc}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history["memory_before_loop_mb"] = memory_now_mb(device)  # the loop's own share: peak - this
    pending = []
    if saved is not None:  # the window the checkpoint fell into: its losses so far
        own = dist.main or not m.partial_loss  # partial losses: summed once, from rank 0's copy
        pending = [torch.tensor(v if own else 0.0, device=device) for v in saved.get("pending", [])]

    def on_window(done, vals, dt):
        history["loss"] += vals
        history["seconds_per_it"].append(dt)
        history["at_iteration"].append(done)
        log.debug("%s iteration %d/%d: loss %.6g, %.1f ms/it", cfg.method, done,
                  cfg.iterations, vals[-1], 1e3 * dt)
        if callback is not None and dist.main:
            callback({"iteration": done, "iterations": cfg.iterations, "loss": vals,
                      "seconds_per_it": dt, "synset": synset})

    def save(done, pending):
        history["peak_memory_mb"] = max(history.get("peak_memory_mb") or 0.0,
                                        peak_memory_mb(device))
        history.update(m.report(state))  # e.g. DM's held-out-network curve so far
        if dist.main:  # every process holds the same synset
            _checkpoint(ck, synset, m, state, gen, done, history, ident, pending)

    prof = profiling.LoopProfiler(cfg.profile, start, out, device, dist.rank, dist.world,
                                  title=f"{cfg.method} ipc {cfg.ipc} on {store.name}")
    run = loop.Loop(total=cfg.iterations, start=start, desc=f"{cfg.method} ipc{cfg.ipc}",
                    progress=progress, dist=dist, partial=m.partial_loss, pending=pending,
                    on_window=on_window, profiler=prof, every=cfg.checkpoint_every,
                    save=save if ck is not None else None,
                    last_saved=start if saved is not None else None,
                    on_nan=lambda done, last: _nan_error(cfg, m, done, last, ck))
    run.run(lambda it: m.step(synset, state, gen))
    m.finalize(synset, state)  # e.g. MTT records its learned student step size
    history.update(m.report(state))  # what the steps added (DM's held-out-network curve)
    history["peak_memory_mb"] = max(history.get("peak_memory_mb") or 0.0, peak_memory_mb(device))
    if prof.summary is not None:
        history["profile"] = prof.summary
        if dist.main:
            log.info(profiling.headline(prof.summary))
    return run.last_saved


def _data_record(store) -> dict:
    """What ``config.json`` says of the data: the store's description, and where a prepared store
    is (absolute), so ``--config`` finds it again."""
    d = store.describe()
    if store.path is not None:
        d["path"] = str(Path(store.path).resolve())
    return d


def _save_result(out, ck, synset, m, gen, history, ident, cfg, preset, store, last_saved):
    """``out/synset``, ``config.json``, ``metrics.json`` (and, for a method without steps, its
    checkpoint); a full disk says which checkpoint is intact."""
    try:
        synset.save(out / "synset")
        (out / "config.json").write_text(json.dumps({"vdfast": __version__, "preset": preset,
                                                     "data": _data_record(store), **cfg.to_dict()},
                                                    indent=1))
        _write_metrics(out, {"history": _summary(history)})
        if last_saved is None:  # non-iterative methods: the result is the checkpoint
            _checkpoint(ck, synset, m, None, gen, history["iterations"], history, ident)
    except Exception as e:
        if checkpoint.is_disk_full(e, out):
            kept = (f"the checkpoint of iteration {last_saved} in {ck.path} is intact; "
                    if last_saved is not None else "")
            raise checkpoint.DiskFullError(out, f"the result was not written completely; {kept}"
                                                f"free some space, then run the same command "
                                                f"again (it resumes)") from e
        raise


def _nan_error(cfg, m, done, last_saved, ck):
    where = (f"the last checkpoint (iteration {last_saved}) is in {ck.path}" if last_saved is not None
             else "no checkpoint was written before it" if ck is not None else
             "nothing was saved (no out)")
    raise FloatingPointError(f"{cfg.method} loss became NaN or infinite (diverged) by iteration {done}; "
                             f"lower the learning "
                             f"rate of the synthetic data (--lr-img, or the method's own "
                             f"--{m.name}-lr-img); {where}")


def _find_checkpoint(ck, dist):
    """The newest whole checkpoint (rank 0 first: it may finish a swap a kill interrupted)."""
    found = None
    if dist.main:
        found = ck.load(warn=log.warning)
    dist.barrier()
    if not dist.main:
        found = ck.load(warn=lambda msg: None)
    return found


def _read_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # verified by its manifest: only another torch could fail here
        raise checkpoint.CheckpointError(f"cannot read {path} ({type(e).__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''}); pass "
                                         f"--no-resume to start over, or another --out") from e


def _read_synset(path: Path, device):
    try:
        return load(path, device=device)
    except Exception as e:
        raise checkpoint.CheckpointError(f"cannot read the checkpoint's synset {path} "
                                         f"({type(e).__name__}: {e}); pass --no-resume to start "
                                         f"over, or another --out") from e


def _nbytes(obj) -> int:
    """Bytes of the tensors inside nested dicts / lists."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _diff(a: dict, b: dict, prefix="") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _diff(va, vb, f"{prefix}{k}.")
            if d:
                out.append(d)
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return ", ".join(out)


def _checkpoint(ck, synset, m, state, gen, iteration, history, ident, pending=()):
    """One whole checkpoint (:class:`vdfast.engine.checkpoint.Checkpointer`): ``synset/`` and
    ``state.pt`` (history, the losses of the unfinished window, generator, the method's state)
    under one manifest."""
    def write(d: Path):
        synset.save(d / "synset")
        torch.save({"iteration": iteration, "history": history, "gen": gen.get_state(),
                    "pending": list(pending),
                    "method": m.state_dict(state) if state is not None else {}},
                   d / "state.pt")

    ck.save(iteration, write, identity=ident)


def _summary(history: dict) -> dict:
    loss = history.get("loss", [])
    spi = history.get("seconds_per_it", [])
    return {"iterations": history.get("iterations"), "final_loss": loss[-1] if loss else None,
            "median_seconds_per_it": sorted(spi)[len(spi) // 2] if spi else None,
            "peak_memory_mb": history.get("peak_memory_mb"),
            "memory_before_loop_mb": history.get("memory_before_loop_mb"), "loss": loss,
            **{k: history[k] for k in ("profile", "dm_bank") if k in history}}


def _write_metrics(out: Path, update: dict):
    f = out / "metrics.json"
    d = json.loads(f.read_text()) if f.exists() else {}
    d.update(update)
    f.write_text(json.dumps(d, indent=1))


def evaluate(synset, data=None, students: int | None = None, out=None, seed: int = 0,
             device: str = "auto", preset: str = "auto", progress: bool = True,
             baselines: bool | str | None = None, full: bool | None = None, net: dict | None = None,
             **eval_options):
    """Train fresh students on ``synset`` and test them on ``data``'s real test split.

    ``synset``: a Synset or a path to a saved one. ``eval_options``: EvalConfig fields
    (``epochs``, ``student``, ``lr`` ...); ``net``: NetConfig fields of the student
    (``{"width": 32}``). ``baselines``: random real clips at the same ipc beside the synset, and
    for a synset with a teacher the rows that use it; ``"teacher"``: only those (None: the
    config's). Returns a :class:`vdfast.evaluation.Report`; its
    ``table()`` is the markdown table the CLI prints. Launched on N processes (torchrun /
    accelerate), every process calls it and the students are split across them.
    """
    from vdfast.evaluation import evaluate as run_eval

    if not isinstance(synset, Synset):
        synset = load(synset)
    store = open_data(data)
    if preset == "auto":
        preset = "builtin" if store.name == BUILTIN else "published"
    cfg = resolve(preset, eval={"students": students, **eval_options}, net=net or {}, seed=seed,
                  device=device)
    from vdfast import distributed

    dist = distributed.setup(pick_device(cfg.device))  # N processes: students split across them
    dev = dist.device
    with quiet(not progress):
        rep = run_eval(synset.to(dev), store, cfg.eval, seed=cfg.seed, device=dev, net_cfg=cfg.net,
                       progress=progress and dist.main, baselines=baselines, full=full, dist=dist)
    if out is not None and dist.main:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out, {"eval": rep.to_dict(), "eval_config": cfg.eval.__dict__,
                             "storage": synset.storage()})
    return rep


def prepare(source, out, config=None, progress: bool = True, **options) -> ClipStore:
    """Decode a dataset folder into a ClipStore (see :func:`vdfast.data.store.prepare`), holding
    ``out``'s run lock (a second ``prepare`` into the same store is refused at once). The options
    are a :class:`vdfast.config.PrepareConfig` (``config``) and/or its fields as keywords, checked
    before anything is read or written."""
    from vdfast.data.store import prepare as _prepare
    from vdfast.data.store import prepare_config

    cfg = prepare_config(config, **options)
    if not Path(source).exists():
        raise StoreError(f"dataset folder {source} does not exist")
    checkpoint.preflight(out)
    with checkpoint.RunLock(out, "prepare"), quiet(not progress):
        return _prepare(source, out, cfg, progress=progress)


from vdfast.config import register_names  # noqa: E402  (beside its use: the registries' names)


def _method_names():
    from vdfast.methods import names

    return names()


def _student_names():
    from vdfast.models import STUDENTS

    return STUDENTS


def _generator_names():
    from vdfast.models.video_dit import PRESETS

    return tuple(PRESETS)


def _layout_names():
    from vdfast.data.layouts import LAYOUTS

    return ("auto", *LAYOUTS)


# the registries whose names configs hold (config imports none of them; looked up when checked)
register_names("method", _method_names)
register_names("student", _student_names)
register_names("generator", _generator_names)
register_names("layout", _layout_names)

__all__ = ["distill", "evaluate", "prepare", "load", "open_data", "Result", "EvalConfig", "from_dict"]
