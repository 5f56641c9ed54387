"""Who may call the worker: a bearer token checked on every RPC.

When the worker has a token (``SNAKEPIT_WORKER_TOKEN`` in its environment, or the
``token=`` argument of :class:`~snakepit_bridge.server.BridgeServer` and
:func:`~snakepit_bridge.worker.start_worker`), :class:`BearerTokenInterceptor` aborts every
call, whatever its method, that does not carry exactly one ``authorization: Bearer
<token>`` header with ``grpc.StatusCode.UNAUTHENTICATED``. The comparison is constant-time
(:func:`hmac.compare_digest`), and the token never appears in a repr, an error or a
status message.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, NoReturn

import grpc
import grpc.aio

__all__ = [
    "AUTHORIZATION_HEADER",
    "MAX_TOKEN_LENGTH",
    "TOKEN_ENV",
    "UNAUTHENTICATED_DETAILS",
    "BearerToken",
    "BearerTokenInterceptor",
    "TokenSource",
    "resolve_token",
]

TOKEN_ENV: Final = "SNAKEPIT_WORKER_TOKEN"
AUTHORIZATION_HEADER: Final = "authorization"
BEARER_SCHEME: Final = "bearer"
MAX_TOKEN_LENGTH: Final = 4096
UNAUTHENTICATED_DETAILS: Final = "missing or invalid bearer token"

_VISIBLE_ASCII: Final = frozenset(range(0x21, 0x7F))


class TokenSource(enum.Enum):
    """Where a server gets its token when none is passed explicitly."""

    FROM_ENV = "from_env"
    """Read :data:`TOKEN_ENV` when the server is created (unset: no token)."""


class BearerToken:
    """A worker token: checks ``authorization`` header values; its repr hides it."""

    __slots__ = ("_secret",)

    def __init__(self, token: str) -> None:
        """Hold ``token``.

        Raises:
            ValueError: if it is empty, longer than :data:`MAX_TOKEN_LENGTH`, or has a
                character other than visible ASCII (no spaces or control characters,
                which a header value could not carry). The message never includes it.
        """
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        if not token:
            raise ValueError("the worker token is empty")
        secret = token.encode("utf-8", "surrogatepass")
        if len(secret) > MAX_TOKEN_LENGTH:
            raise ValueError(f"the worker token is longer than {MAX_TOKEN_LENGTH} bytes")
        if not _VISIBLE_ASCII.issuperset(secret):
            raise ValueError(
                "the worker token must be visible ASCII characters only "
                "(no spaces, control or non-ASCII characters)"
            )
        self._secret = secret

    def accepts(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """True if ``metadata`` has exactly one ``authorization: Bearer <this token>``."""
        values = [value for key, value in metadata or () if key == AUTHORIZATION_HEADER]
        if len(values) != 1:
            return False
        value = values[0]
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        scheme, _, given = raw.partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        scheme_ok = scheme.lower() == BEARER_SCHEME.encode()
        return hmac.compare_digest(given, self._secret) and scheme_ok

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a BearerToken cannot be pickled")


def resolve_token(token: str | BearerToken | TokenSource | None) -> BearerToken | None:
    """Return the token to enforce: None means every caller is accepted.

    ``TokenSource.FROM_ENV`` reads :data:`TOKEN_ENV` (unset: None; set but empty or
    invalid: ``ValueError``).
    """
    if token is TokenSource.FROM_ENV:
        from_env = os.environ.get(TOKEN_ENV)
        if from_env is None:
            return None
        try:
            return BearerToken(from_env)
        except ValueError as exc:
            raise ValueError(f"{TOKEN_ENV}: {exc}") from None
    if token is None or isinstance(token, BearerToken):
        return token
    return BearerToken(token)


async def _abort_unauthenticated(
    _request: object, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


def _rejecting_handler(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as ``handler`` that aborts before reading anything."""
    if handler is None:  # unknown method: don't reveal that, reject like any other
        return grpc.stream_stream_rpc_method_handler(_abort_unauthenticated)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_abort_unauthenticated)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_abort_unauthenticated)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_abort_unauthenticated)
    return grpc.unary_unary_rpc_method_handler(_abort_unauthenticated)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Aborts every call without the right bearer token with ``UNAUTHENTICATED``.

    For a ``grpc.aio`` server (:class:`~snakepit_bridge.server.BridgeServer` is one).
    """

    def __init__(self, token: BearerToken) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Route an authenticated call on; give any other one a rejecting handler."""
        handler = await continuation(handler_call_details)
        if self._token.accepts(handler_call_details.invocation_metadata):
            return handler
        return _rejecting_handler(handler)

    def __repr__(self) -> str:
        return "BearerTokenInterceptor(<redacted>)"
