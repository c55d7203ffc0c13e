"""Multi-process runs on existing engines: torch.distributed, through Accelerate's process state
when Accelerate is installed.

The same command runs on 1 process or N (``torchrun --nproc_per_node N -m vdfast distill ...`` or
``accelerate launch --multi_gpu --num_processes N -m vdfast distill ...``; on CPUs the backend is
gloo). :func:`setup` joins the launcher's process group: through ``accelerate.PartialState`` when
the optional ``dist`` extra (Accelerate) is installed, so a program that already made an
``Accelerator`` shares its process state with vdfast; else through
``torch.distributed.init_process_group`` from the launcher's environment (torchrun needs nothing
more). Stages that rank 0 computes and caches for the others run inside
:meth:`Dist.main_process_first` (Accelerate's ``main_process_first`` when it made the state).

Which methods split how: docs/scale.md (DM, DC and their s2d variants by classes, FRePo by the
classes of its real batch and the rows of its synthetic set, MTT by each step's videos, static
learning by classes, GVD's sampling by classes, expert training by experts).

Class-sharded methods (DM, DC and their s2d variants, whose losses are sums over classes): rank r owns a
contiguous block of classes, keeps only their real clips on its device, and embeds only their real
and synthetic clips. Every rank keeps the whole synset; after each backward the synset's gradients
are summed across ranks (other ranks' rows are zero on each rank, shared tensors such as the s2d
integrator get the full sum), so every rank takes the identical optimizer step and holds the same
synset — there is nothing to gather and a checkpoint is written by rank 0 alone. The random draws
(network init, real-clip keys for ALL classes) come from a generator seeded identically on every
rank, so the result does not depend on the number of processes beyond float summation order.

Module training (GVD's autoencoder and generator, the teacher, the evaluation's full-train-set
student) is data-parallel through ``DistributedDataParallel`` (:meth:`Dist.data_parallel`): every
process draws the whole batch alike, takes its block of rows (:meth:`Dist.shard`), and its loss is
its rows' share of the batch's loss; DDP's bucketed all-reduce sums the gradients during the
backward. The distillation methods instead sum the synset's gradients (:meth:`Dist.sum_grads_`).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from vdfast.profiling import traced


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, its ``device``, and
    ``state``, Accelerate's ``PartialState`` when Accelerate made the process group (None without
    Accelerate or on one process)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    state: object | None = field(default=None, repr=False, compare=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> range:
        """The contiguous block of ``range(n)`` this rank owns (sizes differ by at most one)."""
        return _block(self.rank, self.world, n)

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            torch.distributed.all_reduce(t)
        return t

    @traced("vdfast.all_reduce_grads")
    def sum_grads_(self, params) -> None:
        """Sum the gradients of ``params`` across ranks in place (one flat buffer, one call)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        o = 0
        for g in grads:
            g.copy_(flat[o:o + g.numel()].view_as(g))
            o += g.numel()

    def data_parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` for data-parallel training on these processes: on one process the module
        itself; on N, wrapped in ``torch.nn.parallel.DistributedDataParallel`` (gloo on CPUs, the
        process's GPU on CUDA) whose gradient all-reduce, in buckets overlapping the backward, SUMS
        the processes' gradients (:func:`_sum_hook`; DDP's own reduction averages them). Each
        process's loss is its share of the whole batch's loss (its rows' sum / the batch's rows),
        so the summed gradient is the 1-process gradient of the batch up to float summation order.

        Every process must run the wrapper's forward and backward at every step, also with no rows
        (a zero-row forward gives zero gradients); parameters and buffers are taken from rank 0
        when wrapping (identical on every rank here) and buffers are not broadcast again. Train,
        save, load and copy (EMA) ``module`` itself, not the wrapper: its state dict has no
        ``module.`` prefix."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=ids, **_no_buffer_sync())
        ddp.register_comm_hook(None, _sum_hook)
        return ddp

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The ``[n, ...]`` tensor whose rows :meth:`shard` ``(n)`` are ``part`` on each rank, on
        every rank, differentiable: the backward sums the incoming gradient over the ranks (each
        rank's loss used every row) and hands each rank its own rows' share. One process: ``part``."""
        if not self.active:
            return part
        return _GatherRows.apply(part, self, n)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_process_first(self):
        """Rank 0 runs the ``with`` block first; every other rank enters it only once rank 0 has
        left it, so what rank 0 writes there (a stage's cache) is on disk for the others to load.
        Accelerate's ``PartialState.main_process_first`` when Accelerate made the state, else the
        same two barriers through torch.distributed; nothing on one process. A block that raises
        skips the closing barrier (the failure path, :func:`shutdown`, releases the others).

        Example::

            with dist.main_process_first():
                latents = encode_train(ae, store, cache)   # rank 0 encodes and saves, the rest load
        """
        if self.state is not None and self.active:
            with self.state.main_process_first():
                yield
            return
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


def _no_buffer_sync() -> dict:
    """DDP's option not to broadcast rank 0's buffers before every forward (every rank's are the
    same): ``forward_sync_buffers=False`` where torch has it (``broadcast_buffers`` is deprecated
    there), else ``broadcast_buffers=False``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    names = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers": False}


def _sum_hook(group, bucket):
    """A DDP communication hook: the bucket's gradients summed over the processes (no division by
    the world size, which DDP's default hook applies)."""
    fut = torch.distributed.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module a :meth:`Dist.data_parallel` wrapper trains (``module`` itself when not one)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def _block(rank: int, world: int, n: int) -> range:
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, part, dist, n):
        blocks = [_block(r, dist.world, n) for r in range(dist.world)]
        width = max(len(b) for b in blocks)  # all_gather wants equal shapes: pad to the largest
        padded = part.new_zeros((width, *part.shape[1:]))
        padded[:part.shape[0]] = part
        parts = [torch.empty_like(padded) for _ in blocks]
        torch.distributed.all_gather(parts, padded)
        ctx.mine = blocks[dist.rank]
        return torch.cat([p[:len(b)] for p, b in zip(parts, blocks)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.mine.start:ctx.mine.stop], None, None


def launched_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


_FAILED = "vdfast/failed/"


def shutdown(error: str | None = None) -> None:
    """End this run's process group, if there is one. After a command that succeeded (``error``
    None): once every process has reached this point (a process that leaves a live gloo group alone
    can abort at exit while the others still talk to it). After a failure: ``error`` (the
    process's one-line error) is left in the group's store for the others (:func:`peer_failure`)
    and the group is left at once, without a barrier the others may never reach (they are in
    another collective: the barrier would wait a whole timeout); closing the connections ends the
    others' pending collectives. The command line calls it after every command; a program that
    calls ``vdfast.distill`` under ``accelerate launch`` owns its group and ends it itself."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if error is None:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        return
    try:
        _store().set(f"{_FAILED}{torch.distributed.get_rank()}", error)
    except Exception:  # the store is gone with its host process: the others time out instead
        pass
    try:
        torch.distributed.destroy_process_group()
    except Exception:
        pass


def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def peer_failure(wait_s: float = 1.0) -> str | None:
    """The error another process of this run recorded when it failed (:func:`shutdown`), as
    ``process R of N failed: <its error line>``; None when there is no group or none did (within
    ``wait_s`` seconds: a collective can end before the failed process's record lands)."""
    import time

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    deadline = time.monotonic() + wait_s
    try:
        store = _store()
        while True:
            for r in range(world):
                key = f"{_FAILED}{r}"
                if r != rank and store.check([key]):
                    return f"process {r} of {world} failed: {store.get(key).decode(errors='replace')}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
    except Exception:  # the store's host has gone
        return None


def setup(device: torch.device) -> Dist:
    """The process group of this run (a single-process Dist when not launched with N > 1).

    With Accelerate installed (the ``dist`` extra), Accelerate's ``PartialState`` creates the group
    (or adopts the one an ``Accelerator`` made) and gives the rank, the number of processes and, on
    CUDA, the process's GPU; without it, ``torch.distributed.init_process_group`` reads the same
    launcher variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
    and the process takes GPU ``LOCAL_RANK``. Either way the backend is gloo on CPUs and NCCL on
    CUDA, with the timeout below."""
    if launched_world() <= 1:
        return Dist(0, 1, device)
    # stages trained by one rank (GVD's generator) or unevenly split (experts) keep the others
    # waiting at a barrier far longer than torch's 10/30-minute default: a long run must not die there
    minutes = float(os.environ.get("VDFAST_DIST_TIMEOUT_MIN", "720"))
    timeout = timedelta(minutes=minutes)
    try:
        from accelerate import PartialState
    except ImportError:  # the optional `dist` extra is not installed: plain torch.distributed
        return _torch_setup(device, timeout)
    state = PartialState(cpu=device.type == "cpu", timeout=timeout)
    dev = state.device if device.type == "cuda" else torch.device("cpu")
    return Dist(state.process_index, state.num_processes, dev, state)


def _torch_setup(device: torch.device, timeout: timedelta) -> Dist:
    """:func:`setup` without Accelerate: the group from the launcher's environment (``env://``)."""
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=timeout)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), device)
