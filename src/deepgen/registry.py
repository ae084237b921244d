"""Name -> object registries: ``@register("vae")`` for models, and the same for datasets.

Registration is the only way a name becomes known; nothing dispatches on names elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects, with a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``obj`` available as ``name`` (and set ``obj.registered_name``).
        A second registration of one name is a programming error (ValueError)."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; a :class:`UserError` naming the closest
        registered names when there is none."""
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}. {did_you_mean(name, list(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


MODELS: Registry[type] = Registry("model")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a model family class available under ``name``."""
    return MODELS.register(name)
