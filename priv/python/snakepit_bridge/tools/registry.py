"""Tools by name: the registry ``ExecuteTool`` looks tools up in, and ``@tool``.

A tool is a plain function. ``ExecuteTool`` calls it as ``fn(**params)``: one keyword
argument per request parameter, each JSON parameter decoded to its Python value (``dict``,
``list``, ``str``, ``int``, ``float``, ``bool`` or ``None``) and each binary parameter as
``bytes``. Its return value must have a JSON form (``json.dumps`` accepts it, no NaN or
infinity). A coroutine function is run to completion with :func:`asyncio.run`.

::

    from snakepit_bridge.tools import tool

    @tool                       # registered as "resize"
    def resize(image: bytes, width: int) -> dict[str, int]: ...

    @tool("models.predict")     # registered under an explicit name
    def predict(inputs: list[float]) -> list[float]: ...

Module-level :func:`tool`, :func:`register_tool`, :func:`get_tool`, :func:`unregister_tool`
and :func:`tool_names` act on :data:`DEFAULT_REGISTRY`, the registry the worker serves
(the built-in ``telemetry_demo`` is in it once :mod:`snakepit_bridge.tools` is imported).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from typing import Final, TypeVar, overload

__all__ = [
    "DEFAULT_REGISTRY",
    "ToolFunction",
    "ToolImportError",
    "ToolRegistry",
    "get_tool",
    "import_tool_modules",
    "register_tool",
    "tool",
    "tool_names",
    "unregister_tool",
]

ToolFunction = Callable[..., object]
"""A tool: called as ``fn(**params)``, returns a JSON-able value."""

F = TypeVar("F", bound=ToolFunction)


class ToolRegistry:
    """Tool functions by name. Thread-safe; lookups take no lock."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolFunction] = {}
        self._lock = threading.Lock()

    def register(self, name: str, fn: F) -> F:
        """Register ``fn`` under ``name`` and return it unchanged.

        Registering the same function under the same name again is a no-op (a module
        imported twice).

        Raises:
            ValueError: if ``name`` is empty or already names a different function.
            TypeError: if ``name`` is not a string or ``fn`` is not callable.
        """
        if not isinstance(name, str):
            raise TypeError(f"tool name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("tool name must not be empty")
        if not callable(fn):
            raise TypeError(f"tool {name!r} is not callable: {type(fn).__name__}")
        with self._lock:
            existing = self._tools.get(name)
            if existing is not None and existing is not fn:
                raise ValueError(f"a different tool is already registered as {name!r}")
            self._tools[name] = fn
        return fn

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(self, name: str | None = None, /) -> Callable[[F], F]: ...

    def tool(self, target: F | str | None = None, /) -> F | Callable[[F], F]:
        """Decorator: ``@tool`` registers under the function's ``__name__``.

        ``@tool("name")`` (or ``@tool()``) registers under the given name (or
        ``__name__``). Returns the function unchanged.
        """
        if target is None or isinstance(target, str):
            explicit = target

            def decorate(fn: F) -> F:
                return self.register(explicit or _function_name(fn), fn)

            return decorate
        return self.register(_function_name(target), target)

    def get(self, name: str) -> ToolFunction | None:
        """Return the tool registered as ``name``, or None."""
        return self._tools.get(name)

    def unregister(self, name: str) -> ToolFunction | None:
        """Remove and return the tool registered as ``name`` (None if there was none)."""
        with self._lock:
            return self._tools.pop(name, None)

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()!r})"


def _function_name(fn: ToolFunction) -> str:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"cannot name tool {fn!r}: give a name, @tool('name')")
    return name


DEFAULT_REGISTRY: Final = ToolRegistry()
"""The registry the worker serves unless it is given another one."""

tool = DEFAULT_REGISTRY.tool
"""``@tool`` / ``@tool("name")`` on :data:`DEFAULT_REGISTRY` (see :meth:`ToolRegistry.tool`)."""


def register_tool(name: str, fn: F) -> F:
    """Register ``fn`` as ``name`` in :data:`DEFAULT_REGISTRY` (see :meth:`ToolRegistry.register`).

    Returns ``fn``.
    """
    return DEFAULT_REGISTRY.register(name, fn)


def get_tool(name: str) -> ToolFunction | None:
    """Return the tool registered as ``name`` in :data:`DEFAULT_REGISTRY`, or None."""
    return DEFAULT_REGISTRY.get(name)


def unregister_tool(name: str) -> ToolFunction | None:
    """Remove ``name`` from :data:`DEFAULT_REGISTRY`; return the removed tool or None."""
    return DEFAULT_REGISTRY.unregister(name)


def tool_names() -> list[str]:
    """Return the names in :data:`DEFAULT_REGISTRY`, sorted."""
    return DEFAULT_REGISTRY.names()


class ToolImportError(RuntimeError):
    """A tools module given to the worker could not be imported."""


def import_tool_modules(module_names: Iterable[str]) -> None:
    """Import each module by its dotted name, so its ``@tool`` decorators register.

    Modules are found on ``sys.path`` as usual (``PYTHONPATH``, the current directory
    under ``python -m``).

    Raises:
        ToolImportError: naming the first module that failed and why (the original
            exception is its ``__cause__``).
    """
    for name in module_names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            raise ToolImportError(
                f"cannot import tools module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
