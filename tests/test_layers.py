"""The package's folders are layers (docs/architecture.md): a module imports only from its own
folder and from folders below it. Checked from the imports themselves, so the picture cannot
drift."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cappuccino_core"

# Bottom to top; folders of one rank are siblings and may not import each other.
LAYERS = {"common": 0, "storage": 1, "broker": 2, "data": 3, "sample_data": 3, "rl": 4,
          "artifacts": 5, "training": 6, "ensemble": 6, "trading": 7, "operations": 8,
          "cli": 9, "__init__": 9}


def folder_of(module: str) -> str:
    """'cappuccino_core.rl.env' -> 'rl'; 'cappuccino_core.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, package_dir: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of the package in one file."""
    module = ".".join(path.relative_to(package_dir.parent).with_suffix("").parts)
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + [node.module] if node.module else base)
            if node.module is None:
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cappuccino_core"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.startswith("cappuccino_core")]
    return found


def upward_imports(package: Path = PACKAGE) -> list[str]:
    wrong = []
    for path in sorted(package.rglob("*.py")):
        source = folder_of(".".join(path.relative_to(package.parent).with_suffix("").parts))
        for line, target in imports_of(path, package):
            dest = folder_of(target)
            if dest == source or target in ("cappuccino_core", "cappuccino_core.__version__"):
                continue  # the package root holds only the version
            if dest not in LAYERS or LAYERS[dest] >= LAYERS[source]:
                wrong.append(f"{path.relative_to(package.parent)}:{line} {source} -> {target}")
    return wrong


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | modules <= set(LAYERS), sorted((folders | modules) - set(LAYERS))


def test_no_import_runs_back_up():
    assert upward_imports() == []


def test_no_module_name_is_used_twice():
    names = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"]
    assert sorted({n for n in names if names.count(n) > 1}) == []


@pytest.mark.parametrize("low, high", [("storage", "trading"), ("common", "storage"),
                                       ("training", "ensemble")])
def test_the_check_fails_on_an_import_that_runs_up(tmp_path, low, high):
    """A copy of the package with one lower module importing a higher folder is refused."""
    import shutil
    copy = tmp_path / "cappuccino_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.gz"))
    victim = next((copy / low).glob("[!_]*.py"))
    victim.write_text(victim.read_text() + f"\nfrom ..{high} import __name__ as _up\n")
    wrong = upward_imports(copy)
    assert len(wrong) == 1 and f"{low} -> cappuccino_core.{high}" in wrong[0]
