"""The codebase's shape: imports go one way between layers, and one place reads checkpoints.

    models  <-  core (deepfake_platform)  <-  orchestration (deepfake_platform.orchestration)
            <-  entry points (experiments/, serve/, benchmarks/)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"models": 0, "core": 1, "orchestration": 2, "entry": 3}
# Entry points may use each other's modules only this way: benchmarks measure the Serve app.
ENTRY_PACKAGES = ("serve", "experiments", "benchmarks")


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name of this project, None for a third-party module."""
    top = module.split(".")[0]
    if top == "models":
        return LAYERS["models"]
    if module.startswith("deepfake_platform.orchestration"):
        return LAYERS["orchestration"]
    if top == "deepfake_platform":
        return LAYERS["core"]
    if top in ENTRY_PACKAGES:
        return LAYERS["entry"]
    return None


def source_files() -> list[tuple[Path, str]]:
    files = []
    for folder in ("models", "deepfake_platform", "serve", "benchmarks", "experiments"):
        for path in sorted((REPO / folder).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            files.append((path, module))
    return files


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize(("path", "module"), source_files(), ids=lambda value: str(value))
def test_no_import_climbs_up_a_layer(path, module):
    own = layer_of(module)
    upward = [f"line {line}: {name}" for line, name in imported_modules(path)
              if (other := layer_of(name)) is not None and other > own]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_the_main_job_never_touches_sweep_code():
    script = REPO / "experiments" / "reproduce_baseline.py"
    names = [name for _, name in imported_modules(script)]
    assert not [name for name in names if "sweep" in name or "tune" in name], names


def test_checkpoints_are_read_in_one_place():
    calls = []
    for path, _ in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    keywords = {kw.arg: kw.value for kw in node.keywords}
                    safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value
                    calls.append((str(path.relative_to(REPO)), node.lineno, safe))
    assert [(path, safe) for path, _, safe in calls] == [("deepfake_platform/checkpoints.py", True)], calls


def test_the_core_imports_no_ray():
    """Ray belongs to orchestration: the core (training, prediction, data, metrics) runs and is tested without it."""
    found = []
    for path, module in source_files():
        if layer_of(module) == LAYERS["core"]:
            found += [f"{module} line {line}: {name}" for line, name in imported_modules(path)
                      if name == "ray" or name.startswith("ray.")]
    assert not found, found
