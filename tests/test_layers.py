"""The package's layers only look down: no module imports from a layer above its own."""

import ast
from pathlib import Path

import neurostorm

PACKAGE = Path(neurostorm.__file__).parent
# bottom to top; a module may import its own layer and those below it
LAYERS = [("neurostorm.version", "neurostorm.errors"), ("neurostorm.data",), ("neurostorm.models",),
          ("neurostorm.evaluation",), ("neurostorm.train",), ("neurostorm.tasks",),
          ("neurostorm.workflows", "neurostorm.sklearn", "neurostorm.brainmarks"),
          ("neurostorm.cli", "neurostorm.__main__", "neurostorm")]  # the package's own names: the front door


def layer_of(module: str) -> int:
    found = [i for i, names in enumerate(LAYERS) for name in names
             if module == name or (name != "neurostorm" and module.startswith(name + "."))]
    assert found, f"{module} belongs to no layer: add it to LAYERS"
    return found[0]


def imported_modules(path: Path) -> set[str]:
    """Every neurostorm module ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neurostorm"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("neurostorm"))
    return found


def test_every_import_looks_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for imported in imported_modules(path):
            if layer_of(imported) > layer_of(module):
                upward.append(f"{module} → {imported}")
    assert upward == []
