"""Configuration: frozen dataclasses, validated on construction, defaults in exactly one place.

The dataclass defaults are the published settings (spec/methods.md). ``PRESETS`` holds the only
other defaults: the embedded dataset's, sized for a 2-core CPU. ``resolve`` applies a preset and then
the user's explicit overrides; the resolved config is saved beside every result. The CLI maps one
flag onto each field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

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


# ---- method sections: each method owns one dataclass here (flags --<section>-<field>) ----------
@dataclass(frozen=True)
class MTTConfig:
    """MTT (trajectory matching) and its expert buffers."""


@dataclass(frozen=True)
class DCConfig:
    """DC (gradient matching)."""


@dataclass(frozen=True)
class FRePoConfig:
    """FRePo (kernel ridge regression on a pool of online models)."""


@dataclass(frozen=True)
class S2DConfig:
    """Static-dynamic disentanglement: static memory, dynamic memory, integrator."""


@dataclass(frozen=True)
class GVDConfig:
    """GVD: generator, mode guidance with frame-wise decay, MVIC, soft labels."""


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
    mtt: MTTConfig = field(default_factory=MTTConfig)
    dc: DCConfig = field(default_factory=DCConfig)
    frepo: FRePoConfig = field(default_factory=FRePoConfig)
    s2d: S2DConfig = field(default_factory=S2DConfig)
    gvd: GVDConfig = field(default_factory=GVDConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():  # nested sections may arrive as dicts (from JSON)
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        from vdfast.methods import names  # the method registry (no config import there)

        _choice("method", self.method, names())
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


# nested sections of DistillConfig: CLI prefix / override key -> dataclass
SECTIONS: dict[str, type] = {"net": NetConfig, "eval": EvalConfig, "mtt": MTTConfig, "dc": DCConfig,
                             "frepo": FRePoConfig, "s2d": S2DConfig, "gvd": GVDConfig}


def resolve(preset: str = "published", **overrides) -> DistillConfig:
    """A DistillConfig from a preset plus explicit overrides.

    Overrides may be flat (``lr_img=0.5``), dotted for nested sections (``"net.width": 32``,
    ``"eval.epochs": 100``), or nested dicts (``eval={"epochs": 100}``). ``None`` values are ignored.
    """
    _choice("preset", preset, PRESETS)
    merged: dict = {k: {} for k in SECTIONS}
    known = {f.name for f in fields(DistillConfig)} - set(SECTIONS)
    sub = {k: {f.name for f in fields(cls)} for k, cls in SECTIONS.items()}
    for source in (PRESETS[preset], overrides):
        for k, v in source.items():
            if v is None:
                continue
            if k in SECTIONS and isinstance(v, dict):
                for kk, vv in v.items():
                    _set_sub(merged, sub, k, kk, vv)
            elif "." in k:
                head, tail = k.split(".", 1)
                if head not in sub:
                    raise ConfigError(f"unknown option {k!r}; sections: {', '.join(SECTIONS)}")
                _set_sub(merged, sub, head, tail, v)
            elif k in known:
                merged[k] = v
            else:
                raise ConfigError(f"unknown option {k!r}; valid options: {', '.join(sorted(known))}, "
                                  f"or a section field like net.width ({', '.join(SECTIONS)})")
    for k, cls in SECTIONS.items():
        merged[k] = cls(**merged[k])
    return DistillConfig(**merged)


def _set_sub(merged, sub, head, key, value):
    if value is None:
        return
    if key not in sub[head]:
        raise ConfigError(f"unknown option {head}.{key}; valid: {', '.join(sorted(sub[head]))}")
    merged[head][key] = value


def from_dict(d: dict) -> DistillConfig:
    """Inverse of ``DistillConfig.to_dict`` (used when loading a saved run)."""
    d = dict(d)
    for k, cls in SECTIONS.items():
        d[k] = cls(**d.get(k, {}))
    return DistillConfig(**d)
