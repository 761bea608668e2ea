"""The layering docs/development.md describes, checked on every import statement of the source.

- `workers/runtime` is model code only: no Celery, no database, nothing of `app`.
- `app/api` reaches the database only through services: of SQLAlchemy it may name the session
  type and the exceptions it maps to answers, never build a query.
- `workers/tasks` stay thin: they take an id, call a service, call the runtime, record through a
  service. Of SQLAlchemy they may name the session type (and read rows by primary key), never
  build a query: the claim, plan, assembly and training records live in `app/services`.
- `app/sweeper.py` loops, schedules and calls services: it imports nothing of SQLAlchemy or of
  the ORM classes, and calls no query method; its queries live in `app/services/sweeping.py`
  and the services of their domain.
- `app/broker/dispatch.py` is the one broker-aware module of `app`: only it imports Celery,
  kombu or the broker scan (`app/broker/scan.py`, which reads the broker's own Redis keys).
- `app` does not import `workers`, except the edges listed in KNOWN_APP_TO_WORKERS, each with
  why it is still there. The list may only shrink: an edge that no longer exists must be taken
  off it, and a new one fails here.
- Each folder of `app` is one concern, on its floor: `app/cli/` (the command line) is the top,
  imported by nothing of the farm; `app/local/` (running a farm on one machine) is driven by
  the command line alone; `app/services/` imports nothing of the API, the command line or the
  sweeper above it; `app/counters.py` is a leaf that any module may count into.
- No import cycle: the modules of `app`, `workers` and `modelfarm_client` import each other
  (at the top or inside a function, absolute or relative) in a graph without a loop, once the
  edges of KNOWN_CYCLE_EDGES are taken out. That list may only shrink, as the one above.
- One owner per transaction (app/unit_of_work.py, docs/decisions/0018): `app/services` never
  commit, roll back or publish. They flush, and queue what must be sent after the commit on
  the unit of work; of `app.broker.dispatch` they name constants only (task names, queues). No
  module of `app` or `workers` hangs a listener on a session's commit or rollback.

Relative imports (`from . import x`, `from .jobs import y`) count as the modules they name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (importing file, imported module) -> why the edge still exists
KNOWN_APP_TO_WORKERS = {
    ("app/cli/commands.py", "workers.celery_app"): "`modelfarm worker` starts a Celery worker",
}
API_SQLALCHEMY_ALLOWED = {"sqlalchemy.exc", "sqlalchemy.orm"}

#: (importing module, imported module) -> why this edge of a loop is still there. Each is a
#: function-level import that closes a loop; the loop goes with the edge.
KNOWN_CYCLE_EDGES = {
    ("app.services.jobs", "app.services.admission"): (
        "a job's end releases its tenant's held jobs after the commit (a Session after_commit "
        "hook in admission): goes with the unit of work that owns the commit"
    ),
    ("app.services.tenants", "app.services.admission"): (
        "a raised max_running_jobs releases held jobs after the commit: the same hook"
    ),
    ("workers.tasks.training", "workers.tasks.image_training"): (
        "the training task hands an archive of images to its image branch, which reuses the "
        "task's checkpoint, progress and event helpers: goes when those are a module of their own"
    ),
}

#: the packages whose modules make the import graph
PACKAGES = ("app", "workers", "modelfarm_client")


#: what a session, a connection or a statement is asked to do when code builds or runs a query
QUERY_METHODS = {
    "query", "execute", "scalars", "scalar", "exec_driver_sql", "add", "add_all", "delete",
    "merge", "flush", "refresh", "get_one", "with_for_update", "where", "returning",
}  # fmt: skip


def _sources(package: str, root: Path) -> list[Path]:
    target = root / package
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


def _module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _from_module(path: Path, root: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names: `from .x import y` in app/services/jobs.py is
    `app.services.x`, `from .. import y` there is `app`."""
    if node.level == 0:
        return node.module or ""
    package = _module_of(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's package is its folder
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(package: str, root: Path = ROOT, names: bool = False) -> set[tuple[str, str]]:
    """(file relative to the root, module) for every import in a package (or one file), nested
    and relative ones too; with `names`, `from a import b` also counts as importing `a.b` (as
    `from . import b` always does: b is a module there, or a name of the package)."""
    found = set()
    for path in _sources(package, root):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _from_module(path, root, node)
                modules = [module] if node.module else []
                if names or not node.module:
                    modules += [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {(str(path.relative_to(root)), m) for m in modules}
    return found


def _query_calls(package: str, root: Path = ROOT) -> set[tuple[str, int, str]]:
    """(file, line, method) for every call of a query method (`x.execute(...)`, ...)."""
    found = set()
    for path in _sources(package, root):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in QUERY_METHODS
            ):
                found.add((str(path.relative_to(root)), node.lineno, node.func.attr))
    return found


def _under(module: str, *roots: str) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_the_runtime_knows_nothing_of_celery_the_database_or_the_api() -> None:
    bad = {edge for edge in _imports("workers/runtime") if _under(edge[1], "celery", "kombu")}
    bad |= {edge for edge in _imports("workers/runtime") if _under(edge[1], "sqlalchemy", "app")}
    assert bad == set()


def test_the_api_builds_no_queries() -> None:
    used = {edge for edge in _imports("app/api") if _under(edge[1], "sqlalchemy")}
    assert {m for _, m in used} <= API_SQLALCHEMY_ALLOWED, used


def test_tasks_build_no_queries() -> None:
    used = {edge for edge in _imports("workers/tasks") if _under(edge[1], "sqlalchemy")}
    assert {m for _, m in used} <= {"sqlalchemy.orm"}, used


def test_the_sweeper_builds_no_queries() -> None:
    imported = {m for _, m in _imports("app/sweeper.py", names=True)}
    assert {m for m in imported if _under(m, "sqlalchemy", "app.models")} == set()
    assert _query_calls("app/sweeper.py") == set()


def test_dispatch_is_the_one_broker_aware_module_of_app() -> None:
    broker = {
        edge
        for edge in _imports("app", names=True)
        if _under(edge[1], "celery", "kombu", "app.broker.scan")
    }
    assert {path for path, _ in broker} == {"app/broker/dispatch.py"}, broker


def test_app_imports_workers_only_where_listed() -> None:
    edges = {edge for edge in _imports("app") if _under(edge[1], "workers")}
    assert edges - set(KNOWN_APP_TO_WORKERS) == set(), "a new app -> workers import"
    assert set(KNOWN_APP_TO_WORKERS) - edges == set(), "an edge is gone: take it off the list"


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """Several of the listed edges are function-level imports: the walk must see those."""
    (tmp_path / "app" / "sub").mkdir(parents=True)
    (tmp_path / "app" / "sub" / "m.py").write_text(
        "import os\n\ndef f():\n    from workers.runtime.sklearn import check_skops_file\n"
    )
    assert _imports("app", tmp_path) == {
        ("app/sub/m.py", "os"),
        ("app/sub/m.py", "workers.runtime.sklearn"),
    }


def test_the_checks_see_queries_and_names_imported_from_a_package(tmp_path: Path) -> None:
    """What the sweeper's and the broker's checks rely on, shown to catch what they forbid."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "sweeper.py").write_text(
        "from app.broker import scan\nfrom sqlalchemy import text\n\n"
        "def f(conn):\n    return conn.execute(text('SELECT 1')).scalar(), {}.get(1)\n"
    )
    assert ("app/sweeper.py", "app.broker.scan") in _imports("app", tmp_path, names=True)
    assert ("app/sweeper.py", "sqlalchemy.text") in _imports("app/sweeper.py", tmp_path, True)
    assert ("app/sweeper.py", "app.broker.scan") not in _imports("app", tmp_path)
    assert {m for _, _, m in _query_calls("app/sweeper.py", tmp_path)} == {"execute", "scalar"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of PACKAGES it imports, anywhere in its code. `from a import b`
    is an import of `a.b` where that is a module, else of `a`; `from . import b` and
    `from ..a import b` are resolved against the importing module's package. Importing a
    submodule runs its package's `__init__` too, but that is Python's doing, not an edge."""
    files = {
        _module_name(path, root): path for package in PACKAGES for path in _sources(package, root)
    }

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                names = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            else:
                continue
            targets |= {t for t in map(known, names) if t is not None and t != module}
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The loops of a graph: each strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    graph = _import_graph()
    edges = {(a, b) for a, targets in graph.items() for b in targets}
    assert set(KNOWN_CYCLE_EDGES) - edges == set(), "an edge is gone: take it off the list"
    for a, b in KNOWN_CYCLE_EDGES:
        graph[a].discard(b)
    loops = [
        ", ".join(f"{a} -> {b}" for a in loop for b in sorted(graph[a] & set(loop)))
        for loop in _cycles(graph)
    ]
    assert loops == [], "import loops:\n" + "\n".join(loops)


def test_the_cycle_check_sees_relative_and_late_imports(tmp_path: Path) -> None:
    """A loop closed by a relative import inside a function is still a loop; a package's
    `__init__` that hands on its submodules' names is not one with them."""
    (tmp_path / "app" / "services").mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "counters.py").write_text("from app.services.jobs import X\n")
    (tmp_path / "app" / "services" / "__init__.py").write_text("from .jobs import X\n")
    (tmp_path / "app" / "services" / "jobs.py").write_text(
        "from app.services import errors\n\ndef f():\n    from ..counters import Y\n"
    )
    (tmp_path / "app" / "services" / "errors.py").write_text("import app.services.jobs\n")
    graph = _import_graph(tmp_path)
    assert graph["app.services.jobs"] == {"app.services.errors", "app.counters"}
    assert graph["app.services"] == {"app.services.jobs"}
    assert _cycles(graph) == [["app.counters", "app.services.errors", "app.services.jobs"]]


def _importers(target: str, graph: dict[str, set[str]]) -> set[str]:
    return {m for m, targets in graph.items() if any(_under(t, target) for t in targets)}


def test_each_folder_keeps_to_its_floor() -> None:
    graph = _import_graph()
    # The command line is the top: nothing of the farm imports it.
    assert {m for m in _importers("app.cli", graph) if not _under(m, "app.cli")} == set()
    # Running a farm on one machine is what the command line does.
    local = _importers("app.local", graph)
    assert {m for m in local if not _under(m, "app.cli", "app.local")} == set(), local
    # The services are below the API, the command line and the sweeper.
    above = ("app.api", "app.cli", "app.local", "app.sweeper")
    services = {(m, t) for m in graph if _under(m, "app.services") for t in graph[m]}
    assert {(m, t) for m, t in services if _under(t, *above)} == set()
    # The counters are a leaf: any module may count, the counters import nothing of the app.
    assert graph["app.counters"] == set()
    # Plan messages and the broker's keys are the broker's own: read through dispatch.
    inner = _importers("app.broker.scan", graph) | _importers("app.broker.messages", graph)
    assert inner == {"app.broker.dispatch"}, inner
    # Workers use the broker and the services, never the command line or the farm's launcher.
    workers = {(m, t) for m in graph if _under(m, "workers") for t in graph[m]}
    assert {(m, t) for m, t in workers if _under(t, "app.cli", "app.local", "app.api")} == set()


# One owner per transaction ------------------------------------------------------------------

#: what only the unit of work does: commit, roll back, send (app/unit_of_work.py)
OWNER_CALLS = {"commit", "rollback"}
OWNER_NAMES = {"app.unit_of_work." + n for n in ("commit", "rollback", "deliver", "session_scope",
                                                  "run_retrying")}  # fmt: skip
SESSION_HOOKS = {"after_commit", "after_rollback", "after_soft_rollback", "before_commit"}


def _owner_calls(package: str, root: Path = ROOT) -> set[tuple[str, int, str]]:
    """(file, line, method) of every `x.commit()` / `x.rollback()`, but a savepoint's (a name
    bound to `session.begin_nested()`, which ends inside the owner's transaction)."""
    found = set()
    for path in _sources(package, root):
        tree = ast.parse(path.read_text(), filename=str(path))
        savepoints = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "begin_nested"
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in OWNER_CALLS
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id in savepoints)
            ):
                found.add((str(path.relative_to(root)), node.lineno, node.func.attr))
    return found


def _publishing_imports(package: str, root: Path = ROOT) -> set[tuple[str, str]]:
    """Imports that can send or commit: any name of `app.broker.dispatch` but its constants (task
    names, queues), the module itself, and the unit of work's owner functions."""
    bad = set()
    for path, module in _imports(package, root, names=True):
        if module == "app.broker.dispatch" or module in OWNER_NAMES:
            bad.add((path, module))
        elif module.startswith("app.broker.dispatch."):
            name = module.removeprefix("app.broker.dispatch.")
            if not name.replace("_", "").isupper():
                bad.add((path, module))
    # `from app.broker.dispatch import X` also yields the bare module: only X decides
    return {
        (path, module)
        for path, module in bad
        if module != "app.broker.dispatch" or _imports_module_itself(root / path, root)
    }


def _imports_module_itself(path: Path, root: Path) -> bool:
    """Whether the file imports `app.broker.dispatch` as a module (`import app.broker.dispatch`,
    `from app.broker import dispatch`), not just names from it."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(
            a.name == "app.broker.dispatch" for a in node.names
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and _from_module(path, root, node) == "app.broker"
            and any(a.name == "dispatch" for a in node.names)
        ):
            return True
    return False


def _session_hooks(package: str, root: Path = ROOT) -> set[tuple[str, int]]:
    """(file, line) of every call that names a session's commit or rollback event
    (`event.listen(Session, "after_commit", ...)`, `@event.listens_for(..., "after_commit")`)."""
    found = set()
    for path in _sources(package, root):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and any(
                isinstance(arg, ast.Constant) and arg.value in SESSION_HOOKS for arg in node.args
            ):
                found.add((str(path.relative_to(root)), node.lineno))
    return found


def test_services_never_commit_or_roll_back() -> None:
    assert _owner_calls("app/services") == set()


def test_services_never_publish() -> None:
    assert _publishing_imports("app/services") == set()


def test_no_listener_on_a_sessions_commit() -> None:
    assert _session_hooks("app") | _session_hooks("workers") == set()


def test_the_owner_checks_see_what_they_forbid(tmp_path: Path) -> None:
    """Each check, shown a service that breaks it (relative imports included), finds it."""
    services = tmp_path / "app" / "services"
    services.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (services / "__init__.py").write_text("")
    (services / "bad.py").write_text(
        "from sqlalchemy import event\n"
        "from ..broker.dispatch import publish_job, TASK_PLAN_JOB\n"
        "from ..broker import dispatch\n"
        "from ..unit_of_work import session_scope, send_after_commit\n\n"
        "def f(session):\n"
        "    point = session.begin_nested()\n"
        "    point.rollback()\n"
        "    session.commit()\n"
        "    event.listen(type(session), 'after_commit', f)\n"
    )
    assert {m for _, _, m in _owner_calls("app/services", tmp_path)} == {"commit"}
    assert {m for _, m in _publishing_imports("app/services", tmp_path)} == {
        "app.broker.dispatch",
        "app.broker.dispatch.publish_job",
        "app.unit_of_work.session_scope",
    }
    assert _session_hooks("app", tmp_path) == {("app/services/bad.py", 10)}


def test_relative_imports_resolve_to_the_modules_they_name(tmp_path: Path) -> None:
    (tmp_path / "app" / "services").mkdir(parents=True)
    (tmp_path / "app" / "services" / "__init__.py").write_text("from . import jobs\n")
    (tmp_path / "app" / "services" / "m.py").write_text(
        "from .jobs import add_event\nfrom .. import metrics\nfrom ..db import utcnow\n"
    )
    assert _imports("app/services", tmp_path) == {
        ("app/services/__init__.py", "app.services.jobs"),
        ("app/services/m.py", "app.services.jobs"),
        ("app/services/m.py", "app.metrics"),
        ("app/services/m.py", "app.db"),
    }
