"""The layout is the architecture: each part imports only the parts below it.

    spec -> compiler -> kernels;  data, compiler -> train;  train -> bench, search;  CLI on top

Read from the source (every ``import`` statement, also those inside functions), so a
lazy import that runs back up the tree is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Each part, and the nnspec parts it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "nnspec.version": set(),
    "nnspec.errors": set(),
    "nnspec.spec": {"nnspec.errors"},
    "nnspec.kernels": set(),
    "nnspec.compiler": {"nnspec.errors", "nnspec.spec", "nnspec.kernels"},
    "nnspec.data": {"nnspec.errors"},
    "nnspec.train": {"nnspec.errors", "nnspec.spec", "nnspec.compiler", "nnspec.kernels", "nnspec.data",
                     "nnspec.version"},
    "nnspec.bench": {"nnspec.errors", "nnspec.spec", "nnspec.compiler", "nnspec.kernels", "nnspec.data",
                     "nnspec.train", "nnspec.version"},
    "nnspec.search": {"nnspec.errors", "nnspec.spec", "nnspec.compiler", "nnspec.kernels", "nnspec.data",
                      "nnspec.train", "nnspec.version"},
    "nnspec.runner": {"nnspec.bench"},  # the 0.1 module paths: aliases only
}
#: Third-party packages a part may import besides the standard library (None: any).
THIRD_PARTY: dict[str, set[str] | None] = {
    "nnspec.spec": {"pydantic", "pydantic_core", "yaml"},  # the format: no torch
    "nnspec.errors": set(),
    "nnspec.version": set(),
    "nnspec.kernels": {"torch", "triton"},  # a leaf
}


def _modules() -> list[tuple[str, Path]]:
    found = [("nnspec.kernels" + ("" if p.stem == "__init__" else f".{p.stem}"), p)
             for p in sorted((REPO / "kernels").glob("*.py"))]  # fmt: skip
    for path in sorted((REPO / "nnspec").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _part(module: str) -> str | None:
    """The part a module belongs to (its longest prefix in ALLOWED), or None for the top (CLI, root)."""
    best = None
    for part in ALLOWED:
        if (module == part or module.startswith(part + ".")) and (best is None or len(part) > len(best)):
            best = part
    return best


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            # `from nnspec import x` imports the root package (and x maybe a subpackage).
            found += [(node.lineno, name)] if name != "nnspec" else \
                     [(node.lineno, f"nnspec.{alias.name}") for alias in node.names]  # fmt: skip
    return found


MODULES = _modules()


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down_the_tree(module: str, path: Path) -> None:
    part = _part(module)
    if part is None:
        return  # the CLI, `python -m nnspec` and the package root sit on top
    wrong = []
    for line, name in _imports(module, path):
        top = name.split(".")[0]
        if top == "nnspec":
            target = _part(name)
            if name == "nnspec" or target is None:
                wrong.append(f"{path.name}:{line}: {part} imports {name} (the package root or the CLI)")
            elif target != part and target not in ALLOWED[part]:
                wrong.append(f"{path.name}:{line}: {part} imports {name}")
        elif top not in sys.stdlib_module_names and THIRD_PARTY.get(part) is not None:
            if top not in THIRD_PARTY[part]:  # type: ignore[operator]
                wrong.append(f"{path.name}:{line}: {part} imports {top}")
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_an_import_back_up_the_tree(tmp_path: Path) -> None:
    """The check itself can fail: a data module that imports the trainer is refused."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from nnspec.train.loop import fit\n    import torch\n")
    with pytest.raises(AssertionError, match="nnspec.data imports nnspec.train.loop"):
        test_imports_point_down_the_tree("nnspec.data.bad", bad)
    bad.write_text("import torch\n")
    with pytest.raises(AssertionError, match="nnspec.spec imports torch"):
        test_imports_point_down_the_tree("nnspec.spec.bad", bad)


def test_every_module_says_what_it_holds() -> None:
    """Every file's first lines say what it holds: a module docstring."""
    missing = [str(path.relative_to(REPO)) for _, path in MODULES
               if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text())) is None]  # fmt: skip
    assert not missing, f"modules without a docstring: {missing}"


def test_nnspec_train_is_the_function_and_the_package() -> None:
    """``nnspec.train(spec, …)`` keeps working after ``nnspec.train.<module>`` was imported."""
    import nnspec
    import nnspec.train.loop  # binds the subpackage over the parent's attribute
    from nnspec.train.trainer import train

    assert callable(nnspec.train)
    assert nnspec.train.train is train
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'spec'"):
        nnspec.train()


@pytest.mark.parametrize("old,new", [("nnspec.runner.study", "nnspec.bench.study"),
                                     ("nnspec.runner.overhead", "nnspec.bench.overhead")])  # fmt: skip
def test_old_entry_points_still_run_and_say_where_they_moved(old: str, new: str) -> None:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{old} is now {new}" in proc.stderr
    assert "usage:" in proc.stdout


def test_the_readme_layout_table_names_every_part() -> None:
    """The README's layout table matches the tree: every package folder has its row."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Layout"):].split("\n## ")[0]
    folders = ["kernels/"] + [f"nnspec/{p.name}/" for p in sorted((REPO / "nnspec").iterdir())
                              if (p / "__init__.py").is_file()]  # fmt: skip
    missing = [folder for folder in folders if f"| `{folder}` |" not in table]
    assert not missing, f"README's layout table has no row for {missing}"
