"""The import direction of DESIGN.md, checked on the source (ast), not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "learner": {"telegram", "discord", "bot", "storage", "aiosqlite", "sqlite3"},
    "storage": {"telegram", "discord", "bot", "learner", "torch", "transformers"},
    "bot/telegram_adapter": {"torch", "transformers", "faiss", "sqlite3", "aiosqlite"},
    "bot/discord_adapter": {"torch", "transformers", "faiss", "sqlite3", "aiosqlite", "telegram"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    files = list((ROOT / package).rglob("*.py"))
    assert files
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_modules(f) & FORBIDDEN[package]) for f in files
    }
    assert {f: bad for f, bad in offenders.items() if bad} == {}
