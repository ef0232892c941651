"""The package's shape, as the README's Development section draws it, holds: imports point down the layers, the
core is pure, only the composition root knows the scheduler, the listener and the fleet, no `assert` guards
production code, modules and functions stay small unless they say why, public objects say what they are for."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import edge_token

PACKAGE = Path(edge_token.__file__).parent

# Top to bottom: a module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("commands", ("cli", "cliparser", "__main__", "commands", "wrapper", "demo", "preflight", "localauth")),
    ("composition", ("daemon", "app", "profiles")),
    ("orchestration", ("supervisor", "scheduler", "renewer", "cycle", "fleet.coordinator")),
    ("observers", ("observe",)),
    ("adapters", ("provider", "sinks", "fleet.etcd", "fleet.membership", "config")),
    ("plumbing", ("net", "secrets", "hardening", "limits", "pid1")),
    ("core", ("core",)),
    ("package", ("",)),
]
ROOT_ONLY = ("scheduler", "observe.httpserver", "fleet")  # only the composition layer builds these
STDLIB_IO = {"os", "socket", "subprocess", "asyncio", "ssl", "shutil", "signal", "io", "select", "selectors"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES, REASON = 300, 50, "Long because"


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of every import outside `if TYPE_CHECKING:` blocks (those exist only for the type checker)."""
    skip = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "edge_token":
                yield from ((node.lineno, f"edge_token.{alias.name}") for alias in node.names)
            else:
                yield node.lineno, node.module


def ours(module: str) -> str | None:
    return module.removeprefix("edge_token").removeprefix(".") if module.split(".")[0] == "edge_token" else None


def layer(name: str) -> int:
    if name.startswith("__version__"):
        return len(LAYERS) - 1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes if p) or name == "":
            return index
    raise AssertionError(f"edge_token.{name} is in no layer: add it to LAYERS (and to the README's drawing)")


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{path.name}:{line} edge_token.{name} ({LAYERS[layer(name)][0]}) imports edge_token.{target} "
        f"({LAYERS[layer(target)][0]})"
        for name, path, tree in modules()
        for line, module in imports(tree)
        if (target := ours(module)) is not None and layer(target) < layer(name)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_core_is_pure() -> None:
    """core/ imports only the standard library (no I/O modules) and core/ itself: it is tested by tables."""
    wrong = [
        f"{path.name}:{line} imports {module}"
        for name, path, tree in modules()
        if name.startswith("core")
        for line, module in imports(tree)
        if (ours(module) is not None and not ours(module).startswith("core"))  # type: ignore[union-attr]
        or (ours(module) is None and module.split(".")[0] not in sys.stdlib_module_names and module != "__future__")
        or module.split(".")[0] in STDLIB_IO
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_composition_root_builds_the_scheduler_listener_and_fleet() -> None:
    composition = LAYERS[1][1] + ("fleet",)  # the fleet package's own modules import each other
    wrong = [
        f"{path.name}:{line} edge_token.{name} imports edge_token.{target}"
        for name, path, tree in modules()
        if not any(name == c or name.startswith(c + ".") for c in composition)
        for line, module in imports(tree)
        if (target := ours(module)) is not None and any(target == r or target.startswith(r + ".") for r in ROOT_ONLY)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_assert_guards_production_code() -> None:
    """`python -O` removes asserts: an invariant the daemon relies on raises a real exception."""
    wrong = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for _, path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert)
    ]
    assert not wrong, "\n".join(wrong)


def test_modules_and_functions_are_small_or_say_why() -> None:
    wrong = []
    for _, path, tree in modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES and REASON not in (ast.get_docstring(tree) or ""):
            wrong.append(f"{path.relative_to(PACKAGE)}: {lines} lines and no '{REASON}' in its docstring")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and REASON not in (ast.get_docstring(node) or ""):
                    wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not wrong, "\n".join(wrong)


def test_public_objects_say_what_they_are_for() -> None:
    """Every public module, class, function and method has a docstring (methods of a private class excepted)."""
    wrong = []
    for _name, path, tree in modules():
        if not ast.get_docstring(tree):
            wrong.append(f"{path.relative_to(PACKAGE)}: module")
        for node in tree.body:
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith("_"):
                continue
            if not ast.get_docstring(node):
                wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                wrong += [
                    f"{path.relative_to(PACKAGE)}:{item.lineno} {node.name}.{item.name}"
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and not item.name.startswith("_")
                    and not ast.get_docstring(item)
                ]
    assert not wrong, f"{len(wrong)} without a docstring:\n" + "\n".join(wrong)
