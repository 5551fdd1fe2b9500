"""The sandbox is for trying pdbridge locally and for tests: production code must never depend on
it, so a deployment can leave it out. One place is allowed: the `pdbridge sandbox` command, which
imports it lazily inside its own function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("service", "handlers", "jobs")
# (file, function) pairs allowed a lazy import of the sandbox.
ALLOWED = {("service/cli.py", "_cmd_sandbox")}


def _sandbox_imports(path: Path) -> list[tuple[int, str | None]]:
    """(line, enclosing function) of every import of the sandbox package in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            modules: list[str] = []
            if isinstance(child, ast.Import):
                modules = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                modules = [child.module]
            if any(m == "sandbox" or m.startswith("sandbox.") for m in modules):
                found.append((child.lineno, function))
            visit(child, name)

    visit(tree, None)
    return found


def test_production_code_never_imports_the_sandbox() -> None:
    offenders = []
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, function in _sandbox_imports(path):
                if (rel, function) not in ALLOWED:
                    offenders.append(f"{rel}:{line} (in {function or 'module scope'})")
    assert offenders == []


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    """The checker finds module-level and nested imports, so an empty list means something."""
    source = tmp_path / "m.py"
    source.write_text(
        "import sandbox.telegram\ndef f():\n    from sandbox.pipedrive import PipedriveStandin\n"
    )
    assert _sandbox_imports(source) == [(1, None), (3, "f")]
