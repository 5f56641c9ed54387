"""Lock-free event counters for the emit hot path.

``self.n += 1`` is a read-modify-write of several bytecodes, so two threads can lose an
update. ``next()`` on an ``itertools.count`` is one C call that runs entirely under the GIL,
so incrementing through it is atomic and costs about as much as ``deque.append``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping

__all__ = ["Counter", "CounterSet"]

_COUNT_REPR_PREFIX = "count("


class Counter:
    """A monotonically increasing counter that any thread may increment without a lock."""

    __slots__ = ("_count", "increment")

    increment: Callable[[], int]
    """Add one. A bound ``itertools.count.__next__``: atomic under the GIL."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self.increment = self._count.__next__

    def add(self, n: int) -> None:
        """Add ``n`` (>= 0) at once, atomically.

        The count is advanced ``n`` steps by ``deque(islice(count, n), maxlen=0)``, which
        runs entirely in C under the GIL (no bytecode runs in between, so no other thread
        can interleave); about 10 ns per step.
        """
        deque(itertools.islice(self._count, n), maxlen=0)

    @property
    def value(self) -> int:
        """How many times :attr:`increment` has been called.

        ``itertools.count`` has no read accessor; its repr is ``count(N)`` with N the next
        value to be returned, which is exactly the number of increments so far.
        """
        text = repr(self._count)
        return int(text[len(_COUNT_REPR_PREFIX) : -1])


class CounterSet:
    """A fixed set of named counters, e.g. one per drop reason."""

    __slots__ = ("_counters",)

    def __init__(self, names: Iterable[str]) -> None:
        self._counters: dict[str, Counter] = {name: Counter() for name in names}

    def __getitem__(self, name: str) -> Counter:
        return self._counters[name]

    def snapshot(self) -> Mapping[str, int]:
        """Return the current value of every counter, by name."""
        return {name: counter.value for name, counter in self._counters.items()}

    def total(self) -> int:
        """Return the sum of all counters."""
        return sum(counter.value for counter in self._counters.values())
