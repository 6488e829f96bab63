"""The layering of medxcept, checked on the source (``ast``; nothing is imported, so it takes milliseconds).

* Stages below, workflows above, nothing upward: no module outside ``medxcept.workflows`` imports
  ``medxcept.workflows``, and no production module imports ``medxcept.testing`` (fixtures and
  generators for tests and benchmarks).
* No import cycle among medxcept modules (module-level and function-level imports alike: a cycle
  hidden in a function is still a cycle).
* No module over :data:`MAX_MODULE_LINES` lines, except those in :data:`LONG_MODULES`, each with its reason
  (a long module usually does several jobs: split it by job, as ``models/train.py`` was).
* Stages compute, the report draws: no stage imports ``medxcept.report``; ``medxcept.report`` imports
  no stage and reads no file. No private name is imported across modules. The three workflow run
  sequences (single run, fold, external validation) stay within :data:`MAX_WORKFLOW_LINES` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "medxcept"

#: Cycles known and owned elsewhere, each with its reason; the test fails on any other cycle.
#: None today: the audit <-> acquisition cycle ended when the fingerprint engine left audit.py.
KNOWN_CYCLES: tuple[set[str], ...] = ()

#: A module longer than this is split by job, or listed in :data:`LONG_MODULES` with its reason.
MAX_MODULE_LINES = 750
#: Modules (path under ``medxcept/``) allowed over :data:`MAX_MODULE_LINES`, each with its reason. An entry
#: whose module has shrunk below the limit (or gone) fails the test too, so the list stays true.
LONG_MODULES: dict[str, str] = {
    "testing/corpus.py": "a test-data generator (the DICOM corpus with its JPEG-lossless encoder, the mixed cohort), "
                         "not a pipeline stage; no production module imports it",
    "io/dicom.py": "one job: the DICOM display pipeline (decoders, LUTs, photometric interpretations, frames, metadata)",
    "io/labels.py": "one job: labels to files (label tables as exported by hand, folder layouts, file matching)",
    "integrity/audit.py": "one job: the integrity audit (leakage, duplicates, label conflicts, confounding)",
    "cohort/ingest.py": "one job: ingestion (sources in, one cohort table and one exclusion log out)",
    "integrity/duplicates.py": "one job: near-duplicates decided by geometry (keypoints, RANSAC, aligned detail)",
}


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


# ------------------------------------------------------------------ stages compute, the report draws

#: What ``medxcept.report`` may import besides itself: run-wide plumbing that imports no medxcept module
#: (checked below). ``medxcept.files``: the atomic write of ``report.html``.
REPORT_MAY_IMPORT = ("medxcept.files",)

#: The calls that read a file; the report makes none (it renders what the workflow gives it).
FILE_READS = {"read_text", "read_bytes", "read_csv", "read_json", "read_parquet", "load", "loads_file", "imread"}


def _report_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        if module.startswith(("medxcept.report", "medxcept.workflows")):
            continue
        bad += [f"{module} imports {d}" for d in deps if d == "medxcept.report" or d.startswith("medxcept.report.")]
    return bad


def test_no_stage_imports_the_report(graph):
    """Stages return data (arrays, tables, dicts); the report draws. Only the workflows, above both, call it."""
    bad = _report_violations(graph)
    assert not bad, "stages importing the report: " + "; ".join(sorted(bad))


def _report_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {d}" for m, deps in graph.items() if m == "medxcept.report" or m.startswith("medxcept.report.")
            for d in deps if not (d == "medxcept.report" or d.startswith("medxcept.report.")) and d not in REPORT_MAY_IMPORT]


def test_the_report_imports_no_stage(graph):
    bad = _report_imports(graph)
    assert not bad, "the report imports a stage: " + "; ".join(sorted(bad))
    for allowed in REPORT_MAY_IMPORT:
        assert not graph[allowed], f"{allowed} is allowed in the report as plumbing: it must import no medxcept module"


def _file_reads(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "report").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name in FILE_READS or name == "open":
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} calls {name}")
    return out


def test_the_report_reads_no_file():
    """Everything the report shows is given to it (``ReportInputs``: the config text too); Jinja2's
    loader reading the templates is the only file access."""
    bad = _file_reads()
    assert not bad, "; ".join(bad)


# ------------------------------------------------------------------ private names stay in their module


def _private_imports(roots: tuple[Path, ...]) -> list[str]:
    """``from medxcept.x import _name`` and ``alias._name`` (``alias`` a medxcept module) outside a
    package's own ``__init__`` importing from its own package."""
    files = {}
    for root in roots:
        files.update({_module_name(p, root): p for p in root.rglob("*.py")})
    known = set(files)
    out = []
    for name, path in sorted(files.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if not mod.startswith("medxcept"):
                    continue
                for a in node.names:
                    if f"{mod}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{mod}.{a.name}"
                    own_init = path.name == "__init__.py" and mod.startswith(name + ".")
                    if a.name.startswith("_") and not a.name.startswith("__") and not own_init:
                        out.append(f"{name}:{node.lineno} imports {mod}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("medxcept") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return out


def test_no_private_name_crosses_a_module():
    """A name another module needs is public in its home (or the code moves to where it is used)."""
    bad = _private_imports((ROOT, ROOT.parent / "pipelines"))
    assert not bad, f"{len(bad)} private name(s) imported across modules: " + "; ".join(bad)


# ------------------------------------------------------------------ the workflows read in about 100 lines

#: The run sequence of each workflow that turns a trained model into numbers (issue 30): one screen-ish each.
WORKFLOW_BODIES = {"workflows/single.py": "_run_locked", "workflows/fold.py": "_run_fold_locked",
                   "workflows/external.py": "evaluate_run"}
MAX_WORKFLOW_LINES = 110


def _function_lines(path: Path, name: str) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            return node.end_lineno - first + 1
    raise AssertionError(f"{path}: no function {name}")


def test_the_workflows_read_in_about_100_lines():
    long = {f"{f}:{fn}": n for f, fn in WORKFLOW_BODIES.items() if (n := _function_lines(ROOT / f, fn)) > MAX_WORKFLOW_LINES}
    assert not long, f"workflow run sequences over {MAX_WORKFLOW_LINES} lines: {long}"


def test_the_new_checks_would_fail(tmp_path):
    """Each rule above catches what it names, on a planted package."""
    pkg = tmp_path / "medxcept"
    for sub in ("report", "evaluation", "workflows"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "evaluation" / "m.py").write_text("from medxcept.report import draw\n\ndef _p():\n    pass\n")
    (pkg / "evaluation" / "n.py").write_text("from medxcept.evaluation.m import _p\nfrom medxcept.evaluation import m\n"
                                             "m._p()\n")
    (pkg / "evaluation" / "__init__.py").write_text("from medxcept.evaluation.m import _p\n")  # own package: fine
    (pkg / "report" / "__init__.py").write_text("from medxcept.evaluation import m\n\ndef f(p):\n"
                                                "    return p.read_text()\n")
    g = import_graph(pkg)
    assert _report_violations(g) == ["medxcept.evaluation.m imports medxcept.report"]
    assert _report_imports(g) == ["medxcept.report imports medxcept.evaluation.m"]
    assert _file_reads(pkg) == ["medxcept/report/__init__.py:4 calls read_text"]
    assert _private_imports((pkg,)) == ["medxcept.evaluation.n:1 imports medxcept.evaluation.m._p",
                                        "medxcept.evaluation.n:3 uses medxcept.evaluation.m._p"]
    (pkg / "workflows" / "long.py").write_text("def run():\n" + "    x = 1\n" * 120)
    assert _function_lines(pkg / "workflows" / "long.py", "run") == 121


def module_lengths(root: Path = ROOT) -> dict[str, int]:
    """Lines of every module under ``root``, keyed by its path under ``root``."""
    return {p.relative_to(root).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted(root.rglob("*.py"))}


def long_module_problems(lengths: dict[str, int], allowed: dict[str, str],
                         limit: int = MAX_MODULE_LINES) -> list[str]:
    """Modules over ``limit`` lines not in ``allowed``, and ``allowed`` entries no longer over it."""
    out = [f"{m}: {n} lines (over {limit}; split it by job, or list it in LONG_MODULES with a reason)"
           for m, n in sorted(lengths.items()) if n > limit and m not in allowed]
    out += [f"{m}: {lengths.get(m, 0)} lines, no longer over {limit}: remove it from LONG_MODULES"
            for m in sorted(allowed) if lengths.get(m, 0) <= limit]
    return out


def test_no_module_over_the_line_limit_without_a_reason():
    problems = long_module_problems(module_lengths(), LONG_MODULES)
    assert not problems, "; ".join(problems)


def test_the_line_limit_check_would_fail(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "big.py").write_text("x = 1\n" * 12)
    (tmp_path / "small.py").write_text("x = 1\n" * 3)
    lengths = module_lengths(tmp_path)
    assert lengths == {"pkg/big.py": 12, "small.py": 3}
    assert long_module_problems(lengths, {}, limit=10) == [
        "pkg/big.py: 12 lines (over 10; split it by job, or list it in LONG_MODULES with a reason)"]
    assert long_module_problems(lengths, {"pkg/big.py": "why"}, limit=10) == []
    assert long_module_problems(lengths, {"pkg/big.py": "why", "small.py": "why"}, limit=10) == [
        "small.py: 3 lines, no longer over 10: remove it from LONG_MODULES"]
