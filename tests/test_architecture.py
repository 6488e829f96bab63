"""The layering of medxcept, checked on the source (``ast``; nothing is imported, so it takes milliseconds).

* Stages below, workflows above, nothing upward: no module outside ``medxcept.workflows`` imports
  ``medxcept.workflows``, and no production module imports ``medxcept.testing`` (fixtures and
  generators for tests and benchmarks).
* No import cycle among medxcept modules (module-level and function-level imports alike: a cycle
  hidden in a function is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "medxcept"

#: Cycles known and owned elsewhere, each with its reason; the test fails on any other cycle.
#: None today: the audit <-> acquisition cycle ended when the fingerprint engine left audit.py.
KNOWN_CYCLES: tuple[set[str], ...] = ()


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The medxcept modules ``path`` imports (``from medxcept.x import y`` counts ``medxcept.x.y`` when
    that is a module, else ``medxcept.x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rpartition(".")[0]
            if t in known and t != name:
                out.add(t)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``module -> medxcept modules it imports`` for every module under ``root``."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, name, known) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parents(name: str) -> set[str]:
    """A package imports its parent packages' ``__init__`` implicitly; those are not cycles."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    g = import_graph()
    # ``import medxcept.x`` runs ``medxcept/__init__``; an edge to a parent package is not a dependency
    return {m: {t for t in deps if t not in _parents(m)} for m, deps in g.items()}


def test_the_graph_sees_known_imports(graph):
    assert "medxcept.evaluation.metrics" in graph["medxcept.evaluation.assess"]
    assert "medxcept.evaluation.assess" in graph["medxcept.workflows.steps"]
    assert "medxcept.workflows.steps" in graph["medxcept.workflows.single"]
    assert "medxcept.io.dicom" in graph["medxcept.cohort.ingest"]


def test_no_import_cycle(graph):
    cycles = [c for c in find_cycles(graph) if set(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles among medxcept modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_stages_never_import_workflows_or_test_fixtures(graph):
    upward = []
    for module, deps in graph.items():
        if module.startswith(("medxcept.workflows", "medxcept.testing")):
            continue
        upward += [f"{module} imports {d}" for d in deps if d.startswith(("medxcept.workflows", "medxcept.testing"))]
    assert not upward, "upward imports: " + "; ".join(sorted(upward))


def test_workflows_never_import_test_fixtures(graph):
    bad = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith("medxcept.workflows")
           for d in deps if d.startswith("medxcept.testing")]
    assert not bad, "; ".join(bad)


def test_the_checks_would_fail_on_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "medxcept"
    (pkg / "workflows").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from medxcept import b\n")
    (pkg / "b.py").write_text("def f():\n    from medxcept.a import x\n")  # a cycle hidden in a function
    (pkg / "c.py").write_text("from medxcept.workflows.run import go\n")
    (pkg / "workflows" / "__init__.py").write_text("")
    (pkg / "workflows" / "run.py").write_text("from ..a import x\n")
    g = import_graph(pkg)
    assert find_cycles(g) == [["medxcept.a", "medxcept.b"]]
    assert "medxcept.workflows.run" in g["medxcept.c"]
    assert "medxcept.a" in g["medxcept.workflows.run"]


def test_the_report_renders_what_it_is_given(graph):
    """The report neither reads image files nor augments: the workflow computes the previews."""
    for module in ("medxcept.report", "medxcept.report.figures"):
        reading = {d for d in graph[module] if d.startswith(("medxcept.io", "medxcept.cohort.ingest", "medxcept.images.augment"))}
        assert not reading, f"{module} imports {sorted(reading)}"


def test_ingestion_does_not_import_the_demo_generator(graph):
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph.get(todo.pop(), ()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    assert "medxcept.cohort.demo" not in reach("medxcept.cohort.ingest")
