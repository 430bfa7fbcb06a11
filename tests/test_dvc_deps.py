"""dvc.yaml's code deps: each stage lists its script and every module of triage/ it imports,
directly or indirectly (imports inside functions count; `if TYPE_CHECKING:` ones do not),
so that a change of the library reruns exactly the stages whose code it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

PACKAGES = ("stages", "triage")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def module_file(name: str) -> Path | None:
    path = REPO / (name.replace(".", "/") + ".py")
    return path if path.is_file() else None


def imported_modules(path: Path) -> set[str]:
    """The modules of this project that a file imports (`from triage import x` is triage.x)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n)}
    return found


def code_of(module: str) -> set[str]:
    """The files of `module` and of everything it imports, transitively (repository paths)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(module_file(name))
    return {str(module_file(name).relative_to(REPO)) for name in seen}


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_are_the_code_it_runs(stage: str) -> None:
    command = STAGES[stage]["cmd"].split()
    assert command[:2] == ["python", "-m"] and command[2].startswith("stages.")
    listed = {dep for dep in STAGES[stage]["deps"] if str(dep).endswith(".py")}
    assert listed == code_of(command[2])
