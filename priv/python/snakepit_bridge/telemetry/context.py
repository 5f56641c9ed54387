"""The current correlation id, and Snakepit's helpers around it.

The id is carried in a :class:`contextvars.ContextVar`; ``CORRELATION_HEADER``,
``outgoing_metadata`` and ``correlation_filter`` carry it into gRPC calls and log records.

Context variables follow Python's rules: an asyncio task starts with a copy of the context
of the code that created it (so it sees the id set there, and its own changes stay in the
task); a new ``threading.Thread`` starts with an empty context (no id) unless it is started
through ``contextvars.copy_context().run``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Final, overload

__all__ = [
    "CORRELATION_HEADER",
    "CORRELATION_ID",
    "NO_CORRELATION_ID_IN_LOGS",
    "correlation",
    "correlation_filter",
    "get_correlation_id",
    "new_correlation_id",
    "outgoing_metadata",
    "reset_correlation_id",
    "set_correlation_id",
]

CORRELATION_HEADER: Final = "x-snakepit-correlation-id"
"""The gRPC metadata header that carries a call's correlation id (Snakepit's name)."""

NO_CORRELATION_ID_IN_LOGS: Final = "-"
"""What :func:`correlation_filter` puts on a log record when there is no id (Snakepit's)."""

CORRELATION_ID: ContextVar[str | None] = ContextVar("snakepit_bridge_correlation_id", default=None)
"""The correlation id that ``emit`` uses when none is passed explicitly."""


@overload
def get_correlation_id() -> str | None: ...
@overload
def get_correlation_id(default: str) -> str: ...
@overload
def get_correlation_id(default: str | None) -> str | None: ...
def get_correlation_id(default: str | None = None) -> str | None:
    """Return the current context's correlation id, or ``default`` when it has none."""
    value = CORRELATION_ID.get()
    return default if value is None else value


def new_correlation_id() -> str:
    """Return a fresh random correlation id (32 lowercase hex digits, a UUID4)."""
    return uuid.uuid4().hex


def set_correlation_id(correlation_id: str | None) -> Token[str | None]:
    """Set the current context's correlation id; return a token to :func:`reset_correlation_id`."""
    return CORRELATION_ID.set(correlation_id)


def reset_correlation_id(token: Token[str | None] | None) -> None:
    """Restore the correlation id that was current before the matching ``set``.

    A None token is ignored (as in Snakepit), so ``reset_correlation_id(maybe_token)`` is
    safe after a conditional ``set``.
    """
    if token is not None:
        CORRELATION_ID.reset(token)


@contextmanager
def correlation(correlation_id: str | None) -> Iterator[None]:
    """Use ``correlation_id`` for events emitted inside the ``with`` block."""
    token = CORRELATION_ID.set(correlation_id)
    try:
        yield
    finally:
        CORRELATION_ID.reset(token)


def outgoing_metadata(initial: Iterable[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Return gRPC call metadata: ``initial``'s pairs plus the current correlation id.

    The id goes as ``(CORRELATION_HEADER, id)`` at the end, only when the context has a
    non-empty one; ``initial`` is copied, never changed. Pass the result as a client
    call's ``metadata=`` so the callee sees the same id.
    """
    metadata = list(initial) if initial else []
    correlation_id = CORRELATION_ID.get()
    if correlation_id:
        metadata.append((CORRELATION_HEADER, correlation_id))
    return metadata


class CorrelationIdFilter(logging.Filter):
    """Sets ``record.correlation_id`` to the current id (``"-"`` when none); keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record`` and let it through."""
        record.correlation_id = get_correlation_id(NO_CORRELATION_ID_IN_LOGS)
        return True


def correlation_filter() -> logging.Filter:
    """Return a logging filter that puts the correlation id on every record.

    Add it to a handler and use ``%(correlation_id)s`` in the handler's format.
    """
    return CorrelationIdFilter()
