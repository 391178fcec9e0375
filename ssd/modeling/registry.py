"""Two tiny registries: where users plug in their own backbone or box predictor.

A registry is a dict from name to a builder callable plus a decorator that fills it. Registration
happens when the module defining the part is imported; `ssd/modeling/backbone/__init__.py` and
`ssd/modeling/box_predictor.py` import every built-in part explicitly, so `grep "register"` shows
where each name comes from.
"""

from __future__ import annotations

from collections.abc import Callable


class Registry(dict):
    """A dict name -> callable, with `@REGISTRY.register("name")` and a helpful KeyError."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        def decorator(fn: Callable) -> Callable:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} is already registered (by {self[name].__module__})")
            self[name] = fn
            return fn

        return decorator

    def get_builder(self, name: str) -> Callable:
        if name not in self:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
        return self[name]


BACKBONES = Registry("backbone")
BOX_PREDICTORS = Registry("box predictor")
