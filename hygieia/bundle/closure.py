"""The ``hygieia`` modules a program imports, so that each bundle folder carries only those.

An AST walk over every ``import hygieia...`` / ``from hygieia... import ...`` statement of the entry
point and, in turn, of each module it reaches (imports inside functions included: they may run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from hygieia.errors import HygieiaError

PACKAGE = "hygieia"


def _module_file(root: Path, dotted: str) -> Path | None:
    """The file of ``dotted`` (a module or a package) under ``root``, or None."""
    base = root.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_names(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise HygieiaError(f"{path}: not valid Python ({err})") from err
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # may be submodules
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_closure(entry_point: Path, root: Path) -> list[Path]:
    """Every file of the ``hygieia`` package under ``root`` that ``entry_point`` needs, with the
    ``__init__.py`` of each package on the way, sorted."""
    needed: set[Path] = set()
    pending = [entry_point]
    while pending:
        for dotted in _imported_names(pending.pop()):
            parts = dotted.split(".")
            for depth in range(1, len(parts) + 1):
                path = _module_file(root, ".".join(parts[:depth]))
                if path is not None and path not in needed:
                    needed.add(path)
                    pending.append(path)
    return sorted(needed)
