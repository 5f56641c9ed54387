"""The tool registry and the ``@tool`` decorator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakepit_bridge import tools
from snakepit_bridge.tools import ToolImportError, ToolRegistry, import_tool_modules


def test_decorator_forms_register_and_return_the_function() -> None:
    registry = ToolRegistry()

    @registry.tool
    def plain() -> int:
        return 1

    @registry.tool("custom.name")
    def named() -> int:
        return 2

    @registry.tool()
    def empty_call() -> int:
        return 3

    assert plain() == 1 and named() == 2 and empty_call() == 3  # unchanged functions
    assert registry.names() == ["custom.name", "empty_call", "plain"]
    assert registry.get("plain") is plain
    assert registry.get("custom.name") is named
    assert registry.get("named") is None
    assert "plain" in registry and len(registry) == 3


def test_register_tool_and_unregister() -> None:
    registry = ToolRegistry()

    def add(a: int, b: int) -> int:
        return a + b

    assert registry.register("add", add) is add
    assert registry.register("add", add) is add  # same function again: no-op
    assert registry.unregister("add") is add
    assert registry.unregister("add") is None
    assert registry.get("add") is None


def test_a_name_taken_by_another_function_is_an_error() -> None:
    registry = ToolRegistry()
    registry.register("x", lambda: 1)
    with pytest.raises(ValueError, match="already registered as 'x'"):
        registry.register("x", lambda: 2)


@pytest.mark.parametrize(
    ("name", "fn", "error"),
    [
        ("", lambda: 1, ValueError),
        (3, lambda: 1, TypeError),
        ("n", "not callable", TypeError),
    ],
)
def test_invalid_registrations(name: object, fn: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ToolRegistry().register(name, fn)  # type: ignore[arg-type, type-var]


def test_module_level_functions_use_the_default_registry() -> None:
    def module_level_probe() -> str:
        return "ok"

    try:
        assert tools.register_tool("test.probe", module_level_probe) is module_level_probe
        assert tools.get_tool("test.probe") is module_level_probe
        assert "test.probe" in tools.tool_names()
        assert tools.DEFAULT_REGISTRY.get("test.probe") is module_level_probe
    finally:
        assert tools.unregister_tool("test.probe") is module_level_probe
    assert tools.get_tool("test.probe") is None
    assert tools.get_tool("telemetry_demo") is tools.telemetry_demo


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("regtest_")]:
        del sys.modules[name]


def test_import_tool_modules_registers_their_tools(module_dir: Path) -> None:
    (module_dir / "regtest_tools.py").write_text(
        "from snakepit_bridge.tools import tool\n"
        "@tool('regtest.double')\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
    )
    try:
        import_tool_modules(["regtest_tools"])
        fn = tools.get_tool("regtest.double")
        assert fn is not None and fn(x=4) == 8
    finally:
        tools.unregister_tool("regtest.double")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (None, "ModuleNotFoundError: No module named 'regtest_missing'"),
        ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
        ("def f(:\n", "SyntaxError"),
        ("import sys\nsys.exit(4)\n", "SystemExit: 4"),
    ],
    ids=["missing", "raises", "syntax", "exits"],
)
def test_import_failures_name_the_module_and_the_reason(
    module_dir: Path, source: str | None, fragment: str
) -> None:
    if source is not None:
        (module_dir / "regtest_missing.py").write_text(source)
    with pytest.raises(ToolImportError) as caught:
        import_tool_modules(["regtest_missing"])
    message = str(caught.value)
    assert message.startswith("cannot import tools module 'regtest_missing': ")
    assert fragment in message
    assert caught.value.__cause__ is not None
