"""The house's structure: the import graph of pass_jax, train and infer has no circle, the
library never imports the programs, sharding is a leaf, and nothing is imported inside a
function except optional dependencies (PyTorch for the transformers baselines, matplotlib for
plots)."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pass_jax", "train", "infer")
OPTIONAL = {"torch", "matplotlib"}  # imported where used: a run may not need them


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).glob("*.py")):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            out[name] = path
    return out


MODULES = _modules()


def _imported(node: ast.AST, module: str) -> list[str]:
    """Absolute names an import statement brings in (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parent = module.rsplit(".", node.level)[0] if "." in module else module
        base = f"{parent}.{base}" if base else parent
    names = [f"{base}.{a.name}" for a in node.names]
    return [n if n in MODULES else base for n in names]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(d for d in _imported(node, name) if d in MODULES and d != name)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_circle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_library_imports_no_program_and_sharding_is_a_leaf():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("pass_jax"):
            assert not {d for d in deps if d.split(".")[0] in ("train", "infer")}, name
    assert graph["pass_jax.sharding"] <= {"pass_jax"}, graph["pass_jax.sharding"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_inside_a_function_except_optional_dependencies(name):
    tree = ast.parse(MODULES[name].read_text())
    inner = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    roots = {n.split(".")[0] for n in _imported(node, name)}
                    if not roots <= OPTIONAL:
                        inner.append(f"{fn.name} (line {node.lineno}): {sorted(roots)}")
    assert not inner, inner
