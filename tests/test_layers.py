"""The folders are layers: a module imports only from its own layer or the ones below it, so
the architecture can be read from the tree and no import loop can form between folders."""

from __future__ import annotations

import ast
from pathlib import Path

import aotwatch

PACKAGE = Path(aotwatch.__file__).parent
LAYERS = ("core", "capture", "export", "report", "cluster", "attachment", "examples")
"""Lowest first."""
PUBLIC = ("aotwatch", "aotwatch.cli", "aotwatch.cluster.attach")
"""The entry points above every layer: the package (attach, detach), the command, and the Ray
hooks whose import path the README gives (``worker_process_setup``, ``attach_actors``)."""
TOP = len(LAYERS)


def layer(module: str) -> int:
    """``aotwatch.core.records`` -> 0; an entry point -> TOP."""
    parts = module.split(".")
    if module in PUBLIC or parts[1] not in LAYERS:
        return TOP
    return LAYERS.index(parts[1])


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every aotwatch module ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aotwatch"):
            found.update(
                f"{node.module}.{alias.name}"
                if (PACKAGE.parent / node.module.replace(".", "/") / alias.name).exists()
                or (PACKAGE.parent / f"{node.module.replace('.', '/')}/{alias.name}.py").exists()
                else node.module
                for alias in node.names
            )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aotwatch"))
    return found


def upward_imports() -> list[str]:
    """``importer -> imported`` for every import of a higher layer."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in sorted(imports(path)):
            if layer(imported) > layer(importer):
                found.append(f"{importer} -> {imported}")
    return found


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_nothing_but_an_entry_point_imports_one():
    importers = [
        f"{module_name(path)} -> {imported}"
        for path in PACKAGE.rglob("*.py")
        if module_name(path) not in PUBLIC
        for imported in imports(path)
        if imported in PUBLIC[1:]
    ]
    assert importers == []


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
