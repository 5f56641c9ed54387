"""The active telemetry backend (Snakepit's ``telemetry.manager``).

:func:`set_backend`, :func:`get_backend` and :func:`is_enabled` are the same functions as
``snakepit_bridge.telemetry.set_backend`` and friends; the state lives next to ``emit``
(:mod:`snakepit_bridge.telemetry.api`) so that ``emit`` reads it without a module lookup.

Supersets of Snakepit's: :func:`set_backend` returns the previous backend (Snakepit's
returns None), and :func:`is_enabled` also asks the backend (False while the Elixir side
has telemetry toggled off), where Snakepit's only checks that a backend is set.
"""

from snakepit_bridge.telemetry.api import get_backend, is_enabled, set_backend

__all__ = ["get_backend", "is_enabled", "set_backend"]
