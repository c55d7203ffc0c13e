"""GVD's sampling pieces: the DDPM schedule, guided DDPM/DDIM samplers, K-means (docs/gvd.md).

Everything here is independent of where the model and the modes come from, so it is tested on its
own (tests/test_gvd_sample.py):

* :func:`ddpm_schedule` — linear betas, ``alphas_cumprod`` in float64; :func:`noise_schedule` picks
  it or the cosine schedule (Nichol & Dhariwal) by name.
* :func:`eps_from_output` — the network's output (epsilon, or the velocity v) as epsilon.
* :func:`step_lams` — the per-frame guidance of one step: ``frame_decay`` (decay restarting at each
  MVIC segment) while ``t >= t_stop * T``, zeros afterwards.
* :func:`sample` — from pure noise to a clean latent with classifier-free guidance and mode
  guidance, every update through the fused :func:`vdfast.ops.guided_step`. Each instance draws its
  initial and step noise from ITS OWN generator (:func:`instance_generator`, seeded by the run seed,
  the class LABEL NAME and the slot), so the result does not depend on how instances are grouped
  into chunks, nor on the order of the classes.
* :func:`kmeans` — seeded k-means++ then Lloyd iterations, distances computed in fixed-size blocks.
"""
from __future__ import annotations

import zlib

import torch

from vdfast.ops.guided_step import StepCoefs, frame_decay, guided_step


def ddpm_schedule(timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``alphas_cumprod`` ``[timesteps]`` (float64) of the linear-beta DDPM schedule."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)


def cosine_schedule(timesteps: int = 1000, s: float = 0.008) -> torch.Tensor:
    """``alphas_cumprod`` ``[timesteps]`` (float64) of the cosine schedule (betas clipped at 0.999)."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * torch.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1.0 - betas, 0)


SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


def noise_schedule(name: str, timesteps: int) -> torch.Tensor:
    """``alphas_cumprod`` of the schedule ``name`` (``linear``: betas 1e-4..0.02; ``cosine``)."""
    if name == "linear":
        return ddpm_schedule(timesteps)
    if name == "cosine":
        return cosine_schedule(timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def eps_from_output(out: torch.Tensor, x_t: torch.Tensor, ab_t, prediction: str) -> torch.Tensor:
    """The noise epsilon implied by the network output ``out`` at ``x_t`` (``ab_t``: alpha-bar of
    each instance's timestep, a float or a tensor broadcasting against ``x_t``): ``out`` itself
    for ``eps``; ``sqrt(ab) v + sqrt(1 - ab) x_t`` for ``v`` (v = sqrt(ab) eps - sqrt(1 - ab) x0)."""
    if prediction == "eps":
        return out
    if prediction == "v":
        ab = torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device)
        return ab.sqrt() * out + (1 - ab).sqrt() * x_t
    raise ValueError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps from ``timesteps - 1`` down to 0, evenly spaced."""
    ts = torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    if len(set(ts)) != len(ts):
        raise ValueError(f"{steps} sampling steps do not fit {timesteps} training timesteps")
    return ts


def step_lams(t: int, lam: float, rho: float, t_stop: float, timesteps: int, frames: int,
              segments: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """Guidance coefficients ``[frames]`` of the step at timestep ``t``: the frame-wise linear decay
    ``lam * (1 - (1 - rho) f' / (F_seg - 1))`` (f' the frame index in its segment) while
    ``t >= t_stop * timesteps`` (the noisier part), else zeros."""
    if lam == 0.0 or t < t_stop * timesteps:
        return torch.zeros(frames, dtype=dtype, device=device)
    return frame_decay(lam, rho, frames, segments, dtype=dtype, device=device)


def instance_seed(seed: int, label: str, slot: int, candidate: int = 0) -> int:
    """A 63-bit seed for instance ``slot`` of class ``label`` (by name, not by class index);
    ``candidate`` r > 0 numbers the extra candidates of ``gvd.select`` (candidate 0 is the
    instance's own noise, so ``select = 1`` draws exactly what it drew before)."""
    key = f"{label}\x00{slot}" + (f"\x00{candidate}" if candidate else "")
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1)


def instance_generator(seed: int, label: str, slot: int, device="cpu",
                       candidate: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(instance_seed(seed, label, slot, candidate))


def _randn(gens, shape, device, dtype):
    return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in gens])


@torch.no_grad()
def sample(model, y: torch.Tensor, gens: list[torch.Generator], shape: tuple[int, int, int, int],
           alphas_cumprod: torch.Tensor, steps: int, sampler: str = "ddpm", cfg_scale: float = 1.0,
           guide: torch.Tensor | None = None, lam: float = 0.0, rho: float = 0.0,
           t_stop: float = 0.5, segments: int = 1, backend: str | None = None,
           prediction: str = "eps") -> torch.Tensor:
    """Guided sampling of ``len(y)`` latents ``[B, F, C, h, w]`` from pure noise.

    Args:
        model: ``eps = model.forward_cfg(x, t, y, scale)`` (e.g. :class:`VideoDiT`) or a callable
            ``model(x, t, y)`` when it has no ``forward_cfg``.
        y: ``[B]`` class indices of the model. gens: one generator per instance (its noise).
        shape: ``(F, C, h, w)`` of one latent clip.
        alphas_cumprod: the training schedule (:func:`noise_schedule`).
        steps: sampling steps (evenly spaced). sampler: ``ddpm`` | ``ddim`` (eta = 0).
        guide: modes ``[B, F, C, h, w]`` (per frame: MVIC segments hold different modes) or
            ``[B, C, h, w]``; None or ``lam == 0`` samples without mode guidance.
        lam, rho, t_stop, segments: see :func:`step_lams`.
        prediction: what the model outputs, ``eps`` or ``v`` (converted to epsilon after CFG).
    """
    if len(gens) != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {len(gens)} generators")
    device = y.device
    dtype = torch.float32
    T = alphas_cumprod.shape[0]
    F = shape[0]
    ts = sampling_timesteps(T, steps)
    x = _randn(gens, shape, device, dtype)
    if guide is None:
        guide, lam = torch.zeros((x.shape[0],) + tuple(shape[1:]), device=device, dtype=dtype), 0.0
    guide = guide.to(device=device, dtype=dtype)
    cfg_fn = getattr(model, "forward_cfg", None)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):  # the update stays fp32
            eps = cfg_fn(x, tt, y, cfg_scale) if cfg_fn is not None else model(x, tt, y)
        coefs = StepCoefs.from_schedule(alphas_cumprod, t, t_prev)
        eps = eps_from_output(eps.to(dtype), x, coefs.alpha_bar_t, prediction)
        noise = _randn(gens, shape, device, dtype) if sampler == "ddpm" and t_prev is not None else None
        lams = step_lams(t, lam, rho, t_stop, T, F, segments, device=device, dtype=dtype)
        x = guided_step(x, eps.to(dtype), guide, lams, coefs, noise, sampler=sampler, backend=backend)
    return x


# -------------------------------------------------------------------------------------- k-means
def _sqdist(x: torch.Tensor, c: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Squared distances ``[n, k]``, rows in blocks (memory bounded by ``block * k``)."""
    cn = c.pow(2).sum(1)
    out = torch.empty(x.shape[0], c.shape[0], device=x.device, dtype=x.dtype)
    for s in range(0, x.shape[0], block):
        xb = x[s:s + block]
        out[s:s + block] = (xb.pow(2).sum(1, keepdim=True) - 2 * xb @ c.T + cn[None]).clamp_min_(0)
    return out


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means of the rows of ``x`` ``[n, d]`` (float32 math) -> (centres ``[k, d]``, sizes ``[k]``).

    k-means++ initialisation drawn from ``gen`` (a CPU generator), then ``iters`` Lloyd steps; an
    empty cluster is re-seeded at the point farthest from its centre. Centres are returned sorted
    by cluster size (largest first, ties by index), so slot 0 gets the most common mode. With
    ``k > n`` the points are reused (every centre is still a data point).
    """
    x = x.float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means of an empty set")
    if k > n:
        reps = torch.arange(k) % n
        return x[reps].clone(), torch.ones(k, dtype=torch.long)
    first = int(torch.randint(n, (1,), generator=gen))
    idx = [first]
    d2 = _sqdist(x, x[first:first + 1])[:, 0]
    for _ in range(1, k):
        p = d2.double().cpu()
        j = int(torch.multinomial(p / p.sum(), 1, generator=gen)) if p.sum() > 0 else \
            int(torch.randint(n, (1,), generator=gen))
        idx.append(j)
        d2 = torch.minimum(d2, _sqdist(x, x[j:j + 1])[:, 0])
    c = x[idx].clone()
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for it in range(iters):
        dist = _sqdist(x, c)
        new_assign = dist.argmin(1)
        if it > 0 and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = (counts == 0).nonzero().flatten().tolist()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), c)
        if empty:
            far = dist.gather(1, assign[:, None])[:, 0]
            order = far.argsort(descending=True).tolist()
            for e, j in zip(empty, order):
                c[e] = x[j]
    assign = _sqdist(x, c).argmin(1)
    sizes = torch.bincount(assign, minlength=k).cpu()
    order = sorted(range(k), key=lambda i: (-int(sizes[i]), i))
    return c[order], sizes[order]
