"""The source layout keeps its shape (issues #10 and #18's measures), read from the code with ``ast``.

- no source file over 600 lines (the Cython kernels excepted), no function over 80
  lines of code (its docstring aside), no class over 250 lines (``end_lineno - lineno + 1``);
- no module imports a private (underscore) name of another of our modules;
- library modules never import a command-line module, nor ``argparse`` at all (so
  no ``argparse.Namespace`` travels through the library: a run's settings reach it typed).

Every module under ``src/`` is either a command-line module (:data:`CLI_MODULES`:
it parses a command line or is a ``python -m`` entry point: the trainers' and the
search's command lines and what they share, ``fastmlp.predict``, ``fastmlp.plot``,
the ``__main__`` modules) or a library module (:data:`LIBRARY_MODULES`: everything
else of fastmlp and torch_models, the core's private modules and the search's own
modules included: ``search/workers``, ``study``, ``reports``, ``final``, ``adapter``,
``storage``, ``journal``, ``signals``... are library code that ``search/cli`` drives).
A module in neither set, or in both, fails, so a new module is classified when it is added.

``KNOWN`` lists the places that do not meet a measure yet, each with the reason, one
entry a line; remove an entry when its reason is gone (a stale entry fails too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250
CLI_MODULES = {"fastmlp.train", "fastmlp.cli", "fastmlp.search.cli", "fastmlp.search.__main__",
               "fastmlp.__main__", "fastmlp.plot", "torch_models.cli", "torch_models.train_mlp",
               "torch_models.train_convnet", "fastmlp.predict"}
LIBRARY_MODULES = {
    "fastmlp", "fastmlp._blas", "fastmlp._openblas", "fastmlp._validation", "fastmlp.atomic", "fastmlp.checkpoint", "fastmlp.config", "fastmlp.run_config",
    "fastmlp.curves", "fastmlp.exits", "fastmlp.hyperparams", "fastmlp.images", "fastmlp.interop", "fastmlp.loop", "fastmlp.mlp",
    "fastmlp.fused", "fastmlp.heads", "fastmlp.modelfile", "fastmlp.modules", "fastmlp.onnx_export", "fastmlp.optim", "fastmlp.predictor", "fastmlp.reading",
    "fastmlp.reference", "fastmlp.rundir", "fastmlp.runlog", "fastmlp.schedules", "fastmlp.training",
    "fastmlp.version",
    "fastmlp.data", "fastmlp.data.cache", "fastmlp.data.dataset", "fastmlp.data.examples", "fastmlp.data.files",
    "fastmlp.data.idx", "fastmlp.data.order", "fastmlp.data.preprocessing", "fastmlp.data.registry",
    "fastmlp.data.sources",
    "fastmlp.estimators", "fastmlp.estimators.base", "fastmlp.estimators.classifier", "fastmlp.estimators.docs",
    "fastmlp.estimators.network", "fastmlp.estimators.regressor", "fastmlp.estimators.batches",
    "fastmlp.estimators.inputs", "fastmlp.estimators.rates",
    "fastmlp.search", "fastmlp.search.adapter", "fastmlp.search.errors",
    "fastmlp.search.final", "fastmlp.search.folders", "fastmlp.search.journal", "fastmlp.search.processes", "fastmlp.search.reports", "fastmlp.search.signals",
    "fastmlp.search.settings", "fastmlp.search.space", "fastmlp.search.storage", "fastmlp.search.study", "fastmlp.search.workers",
    "torch_models", "torch_models.batchnorm", "torch_models.checkpoint", "torch_models.convnet",
    "torch_models.devices", "torch_models.distributed", "torch_models.evaluation", "torch_models.hooks",
    "torch_models.mlp", "torch_models.optimizers", "torch_models.precision", "torch_models.rng",
    "torch_models.step_stats", "torch_models.trainer", "torch_models.transfer",
    "torch_models.config", "torch_models.mlp_run", "torch_models.convnet_run",
}
# The core's own private modules, which the core imports.
PACKAGE_PRIVATE = {"fastmlp._kernels", "fastmlp._validation", "fastmlp._blas", "fastmlp._openblas"}
KNOWN: dict[tuple[str, str], str] = {
}


def _modules():
    """(path relative to src/, module name, source text) of every Python module under src/."""
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield str(path.relative_to(SRC)), ".".join(parts), path.read_text(encoding="utf-8")


def _code_lines(function: ast.AST, lines: list[str]) -> int:
    body = function.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        if len(body) == 1:
            return 0
        first = body[1]
    return sum(1 for line in lines[first.lineno - 1:function.end_lineno]
               if line.strip() and not line.strip().startswith("#"))


def _imports(tree: ast.AST):
    """(imported module, imported name or None) of every import statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name


def _size_findings(where: str, tree: ast.AST, lines: list[str]) -> dict[tuple[str, str], str]:
    found = {}
    if len(lines) > MAX_FILE_LINES:
        found[("file", where)] = f"{len(lines)} lines"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node, lines) > MAX_FUNCTION_LINES:
            found[("function", f"{where}:{node.name}")] = f"{_code_lines(node, lines)} lines of code"
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
            found[("class", f"{where}:{node.name}")] = f"{node.end_lineno - node.lineno + 1} lines"
    return found


def _import_findings(where: str, module: str, tree: ast.AST) -> dict[tuple[str, str], str]:
    found = {}
    for target, name in _imports(tree):
        ours = target.split(".")[0] in ("fastmlp", "torch_models")
        full = f"{target}.{name}" if name else target
        if ours and name and name.startswith("_") and not name.startswith("__") and full not in PACKAGE_PRIVATE:
            found[("private", f"{where}:{full}")] = "private name of another module"
        if module in LIBRARY_MODULES and (target in CLI_MODULES or full in CLI_MODULES):
            found[("cli", f"{where}:{full}")] = "a library module imports a command-line module"
        if module in LIBRARY_MODULES and target.split(".")[0] == "argparse":
            found[("argparse", where)] = "a library module imports argparse"
    return found


def check_module(where: str, module: str, text: str) -> dict[tuple[str, str], str]:
    """The breaches of the measures in one module's source: {(kind, place): what}."""
    tree = ast.parse(text)
    return {**_size_findings(where, tree, text.splitlines()), **_import_findings(where, module, tree)}


def classification_problems(modules: set[str]) -> dict[str, list[str]]:
    """Modules in neither :data:`CLI_MODULES` nor :data:`LIBRARY_MODULES`, in both, or listed but absent."""
    listed = CLI_MODULES | LIBRARY_MODULES
    return {"unclassified": sorted(modules - listed), "in both sets": sorted(CLI_MODULES & LIBRARY_MODULES),
            "listed but absent": sorted(listed - modules)}


def _findings():
    found = {}
    for where, module, text in _modules():
        found.update(check_module(where, module, text))
    return found


def test_the_layout_measures_hold():
    found = _findings()
    new = {key: why for key, why in found.items() if key not in KNOWN}
    stale = sorted(key for key in KNOWN if key not in found)
    assert not new, f"new breaches of the layout measures: {new}"
    assert not stale, f"KNOWN entries that no longer apply (remove them): {stale}"


def test_every_module_is_either_a_library_or_a_command_line_module():
    problems = classification_problems({module for _, module, _ in _modules()})
    assert problems == {"unclassified": [], "in both sets": [], "listed but absent": []}, problems


def test_the_classification_check_finds_a_new_module():
    modules = {module for _, module, _ in _modules()}
    assert classification_problems(modules | {"fastmlp.brand_new"})["unclassified"] == ["fastmlp.brand_new"]
    gone = sorted(LIBRARY_MODULES)[0]
    assert classification_problems(modules - {gone})["listed but absent"] == [gone]


def _class_of(lines: int) -> str:
    """Source of one class spanning ``lines`` lines (its ``class`` line included)."""
    return "class Big:\n" + "    x = 1\n" * (lines - 1)


def test_a_class_over_250_lines_is_found():
    assert check_module("fastmlp/x.py", "fastmlp.optim", _class_of(251)) == {("class", "fastmlp/x.py:Big"): "251 lines"}
    assert check_module("fastmlp/x.py", "fastmlp.optim", _class_of(250)) == {}
    nested = "def f():\n    " + _class_of(260).replace("\n", "\n    ")
    assert ("class", "fastmlp/x.py:Big") in check_module("fastmlp/x.py", "fastmlp.optim", nested)


@pytest.mark.parametrize("source", ["import argparse\n", "from argparse import Namespace\n",
                                    "def f():\n    import argparse.foo\n",
                                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import argparse\n"])
def test_argparse_in_a_library_module_is_found(source):
    assert check_module("fastmlp/training.py", "fastmlp.training", source) == {
        ("argparse", "fastmlp/training.py"): "a library module imports argparse"}
    assert check_module("fastmlp/cli.py", "fastmlp.cli", source) == {}  # a command line may


def test_the_cython_kernels_file_is_the_only_large_non_python_source():
    assert all(len(p.read_text().splitlines()) <= MAX_FILE_LINES or p.name == "_kernels.pyx"
               for p in SRC.rglob("*.pyx"))
