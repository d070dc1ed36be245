"""A registry that lists and creates pruners by name (``"l1norm"`` -> L1NormPruner)."""

from __future__ import annotations

from collections.abc import Iterator

from ._errors import did_you_mean


class Registry:
    """Name -> class, filled once at import time by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type] = {}

    def register(self, name: str):
        def decorate(cls: type) -> type:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice.")
            self._items[name] = cls
            cls.registry_name = name
            return cls

        return decorate

    def get(self, name: str) -> type:
        """The class registered as ``name`` (also accepts its class name).

        Raises:
            KeyError: no such name; the message lists close matches and every name.
        """
        if name in self._items:
            return self._items[name]
        for cls in self._items.values():
            if cls.__name__ == name:
                return cls
        raise KeyError(
            f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
            f"known: {', '.join(self._items)}."
        )

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


PRUNERS = Registry("pruner")
