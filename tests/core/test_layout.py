"""The tree's boundaries, read from the imports themselves (docs/design.md, "Layout").

The shared core (``recsvc/``) imports no role; a role never imports the other; inside a
role, imports of the role are relative, so the folder installs as ``recsvc.training`` /
``recsvc.serving``; and nothing anywhere imports a top-level ``training`` or ``serving``
(there is none once installed).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import recsvc.serving
import recsvc.training

from factories import REPO

ROLES = ("training", "serving")


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative ones as
    ``.name`` (level dots kept)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, "." * node.level + (node.module or "")


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "_pb2" not in p.name)


def _offending(folders: tuple[str, ...], banned: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        for path in _sources(folder):
            for line, module in _imports(path):
                if any(module == b or module.startswith(b + ".") for b in banned):
                    found.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return found


def test_the_core_imports_no_role() -> None:
    banned = tuple(f"recsvc.{r}" for r in ROLES) + ROLES
    assert _offending(("recsvc",), banned) == []


@pytest.mark.parametrize("role", ROLES)
def test_a_role_imports_neither_the_other_nor_itself_by_absolute_name(role: str) -> None:
    other = next(r for r in ROLES if r != role)
    banned = (f"recsvc.{other}", other, f"recsvc.{role}", role)
    assert _offending((role,), banned) == []


def test_nothing_imports_a_top_level_role_package() -> None:
    assert _offending(("tests", "benchmarks", "recsvc", *ROLES), ROLES) == []
    # nor in the code a test or a benchmark runs in a child process (python -c, -m)
    in_strings = re.compile(
        r"from\s+(training|serving)(\.\w+)*\s+import\b|-m\s+(training|serving)\.\w"
        r"|\bimport\s+([\w.]+,\s*)*(training|serving)\.\w"
    )
    found = [
        f"{path.relative_to(REPO)}: {match.group(0)!r}"
        for folder in ("tests", "benchmarks", "Makefile")
        for path in ([REPO / folder] if folder == "Makefile" else _sources(folder))
        for match in in_strings.finditer(path.read_text())
    ]
    assert found == []


def test_the_role_folders_install_inside_the_project_namespace() -> None:
    assert Path(recsvc.training.__file__).parent == REPO / "training"
    assert Path(recsvc.serving.__file__).parent == REPO / "serving"
