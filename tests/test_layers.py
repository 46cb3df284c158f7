"""The layer rule of docs/ARCHITECTURE.md, read off every import statement of the tree (lazy ones inside
functions included): data -> model -> orchestrator -> UI and apps, each reaching the one below through its
public API, and no import cycle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "peterrec", "orchestrator", "tui", "commands", "reproduce")


def project_modules() -> dict[str, Path]:
    """Every module of the project: dotted name -> file (cli.py included; tests and benchmarks are not
    imported by anything)."""
    modules = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = project_modules()


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file: `from a.b import c` is a.b.c when that is a
    module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
    return found


IMPORTS = {name: imports_of(path) for name, path in MODULES.items()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def offending(package: str, forbidden) -> list[str]:
    return sorted(f"{name} imports {target}" for name, targets in IMPORTS.items() if in_package(name, package)
                  for target in targets if forbidden(target))


def test_the_data_layer_imports_no_model_orchestrator_or_ui():
    above = ("peterrec", "orchestrator", "tui", "commands", "reproduce", "cli", "torch", "ray", "textual")
    assert offending("tasks", lambda t: any(in_package(t, p) for p in above)) == []


def test_the_model_library_imports_no_ray_and_of_the_data_layer_only_file_helpers():
    above = ("orchestrator", "tui", "commands", "reproduce", "cli", "ray", "textual")
    assert offending("peterrec", lambda t: any(in_package(t, p) for p in above)) == []
    assert offending("peterrec", lambda t: in_package(t, "tasks") and t != "tasks.atomic") == []


def test_the_orchestrator_imports_no_ui_or_app():
    above = ("tui", "commands", "reproduce", "cli")
    assert offending("orchestrator", lambda t: any(in_package(t, p) for p in above)) == []


def test_the_ui_goes_through_the_client_only():
    """tui/ reaches jobs and searches through orchestrator.client alone: no commands, no Ray, no model."""
    def forbidden(target: str) -> bool:
        if in_package(target, "orchestrator"):
            return target != "orchestrator.client"
        return any(in_package(target, p) for p in ("commands", "cli", "ray", "peterrec", "tasks", "reproduce", "torch"))

    assert offending("tui", forbidden) == []


def test_the_experiment_uses_the_product_not_the_ui():
    assert offending("reproduce", lambda t: any(in_package(t, p) for p in ("tui", "commands", "cli", "ray"))) == []


def test_nothing_imports_the_tests():
    assert [n for n, targets in IMPORTS.items() for t in targets if in_package(t, "tests") or t.startswith("test_")] \
        == []


def with_parents(module: str) -> set[str]:
    """Importing a.b.c runs the __init__ of a and of a.b first: all three are imported."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def test_no_import_cycle():
    graph = {name: {p for t in targets for p in with_parents(t) if p in MODULES and p != name
                    and not in_package(name, p)}  # a module's own packages are already being imported
             for name, targets in IMPORTS.items()}
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.add(top)
                        if top == node:
                            break
                    out.append(component)
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out
