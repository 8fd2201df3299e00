"""Named implementations of one computation (the selective scan, the top-1 MoE combine). Which one
a module runs is that module's own attribute, set with :meth:`Implementations.use` on a model, so
choosing one (the exporter's custom ops, a Triton kernel) never reroutes other models or threads."""
from __future__ import annotations

from typing import Callable

from torch import nn


class Implementations:
    def __init__(self, what: str, attr: str, **fns: Callable) -> None:
        self.what, self.attr, self.fns = what, attr, dict(fns)

    def register(self, name: str, fn: Callable) -> None:
        """Add ``fn`` under ``name`` (a later registration of the same name replaces it)."""
        self.fns[name] = fn

    def __getitem__(self, name: str) -> Callable:
        return self.fns[name]

    def use(self, model: nn.Module, cls: type[nn.Module], name: str) -> nn.Module:
        """Set ``attr = name`` on every ``cls`` module of ``model``; returns ``model``."""
        if name not in self.fns:
            raise KeyError(f"unknown {self.what} implementation {name!r}; known: {sorted(self.fns)}")
        for m in model.modules():
            if isinstance(m, cls):
                setattr(m, self.attr, name)
        return model
