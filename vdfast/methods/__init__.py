"""Distillation methods by name. ``get(name)`` returns a fresh Method object."""
from vdfast.config import METHODS
from vdfast.methods.base import Method


def get(name: str) -> Method:
    if name == "dm":
        from vdfast.methods.dm import DM

        return DM()
    if name in ("random", "herding", "kcenter"):
        from vdfast.methods.coreset import Coreset

        return Coreset(name)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


__all__ = ["Method", "get"]
