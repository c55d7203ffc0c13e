"""Distillation methods by name.

A method name is an objective (``dm``, ``random``, ``herding``, ``kcenter`` ...) optionally prefixed
by a parametrisation (``s2d-dm``: the static-dynamic synset trained with the DM loss). Each method
module adds one line to ``OBJECTIVES``; each parametrisation adds its synset init to
:data:`vdfast.methods.base.INITS` and one line to ``PARAMETRIZATIONS``.
"""
import importlib

from vdfast.methods.base import Method

# objective -> "module:Class" (imported on use)
OBJECTIVES = {
    "dm": "vdfast.methods.dm:DM",
    "mtt": "vdfast.methods.mtt:MTT",
    "random": "vdfast.methods.coreset:Coreset",
    "herding": "vdfast.methods.coreset:Coreset",
    "kcenter": "vdfast.methods.coreset:Coreset",
    "dc": "vdfast.methods.dc:DC",
    "frepo": "vdfast.methods.frepo:FRePo",
    "gvd": "vdfast.methods.gvd:GVD",
    "compose": "vdfast.methods.compose:Compose",
    "static": "vdfast.methods.static:StaticOnly",
}
# parametrisations other than pixel, and the objectives they can be trained with
PARAMETRIZATIONS: dict[str, tuple[str, ...]] = {}
PARAMETRIZATIONS["s2d"] = ("dm", "mtt", "dc", "frepo")


def names() -> list[str]:
    return list(OBJECTIVES) + [f"{p}-{o}" for p, objs in PARAMETRIZATIONS.items() for o in objs]


def get(name: str) -> Method:
    """A fresh Method object for ``name``."""
    param, objective = "pixel", name
    if "-" in name:
        param, objective = name.split("-", 1)
        if param not in PARAMETRIZATIONS or objective not in PARAMETRIZATIONS[param]:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(names())}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(names())}")
    module, cls = OBJECTIVES[objective].split(":")
    return getattr(importlib.import_module(module), cls)(objective, parametrization=param)


__all__ = ["Method", "get", "names", "OBJECTIVES", "PARAMETRIZATIONS"]
