"""Configuration: frozen dataclasses, validated on construction, defaults in exactly one place.

The dataclass defaults are the published settings (spec/methods.md). ``PRESETS`` holds the only
other defaults: the embedded dataset's, sized for a 2-core CPU. ``resolve`` applies a preset and then
the user's explicit overrides; the resolved config is saved beside every result. The CLI maps one
flag onto each field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

METHODS = ("dm", "random", "herding", "kcenter")
INITS = ("real", "noise")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """An impossible or unknown option; the message names the valid choices."""


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(map(str, choices))}")


def _positive(name, value, allow_zero=False):
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class NetConfig:
    """The ConvNet3D used to embed (DM, herding, k-center) and as the default student."""

    width: int = 64
    depth: int = 3
    norm: str = "none"

    def __post_init__(self):
        _positive("net width", self.width)
        _positive("net depth", self.depth)
        _choice("net norm", self.norm, ("none", "instance", "batch"))


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol: fresh students trained on the synthetic set, tested on real clips."""

    students: int = 3
    student: str = "convnet3d"
    epochs: int = 500
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256
    standardize: bool = True        # scale each batch by its own scalar mean/std (the protocol)
    soft_temperature: float = 1.0   # KL temperature when the synset carries soft labels
    baselines: bool = True          # also evaluate random real clips at the same ipc
    full: bool = True               # also train on the full training set
    full_epochs: int = 30
    full_students: int = 1

    def __post_init__(self):
        from vdfast.models import STUDENTS

        _choice("eval student", self.student, STUDENTS)
        for n in ("students", "epochs", "batch", "full_epochs", "full_students"):
            _positive(n, getattr(self, n))
        _positive("eval lr", self.lr)


@dataclass(frozen=True)
class DistillConfig:
    method: str = "dm"
    ipc: int = 1
    iterations: int = 5000
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 64             # real clips per class per iteration (DM)
    init: str = "real"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200      # iterations between checkpoints (0: only at the end)
    net: NetConfig = field(default_factory=NetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        _choice("init", self.init, INITS)
        _choice("device", self.device, DEVICES)
        _positive("ipc", self.ipc)
        _positive("iterations", self.iterations, allow_zero=True)
        _positive("batch_real", self.batch_real)
        _positive("lr_img", self.lr_img)
        _positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The embedded dataset's defaults (8 frames at 32x32, 12 classes): a 2-core CPU finishes the main
# job (distill + 3+3 students + the full-data student) in a few minutes.
PRESETS: dict[str, dict] = {
    "published": {},
    "builtin": {
        "iterations": 200, "batch_real": 16, "lr_img": 1.0, "checkpoint_every": 50,
        "net": {"width": 32, "depth": 2},
        "eval": {"epochs": 200, "batch": 64, "full_epochs": 20},
    },
}


def resolve(preset: str = "published", **overrides) -> DistillConfig:
    """A DistillConfig from a preset plus explicit overrides.

    Overrides may be flat (``lr_img=0.5``) or dotted for nested fields (``"net.width": 32``,
    ``"eval.epochs": 100``), or nested dicts (``eval={"epochs": 100}``). ``None`` values are ignored.
    """
    _choice("preset", preset, PRESETS)
    merged: dict = {"net": {}, "eval": {}}
    for k, v in PRESETS[preset].items():
        if k in ("net", "eval"):
            merged[k].update(v)
        else:
            merged[k] = v
    known = {f.name for f in fields(DistillConfig)}
    sub = {"net": {f.name for f in fields(NetConfig)}, "eval": {f.name for f in fields(EvalConfig)}}
    for k, v in overrides.items():
        if v is None:
            continue
        if k in ("net", "eval") and isinstance(v, dict):
            for kk, vv in v.items():
                _set_sub(merged, sub, k, kk, vv)
        elif "." in k:
            head, tail = k.split(".", 1)
            if head not in sub:
                raise ConfigError(f"unknown option {k!r}")
            _set_sub(merged, sub, head, tail, v)
        elif k in known:
            merged[k] = v
        else:
            raise ConfigError(f"unknown option {k!r}; valid options: {', '.join(sorted(known))}, "
                              f"net.{{{','.join(sorted(sub['net']))}}}, eval.{{{','.join(sorted(sub['eval']))}}}")
    net = NetConfig(**merged.pop("net"))
    ev = EvalConfig(**merged.pop("eval"))
    return DistillConfig(net=net, eval=ev, **merged)


def _set_sub(merged, sub, head, key, value):
    if value is None:
        return
    if key not in sub[head]:
        raise ConfigError(f"unknown option {head}.{key}; valid: {', '.join(sorted(sub[head]))}")
    merged[head][key] = value


def from_dict(d: dict) -> DistillConfig:
    """Inverse of ``DistillConfig.to_dict`` (used when loading a saved run)."""
    d = dict(d)
    net = NetConfig(**d.pop("net", {}))
    ev = EvalConfig(**d.pop("eval", {}))
    return DistillConfig(net=net, eval=ev, **d)
