"""The import rules of docs/architecture.md, enforced: every dbtk import of every module, read with ``ast``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dbtk"
DOC = REPO / "docs" / "architecture.md"


def layer_table() -> dict[str, tuple[list[str], set[str]]]:
    """layer -> (module paths or folders, allowed layers), parsed from the marked table in docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- layers:", 1)[1].split("<!-- /layers -->", 1)[0]
    table: dict[str, tuple[list[str], set[str]]] = {}
    for row in block.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        paths = [p for p in re.findall(r"`(dbtk/[^`]*)`", cells[1])]
        table[cells[0]] = (paths, {a.strip() for a in cells[2].split(",")})
    return table


def layer_of(path: Path, table: dict[str, tuple[list[str], set[str]]]) -> str | None:
    relative = path.relative_to(REPO).as_posix()
    for layer, (paths, _) in table.items():
        for owned in paths:
            if relative == owned or (owned.endswith("/") and relative.startswith(owned)):
                return layer
    return None


def module_path(module: str) -> Path | None:
    """The file that defines dbtk module ``module`` (a package's __init__.py)."""
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def dbtk_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a dbtk module, wherever it appears in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "dbtk"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "dbtk":
            # `from dbtk import recipe` imports dbtk.recipe; `from dbtk.x import name` imports dbtk.x
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if module_path(sub) else node.module))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    table = layer_table()
    assert {"core", "io", "data", "models", "infer", "engine", "cli"} <= set(table)
    orphans = [p.relative_to(REPO).as_posix() for p in MODULES if layer_of(p, table) is None]
    assert not orphans, f"modules missing from the layer table in docs/architecture.md: {orphans}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_imports_follow_the_layer_table(path: Path) -> None:
    table = layer_table()
    layer = layer_of(path, table)
    assert layer is not None
    allowed = table[layer][1]
    violations = []
    for line, module in dbtk_imports(path):
        target = module_path(module)
        if target is None:
            violations.append(f"line {line}: {module} does not exist")
            continue
        target_layer = layer_of(target, table)
        if target_layer is not None and target_layer != layer and target_layer not in allowed:
            violations.append(f"line {line}: {layer} imports {module} ({target_layer})")
    assert not violations, f"{path.relative_to(REPO)}: " + "; ".join(violations)


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    """The test above would fail for inference importing the engine (the checker is not vacuous)."""
    table = layer_table()
    infer_file = PACKAGE / "infer" / "detector.py"
    engine_file = module_path("dbtk.engine.trainer")
    assert engine_file is not None
    assert layer_of(infer_file, table) == "infer" and layer_of(engine_file, table) == "engine"
    assert "engine" not in table["infer"][1]
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from dbtk.engine.trainer import Trainer\n    from dbtk import recipe\n")
    assert dbtk_imports(fake) == [(2, "dbtk.engine.trainer"), (3, "dbtk.recipe")]
