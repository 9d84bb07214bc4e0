"""The source layout keeps its shape (issue #10's measures), read from the code with ``ast``.

- no source file over 600 lines (the Cython kernels excepted), no function over 80
  lines of code (its docstring aside);
- no module imports a private (underscore) name of another of our modules;
- library modules never import a command-line module.

``KNOWN`` lists the places that do not meet a measure yet, each with the reason; remove
an entry when its reason is gone (a stale entry fails too).
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
CLI_MODULES = {"fastmlp.train", "fastmlp.cli", "fastmlp.search.cli", "fastmlp.search.__main__",
               "fastmlp.__main__", "fastmlp.plot", "torch_models.cli", "torch_models.train_mlp",
               "torch_models.train_convnet", "fastmlp.predict"}
LIBRARY_MODULES = {
    "fastmlp.modelfile", "fastmlp.predictor", "fastmlp.interop", "fastmlp.onnx_export",
    "fastmlp", "fastmlp._validation", "fastmlp.atomic", "fastmlp.checkpoint", "fastmlp.curves", "fastmlp.data", "fastmlp.data.cache",
    "fastmlp.data.dataset", "fastmlp.data.files", "fastmlp.data.idx", "fastmlp.data.preprocessing", "fastmlp.data.registry",
    "fastmlp.data.sources", "fastmlp._blas", "fastmlp.estimators",
    "fastmlp.estimators.base", "fastmlp.estimators.classifier", "fastmlp.estimators.docs", "fastmlp.estimators.network",
    "fastmlp.estimators.regressor", "fastmlp.estimators.batches", "fastmlp.estimators.inputs", "fastmlp.estimators.rates",
    "fastmlp.hyperparams", "fastmlp.loop", "fastmlp.mlp", "fastmlp.modules", "fastmlp.optim", "fastmlp.reference",
    "fastmlp.rundir", "fastmlp.runlog", "fastmlp.schedules", "fastmlp.training", "fastmlp.version", "fastmlp.search.space",
    "torch_models", "torch_models.batchnorm", "torch_models.checkpoint", "torch_models.convnet",
    "torch_models.devices", "torch_models.distributed", "torch_models.evaluation", "torch_models.hooks",
    "torch_models.mlp", "torch_models.optimizers", "torch_models.precision", "torch_models.rng",
    "torch_models.step_stats", "torch_models.trainer", "torch_models.transfer",
}
# The core's own private modules, which the core imports.
PACKAGE_PRIVATE = {"fastmlp._kernels", "fastmlp._validation", "fastmlp._blas", "fastmlp._openblas"}
KNOWN: dict[tuple[str, str], str] = {}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield path, ".".join(parts), ast.parse(path.read_text(encoding="utf-8"))


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


def _findings():
    found = {}
    for path, module, tree in _modules():
        where = str(path.relative_to(SRC))
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_FILE_LINES:
            found[("file", where)] = f"{len(lines)} lines"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node, lines) > MAX_FUNCTION_LINES:
                found[("function", f"{where}:{node.name}")] = f"{_code_lines(node, lines)} lines of code"
        for target, name in _imports(tree):
            ours = target.split(".")[0] in ("fastmlp", "torch_models")
            full = f"{target}.{name}" if name else target
            if ours and name and name.startswith("_") and not name.startswith("__") and full not in PACKAGE_PRIVATE:
                found[("private", f"{where}:{full}")] = "private name of another module"
            if module in LIBRARY_MODULES and (target in CLI_MODULES or full in CLI_MODULES):
                found[("cli", f"{where}:{full}")] = "a library module imports a command-line module"
    return found


def test_the_layout_measures_hold():
    found = _findings()
    new = {key: why for key, why in found.items() if key not in KNOWN}
    stale = sorted(key for key in KNOWN if key not in found)
    assert not new, f"new breaches of the layout measures: {new}"
    assert not stale, f"KNOWN entries that no longer apply (remove them): {stale}"


def test_the_cython_kernels_file_is_the_only_large_non_python_source():
    assert all(len(p.read_text().splitlines()) <= MAX_FILE_LINES or p.name == "_kernels.pyx"
               for p in SRC.rglob("*.pyx"))
