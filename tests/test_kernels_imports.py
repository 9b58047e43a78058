"""vssm.kernels imports in layers, without cycles: every import at module level and pointing down a declared layer
order (read from the sources with ``ast``), and every module importable alone in a fresh process, loading exactly
the modules it declares."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")

# lowest first; a module may import only modules of lower layers
LAYERS = [
    ("reference", "step_sizes", "triton_ssd"),  # leaves: torch / triton only
    ("chunked", "ssd_reference", "triton_scan"),  # PyTorch backends and Triton kernels
    ("selective_scan", "ssd"),  # dispatchers: backend tables and custom ops
    ("scan2d",),  # the fused 2D op, over the dispatcher
    ("__init__",),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
OUTSIDE = {"scans"}  # sibling packages of vssm that kernels may import (they import nothing of kernels)


def parse(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def package_imports(tree, package):
    """``(names, nested)``: the vssm modules that a module of ``vssm.<package>`` imports (``kernels.x``, or the
    sibling package, e.g. ``scans``) and the line numbers of imports inside a function or class body."""
    names, nested = set(), []

    def add(parts):  # a module path inside vssm
        if parts and parts[0]:
            names.add(".".join(parts[:2]) if parts[0] == package and len(parts) > 1 else parts[0])

    def visit(node, in_body):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_body:
                nested.append(child.lineno)
            if isinstance(child, ast.ImportFrom) and child.level:
                base = [package] if child.level == 1 else []
                module = (child.module or "").split(".") if child.module else []
                for alias in ([None] if module else child.names):
                    add(base + (module or [alias.name]))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("vssm."):
                for alias in child.names:
                    add(child.module.split(".")[1:] + [alias.name])
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("vssm."):
                        add(alias.name.split(".")[1:])
            visit(child, in_body or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                       ast.Lambda)))

    visit(tree, False)
    return names, nested


def kernel_graph():
    graph, nested = {}, {}
    for file in sorted(os.listdir(KERNELS)):
        if file.endswith(".py"):
            name = file[:-3]
            graph[name], nested[name] = package_imports(parse(os.path.join(KERNELS, file)), "kernels")
    return graph, nested


def closure(graph, name):
    seen, todo = set(), [name]
    while todo:
        for dep in graph[todo.pop()]:
            if dep.startswith("kernels.") and dep[8:] not in seen:
                seen.add(dep[8:])
                todo.append(dep[8:])
    return seen


def test_imports_point_down_the_layers():
    graph, nested = kernel_graph()
    assert set(graph) == set(LAYER), "declare every module of kernels/ in LAYERS"
    for name, deps in graph.items():
        assert not nested[name], f"kernels/{name}.py imports inside a function or class (lines {nested[name]})"
        for dep in deps:
            if dep.startswith("kernels."):
                assert LAYER[dep[8:]] < LAYER[name], f"{name} (layer {LAYER[name]}) imports {dep} (not below)"
            else:
                assert dep in OUTSIDE, f"{name} imports vssm.{dep}"
    for name in graph:  # so no cycle either
        assert name not in closure(graph, name)


def test_outside_packages_do_not_import_kernels():
    for package in OUTSIDE:
        folder = os.path.join(ROOT, package)
        for file in sorted(os.listdir(folder)):
            if file.endswith(".py"):
                names, _ = package_imports(parse(os.path.join(folder, file)), package)
                assert not any(n.startswith("kernels.") or n == "kernels" for n in names), (package, file)


def test_the_checker_sees_a_cycle_and_a_hidden_import():
    """The parser finds a back edge and a function-local import of the kind the layering forbids."""
    source = "from .selective_scan import x\n\ndef f():\n    from .scan2d import g\n    return g\n"
    names, nested = package_imports(ast.parse(source), "kernels")
    assert names == {"kernels.selective_scan", "kernels.scan2d"} and nested == [4]
    graph = {"a": {"kernels.b"}, "b": {"kernels.a"}}
    assert "a" in closure(graph, "a")


ALONE = """
import importlib, importlib.util, json, sys, types
for name in ("vssm", "vssm.kernels"):  # the packages without their __init__: only the modules' own imports run
    spec = importlib.util.find_spec(name)
    module = types.ModuleType(name)
    module.__path__, module.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules[name] = module
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.startswith("vssm.kernels.")]:
        del sys.modules[loaded]
    if name == "__init__":
        del sys.modules["vssm.kernels"]
    importlib.import_module("vssm.kernels" + ("" if name == "__init__" else "." + name))
    print(json.dumps(sorted(m[13:] for m in sys.modules if m.startswith("vssm.kernels."))))
"""


def test_each_module_imports_alone_in_a_fresh_process():
    """Each module (kernels/__init__.py included) alone, without the package's __init__: it imports, and it loads
    exactly the kernel modules its imports declare (triton is installed where the suite runs). A module that
    registers custom ops gets an interpreter of its own; the others share one, each imported after every kernel
    module was dropped from ``sys.modules``. The interpreters run side by side."""
    pytest.importorskip("triton")
    graph, _ = kernel_graph()
    registers = {name for name in graph if "torch.library" in open(os.path.join(KERNELS, f"{name}.py")).read()}
    own = sorted(n for n in graph if n == "__init__" or registers & (closure(graph, n) | {n}))
    runs = [[n for n in sorted(graph) if n not in own]] + [[n] for n in own]
    procs = [(run, subprocess.Popen([sys.executable, "-c", ALONE, *run], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT)) for run in runs]
    for run, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"import of {run} alone failed:\n{err[-3000:]}"
        for name, line in zip(run, out.strip().splitlines(), strict=True):
            expected = closure(graph, name) | ({name} if name != "__init__" else set())
            assert set(json.loads(line)) == expected, name
