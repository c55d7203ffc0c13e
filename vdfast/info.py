"""``vdfast info``: versions, devices, and which backends are usable (and why not)."""
from __future__ import annotations

import importlib
import platform


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:
        return f"not usable ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"


def _decoders() -> dict:
    import torch

    from vdfast.data.dali import dali_reason, resolve_decoder

    why = dali_reason()
    auto = resolve_decoder("auto")
    return {"pyav": "usable" if _version("av")[0].isdigit() else _version("av"),
            "dali (cpu: VP8/VP9/MJPEG)": why or "usable",
            "dali (mixed: NVDEC)": why or ("usable" if torch.cuda.is_available() else "no CUDA device"),
            "auto picks": f"{auto[0]} ({auto[1]})"}


def info() -> dict:
    import torch

    import vdfast
    from vdfast.ops.dispatch import backend_reasons, built_cuda_archs, compiled_extension, status_table

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "vdfast": vdfast.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "devices": devices, "threads": torch.get_num_threads(),
        "packages": {p: _version(p) for p in ("triton", "av", "nvidia.dali", "accelerate", "xformers",
                                              "safetensors", "numpy")},
        "backends": {k: v or "usable" for k, v in backend_reasons().items()},
        "cuda_archs": [f"sm_{a // 10}" for a in built_cuda_archs()]
        if compiled_extension()[0] is not None else [],
        "decoders": _decoders(),
        "ops": [list(r) for r in status_table()],
        "dm_banks": _banks(),
    }


def _banks() -> list[dict]:
    """DM's network banks in $VDFAST_BANK_CACHE (vdfast.methods.dm_bank), if it is set."""
    from vdfast.methods.dm_bank import list_banks

    return list_banks()


def format_info(d: dict) -> str:
    lines = [f"vdfast {d['vdfast']}  python {d['python']}  torch {d['torch']} (cuda {d['torch_cuda']})",
             f"devices: {', '.join(d['devices'])}  (torch threads: {d['threads']})", "", "packages:"]
    lines += [f"  {k:12s} {v}" for k, v in d["packages"].items()]
    lines += ["", "backends:"] + [f"  {k:10s} {v}" for k, v in d["backends"].items()]
    if d.get("cuda_archs"):
        lines += [f"  vdfast._C carries CUDA code for: {', '.join(d['cuda_archs'])}"]
    lines += ["", "video decoders (vdfast prepare --decoder):"]
    lines += [f"  {k:26s} {v}" for k, v in d["decoders"].items()]
    if d["ops"]:
        lines += ["", "ops (op / backend / device: status):"]
        lines += [f"  {o:22s} {b:10s} {dev:5s} {s}" for o, b, dev, s in d["ops"]]
    if d.get("dm_banks"):
        lines += ["", "dm banks ($VDFAST_BANK_CACHE):"]
        lines += [f"  {b['path']}: {b['kind']} {b['net']}, K {b['K']}, M {b['M'] or 'all'}, "
                  f"{b['dtype']}, {b['classes_done']}/{b['classes']} classes, "
                  f"{b['bytes'] / 2**20:.1f} MiB, built in {b['build_seconds']:.1f} s" for b in d["dm_banks"]]
    return "\n".join(lines)
