"""The four distributions follow LlamaIndex's convention (``llama-index-<kind>-overflow`` shipping only the
``llama_index.<kind>.overflow`` leaf of the namespace packages, with ``[tool.llamahub]`` metadata), and each one imports
with nothing but its declared dependencies installed."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import tomllib

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parents[1]
DISTS = sorted(p.parent for p in HERE.glob("llama-index-*-overflow/pyproject.toml"))
OURS = {p.name for p in DISTS}


def project(dist: Path) -> dict:
    return tomllib.loads((dist / "pyproject.toml").read_text(encoding="utf-8"))


def kind(dist: Path) -> str:
    return dist.name.removeprefix("llama-index-").removesuffix("-overflow").replace("-", "_")


def siblings(dist: Path) -> set[str]:
    """Our distributions ``dist`` depends on, directly or through another of ours."""
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project(dist)["project"]["dependencies"]}
    direct = names & OURS
    return direct | {s for d in direct for s in siblings(HERE / d)}


def test_four_distributions_by_the_convention() -> None:
    assert [d.name for d in DISTS] == [
        "llama-index-llms-overflow",
        "llama-index-postprocessor-overflow",
        "llama-index-query-engine-overflow",
        "llama-index-retrievers-overflow",
    ]
    for dist in DISTS:
        meta = project(dist)
        assert meta["project"]["name"] == dist.name
        assert meta["tool"]["llamahub"]["import_path"] == f"llama_index.{kind(dist)}.overflow"
        module = importlib.import_module(meta["tool"]["llamahub"]["import_path"])
        for cls in meta["tool"]["llamahub"]["class_authors"]:
            assert cls in module.__all__, f"{dist.name}: [tool.llamahub.class_authors] names {cls}, not exported"
        assert meta["tool"]["setuptools"]["packages"]["find"]["include"] == [f"llama_index.{kind(dist)}.overflow*"]
        shipped = list((dist / "llama_index").rglob("__init__.py"))
        assert {p.parent.relative_to(dist).as_posix() for p in shipped} == {f"llama_index/{kind(dist)}/overflow"}, (
            "llama_index and llama_index.<kind> must stay namespace packages (no __init__.py)"
        )
        deps = meta["project"]["dependencies"]
        assert any(d.startswith("overflow-core") for d in deps) and any(d.startswith("llama-index-core") for d in deps)
        assert (dist / "README.md").exists()


def test_each_distribution_imports_only_what_it_declares() -> None:
    """Every module imports only the standard library, third-party packages, ``overflow_core``, ``llama_index.core``
    and the ``llama_index.<kind>.overflow`` leaves of its own distribution and the ones it declares. (Checked once by
    hand too: each wheel from ``pip wheel --no-deps`` imports under ``python -S`` with only its dependencies.)"""
    for dist in DISTS:
        allowed = {f"llama_index.{kind(HERE / name)}.overflow" for name in (dist.name, *siblings(dist))}
        for path in (dist / "llama_index").rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    if name.startswith("llama_index.") and not name.startswith("llama_index.core"):
                        leaf = ".".join(name.split(".")[:3])
                        assert leaf in allowed, f"{path.relative_to(HERE)} imports {name}, not declared by {dist.name}"


@pytest.mark.parametrize("dist", DISTS, ids=[d.name for d in DISTS])
def test_the_install_command_installs_every_distribution(dist: Path) -> None:
    for page in (ROOT / "README.md", ROOT / ".ci" / "run"):
        assert f"-e integrations/llama_index/{dist.name}" in page.read_text(encoding="utf-8"), page
