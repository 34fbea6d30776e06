"""Which fields of a raw record a converter used, so that nothing is dropped without a word.

Every converter reads its record through :class:`TrackedRecord`: reading a key (``record["x"]``,
``record.get("x")``) marks it used, and nested objects come back tracked too (``messages[].loss_weight``).
After conversion, :func:`unused_fields` lists what was never read; the loader counts those by name
in the summary (``ignored_fields``). A value a converter keeps whole (``tools``, ``meta``) is read
with :meth:`TrackedRecord.whole`, which marks it used without looking inside.
This is generic on purpose: a new loader gets the check without writing it.
"""

from __future__ import annotations

from typing import Any, Iterator


class TrackedRecord(dict):
    """A dict that remembers which keys were read. ``path`` names it in reports (``messages[]``)."""

    def __init__(self, value: dict, path: str, registry: list["TrackedRecord"]):
        super().__init__(value)
        self.path = path
        self.read: set[str] = set()
        self._registry = registry
        self._children: dict[str, Any] = {}  # one wrapper per key, however often it is read
        registry.append(self)

    def _wrap(self, key: str, value: Any) -> Any:
        child = f"{self.path}.{key}" if self.path else key
        if isinstance(value, dict) and not isinstance(value, TrackedRecord):
            return TrackedRecord(value, child, self._registry)
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            return [TrackedRecord(v, f"{child}[]", self._registry) if isinstance(v, dict) else v for v in value]
        return value

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        if key not in self._children:
            self._children[key] = self._wrap(key, super().__getitem__(key))
        return self._children[key]

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default

    def whole(self, key: str, default: Any = None) -> Any:
        """The value as it is (not tracked inside), marking the key used: for values kept whole."""
        self.read.add(key)
        return super().get(key, default)

    def child(self, value: dict, path: str) -> "TrackedRecord":
        """``value`` tracked under a name of the converter's choosing (e.g. every tree node as ``message``)."""
        return TrackedRecord(value, path, self._registry)

    def mark(self, *keys: str) -> None:
        """Mark keys as used that the converter looked at in another way (e.g. a detector's test)."""
        self.read.update(keys)


def track(record: dict, path: str = "") -> tuple[TrackedRecord, list[TrackedRecord]]:
    """``record`` wrapped for tracking, and the registry that collects every tracked sub-object."""
    registry: list[TrackedRecord] = []
    return TrackedRecord(record, path, registry), registry


def unused_fields(registry: list[TrackedRecord]) -> Iterator[str]:
    """Dotted names of the keys no converter read, once per occurrence."""
    for tracked in registry:
        for key in tracked:
            if key not in tracked.read:
                yield f"{tracked.path}.{key}" if tracked.path else key
