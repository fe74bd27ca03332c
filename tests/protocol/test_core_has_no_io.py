"""shared/STYLE.md item 1: protocol/ and sasl/ import no I/O, clock or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import popbox

FORBIDDEN = {"asyncio", "socket", "ssl", "os", "time", "random", "selectors", "subprocess"}
PACKAGE = Path(popbox.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_io() -> None:
    files = sorted((PACKAGE / "protocol").rglob("*.py")) + sorted((PACKAGE / "sasl").rglob("*.py"))
    assert len(files) >= 6
    offenders = {str(f.relative_to(PACKAGE)): imported_modules(f) & FORBIDDEN for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_imports_nothing_from_lower_layers() -> None:
    for f in (PACKAGE / "protocol").rglob("*.py"):
        text = f.read_text()
        for layer in ("popbox.server", "popbox.storage", "popbox.auth"):
            assert layer not in text, f"{f.name} imports {layer}"
