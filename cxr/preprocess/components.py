"""Connected components by union-find: the one grouping that near-duplicates and patients share."""

from __future__ import annotations

from collections.abc import Hashable


class Components:
    """Keys joined into components; a component is named by its smallest key, so the names
    depend only on which keys are joined, not on the order they were joined in."""

    def __init__(self) -> None:
        self._parent: dict[Hashable, Hashable] = {}

    def root(self, key: Hashable) -> Hashable:
        """The smallest key of `key`'s component (`key` itself when it was never joined)."""
        parent = self._parent
        while parent.get(key, key) != key:
            parent[key] = parent.get(parent[key], parent[key])  # path halving keeps chains short
            key = parent[key]
        return key

    def join(self, a: Hashable, b: Hashable) -> None:
        a, b = self.root(a), self.root(b)
        if a != b:
            self._parent[max(a, b)] = min(a, b)
