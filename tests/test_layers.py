"""The layout's rules (docs/architecture.md "Layers"), checked on the import graph.

`make test` also runs `lint-imports` (the layers contract in pyproject.toml); these
checks cover what a layers contract does not: cycles inside a layer, underscore names
reached across modules, Prefect in tasks/, and dvc.yaml deps that name what each stage
really imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
import yaml
from prefect import Task

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("flows", "tasks", cache_dir=None)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1; stack.append(child); on.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle_at_any_depth(graph):
    # grimp reads every import statement, function-local ones included
    assert _cycles(graph) == []


def _project_files():
    for package in ("flows", "tasks"):
        yield from sorted((REPO / package).rglob("*.py"))


def test_no_module_imports_another_modules_underscore_names():
    found = []
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("flows", "tasks"):
                found += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and a.name != "__version__"]
    assert found == []


def test_tasks_is_plain_python_and_the_prefect_edge_is_flows_steps():
    prefect_users = []
    for path in (REPO / "tasks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            prefect_users += [str(path.relative_to(REPO)) for n in names if n.split(".")[0] == "prefect"]
    assert prefect_users == []
    import flows.steps as steps

    names = [n for n in dir(steps) if n.endswith("_task")]
    assert names and all(isinstance(getattr(steps, n), Task) for n in names)


def test_main_lives_only_in_the_stage_entry_points():
    mains = sorted(str(p.relative_to(REPO)) for p in (REPO / "tasks").rglob("*.py")
                   if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert mains == sorted(f"tasks/stages/{name}.py" for name in stages)


def test_dvc_stage_deps_name_the_packages_each_stage_imports(graph):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].removeprefix("python -m ")
        assert module == f"tasks.stages.{name}"
        imported = {".".join(m.split(".")[:2]) for m in graph.find_upstream_modules(module) | {module}
                    if m.startswith("tasks.") and m.count(".") >= 1}
        declared = {d.replace("/", ".") for d in stage["deps"] if d.startswith("tasks/")}
        assert declared == imported, name
