"""The current correlation id, carried in a :class:`contextvars.ContextVar`.

Context variables follow Python's rules: an asyncio task starts with a copy of the context
of the code that created it (so it sees the id set there, and its own changes stay in the
task); a new ``threading.Thread`` starts with an empty context (no id) unless it is started
through ``contextvars.copy_context().run``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

__all__ = [
    "CORRELATION_ID",
    "correlation",
    "get_correlation_id",
    "reset_correlation_id",
    "set_correlation_id",
]

CORRELATION_ID: ContextVar[str | None] = ContextVar("snakepit_bridge_correlation_id", default=None)
"""The correlation id that ``emit`` uses when none is passed explicitly."""


def get_correlation_id() -> str | None:
    """Return the correlation id of the current context, or None."""
    return CORRELATION_ID.get()


def set_correlation_id(correlation_id: str | None) -> Token[str | None]:
    """Set the current context's correlation id; return a token to :func:`reset_correlation_id`."""
    return CORRELATION_ID.set(correlation_id)


def reset_correlation_id(token: Token[str | None]) -> None:
    """Restore the correlation id that was current before the matching ``set``."""
    CORRELATION_ID.reset(token)


@contextmanager
def correlation(correlation_id: str | None) -> Iterator[None]:
    """Use ``correlation_id`` for events emitted inside the ``with`` block."""
    token = CORRELATION_ID.set(correlation_id)
    try:
        yield
    finally:
        CORRELATION_ID.reset(token)
