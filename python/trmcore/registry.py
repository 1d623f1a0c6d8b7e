"""``Registry``: the name -> member table behind each pluggable family (timm-style ``create_*``).

Torch-free. The families: fine-tuning methods (``trmcore.training.methods.METHODS``),
normalisation layers (``trmcore.models.norms.NORMS``) and dataset importers
(``trmcore.data.importers.IMPORTERS``); see docs/architecture.md.

Example:
    >>> colours = Registry("colour")
    >>> colours.add("red", 0xFF0000)
    16711680
    >>> colours.lookup("blue")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'blue'; choose one of red
"""

from __future__ import annotations

from typing import Dict, TypeVar

T = TypeVar("T")


class Registry(Dict[str, T]):
    """A dict of members by name, in registration order (the order of --help), with checked add and lookup."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def add(self, name: str, member: T) -> T:
        """Register ``member`` under ``name`` and return it; ValueError for an empty or taken name."""
        if not name or name in self:
            raise ValueError(f"{self.what} name {name!r} is empty or already registered")
        self[name] = member
        return member

    def lookup(self, name: str) -> T:
        """The member ``name``; ValueError naming every registered one for any other."""
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {', '.join(self)}")
        return self[name]
