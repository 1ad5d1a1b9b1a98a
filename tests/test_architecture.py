"""The import direction of docs/architecture.md, checked on the source: data flows one way and nothing below the engine
imports it.

Each module of ``overflow_core`` belongs to a layer (the longest matching prefix in ``LAYERS``); a module may import
modules of its own layer or of lower ones, never higher. Imports under ``if TYPE_CHECKING:`` are annotations only and
are not counted. A new module must be placed in ``LAYERS`` (and in docs/architecture.md) before this test passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "overflow_core"

# prefix -> layer; the longest matching prefix wins. Keep in step with docs/architecture.md.
LAYERS: dict[str, int] = {
    "overflow_core.errors": 0,
    "overflow_core.memory": 0,
    "overflow_core.sampling": 0,
    "overflow_core.types": 1,
    "overflow_core.prompting": 1,
    "overflow_core.backends": 1,
    "overflow_core.config": 2,
    "overflow_core.chunking": 2,
    "overflow_core.scoring": 2,
    "overflow_core.state_cache": 2,
    "overflow_core.prefill": 3,
    "overflow_core.decode": 3,
    "overflow_core.reference": 3,
    "overflow_core.selection": 3,
    "overflow_core.answering": 4,
    "overflow_core.index": 5,
    "overflow_core.loading": 5,
    "overflow_core.presets": 5,
    "overflow_core.engine": 6,
    # applications of the engine: they may import anything below them, nothing imports them from below
    "overflow_core.cli": 7,
    "overflow_core.demo": 7,
    "overflow_core.distributed": 7,  # the only place that imports ray (the [ray] extra)
    "overflow_core.bench": 7,
    "overflow_core.longbench": 7,
    "overflow_core.testing": 7,
    "overflow_core.synthetic": 7,
    "overflow_core.__main__": 7,
    "overflow_core": 8,  # the package's __init__: the public API, re-exports from every layer
}
FRAMEWORKS = ("langchain", "langchain_core", "llama_index", "training", "ray", "langchain_overflow")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import executed at run time (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            for alias in node.names:  # `from overflow_core import scoring` imports the module overflow_core.scoring
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    out.append((node.lineno, candidate))
    return out


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "models" not in p.relative_to(PACKAGE).parts)


def test_every_module_has_a_layer() -> None:
    missing = [module_name(p) for p in SOURCES if layer(module_name(p)) is None]
    assert not missing, f"place these modules in LAYERS and docs/architecture.md: {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_one_way(path: Path) -> None:
    me = module_name(path)
    mine = layer(me)
    assert mine is not None
    upward = []
    for line, target in runtime_imports(path):
        if target.split(".")[0] in FRAMEWORKS and not (
            target.split(".")[0] == "ray" and (me + ".").startswith("overflow_core.distributed.")
        ):
            upward.append(f"line {line}: {target} (overflow_core never imports a framework or the training recipe)")
            continue
        if not target.startswith("overflow_core"):
            continue
        theirs = layer(target)
        if theirs is not None and theirs > mine and not me.startswith(target + "."):
            upward.append(f"line {line}: {target} (layer {theirs}) from layer {mine}")
    assert not upward, f"{me} imports upward, against docs/architecture.md: " + "; ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an engine import below the engine, even inside a function, is found; one under
    TYPE_CHECKING is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from overflow_core.engine import OPRM\n    return OPRM\n")
    ok = tmp_path / "ok.py"
    ok.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from overflow_core.engine import OPRM\n")
    assert (2, "overflow_core.engine") in runtime_imports(bad)
    assert not [t for _, t in runtime_imports(ok) if t.startswith("overflow_core")]
    assert layer("overflow_core.engine") > layer("overflow_core.index.state_index")  # type: ignore[operator]


def test_the_wheel_holds_the_library_not_the_recipe() -> None:
    """``pip install .`` installs what pyproject's package discovery finds: overflow_core only, never training/."""
    import tomllib
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert packages and all(p == "overflow_core" or p.startswith("overflow_core.") for p in packages), packages
    assert (ROOT / "training" / "train.py").exists(), "the recipe lives beside the library"
