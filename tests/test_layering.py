"""Import layering of `app/`: the few edges that would put a job in the wrong layer, checked on the source.

The graph comes from `ast`, not from importing anything, so it sees every import: module level, deferred ones
inside functions, and those under `if TYPE_CHECKING:` (a type-only edge still says which layer knows which).
The rule about torch and Ultralytics is about what the appliance loads, so it counts only what runs when a
module is imported. Targets are edges that show a misplaced job, not a cycle-free graph.

Patterns name a module and everything under it: `app.cli` is `app.cli` and `app.cli.run`, not `app.cli_types`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the module imported (a submodule when `from package import submodule`)
    line: int
    at_import: bool  # runs when the importer is imported: not in a function, not under TYPE_CHECKING


@dataclass(frozen=True)
class Contract:
    importers: tuple[str, ...]  # the modules the rule applies to
    forbidden: tuple[str, ...]  # what they must not import
    allowed: tuple[str, ...]  # importers exempt from the rule
    why: str
    at_import_only: bool = False  # only imports that run when the importer is imported count


RUNTIME_EXEMPT = ("app.export", "app.bench", "app.engine", "app.cli", "app.__main__")  # build tooling and CLI

CONTRACTS = {
    "backends-are-the-bottom-runtime-layer": Contract(
        ("app.backends",),
        ("app.engine", "app.inference"),
        (),
        "backends run models; the detector (app.inference) and the engine build tooling (app.engine) sit above "
        "them. Shared code below both goes to a leaf module (app.letterbox, app.backends.engine_cache)",
    ),
    "nothing-below-imports-the-command-line": Contract(
        ("app",),
        ("app.cli",),
        ("app.cli", "app.__main__"),
        "the command line is the top: domain modules expose functions and errors, the CLI parses and reports",
    ),
    "web-does-not-reach-into-the-live-pipeline": Contract(
        ("app.web",),
        ("app.pipeline.live", "app.supervisor"),
        (),
        "the HTTP side is a pipeline service: it uses the service contract, records, stats and errors from "
        "app.pipeline, not the composition or the worker supervision",
    ),
    "no-torch-or-ultralytics-on-the-runtime-path": Contract(
        ("app",),
        ("torch", "ultralytics"),
        RUNTIME_EXEMPT,
        "the appliance runs ONNX Runtime or TensorRT only; torch and Ultralytics are for export and tooling, "
        "imported inside the functions that need them",
        at_import_only=True,
    ),
}


def _within(module: str, pattern: str) -> bool:
    return module == pattern or module.startswith(pattern + ".")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.imports: list[Import] = []
        self._deferred = 0  # depth inside function bodies
        self._type_checking = 0  # depth inside `if TYPE_CHECKING:`

    def _add(self, target: str, node: ast.stmt) -> None:
        at_import = self._deferred == 0 and self._type_checking == 0
        self.imports.append(Import(self.module, target, node.lineno, at_import))

    def _visit_function(self, node: ast.AST) -> None:
        self._deferred += 1
        self.generic_visit(node)
        self._deferred -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._type_checking += 1
        for stmt in node.body:
            self.visit(stmt)
        self._type_checking -= 1
        for stmt in node.orelse:  # `else:` runs at import
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.known else base, node)


def import_graph(root: Path) -> list[Import]:
    """Every import statement in the package at `root`, resolved to absolute module names."""
    files = sorted(root.rglob("*.py"))
    known = {_module_name(f, root) for f in files}
    imports: list[Import] = []
    for f in files:
        collector = _ImportCollector(_module_name(f, root), f.name == "__init__.py", known)
        collector.visit(ast.parse(f.read_text(encoding="utf-8"), str(f)))
        imports += collector.imports
    return imports


def violations(contract: Contract, imports: list[Import]) -> list[str]:
    return sorted(
        {
            f"{i.importer} -> {i.target} (line {i.line})"
            for i in imports
            if any(_within(i.importer, p) for p in contract.importers)
            and not any(_within(i.importer, p) for p in contract.allowed)
            and any(_within(i.target, p) for p in contract.forbidden)
            and (i.at_import or not contract.at_import_only)
        }
    )


@pytest.fixture(scope="module")
def app_imports() -> list[Import]:
    return import_graph(APP)


@pytest.mark.parametrize("name", CONTRACTS)
def test_layering_contract_holds(name: str, app_imports: list[Import]) -> None:
    contract = CONTRACTS[name]
    found = violations(contract, app_imports)
    assert not found, f"{name}: {contract.why}. Offending imports:\n  " + "\n  ".join(found)


def test_the_graph_sees_deferred_type_only_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The scanner itself, on a small package: a contract cannot pass because an import went unseen."""
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "low" / "leaf.py").write_text("import numpy as np\n")
    (pkg / "high.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from pkg.low import leaf, CONSTANT\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
        "else:\n"
        "    import json\n"
        "class A:\n"
        "    import os.path\n"
        "def f():\n"
        "    from .low.leaf import g\n"
        "    import ultralytics\n"
    )
    got = {(i.importer, i.target, i.at_import) for i in import_graph(pkg)}
    assert got == {
        ("pkg.low", "pkg.low.leaf", True),
        ("pkg.low.leaf", "numpy", True),
        ("pkg.high", "__future__", True),
        ("pkg.high", "typing", True),
        ("pkg.high", "pkg.low.leaf", True),
        ("pkg.high", "pkg.low", True),
        ("pkg.high", "torch", False),
        ("pkg.high", "json", True),
        ("pkg.high", "os.path", True),
        ("pkg.high", "pkg.low.leaf", False),
        ("pkg.high", "ultralytics", False),
    }
    rule = Contract(("pkg.high",), ("torch", "ultralytics"), (), "test", at_import_only=True)
    assert violations(rule, import_graph(pkg)) == []
    rule = Contract(("pkg",), ("torch", "ultralytics"), ("pkg.low",), "test")
    assert violations(rule, import_graph(pkg)) == ["pkg.high -> torch (line 5)", "pkg.high -> ultralytics (line 12)"]
