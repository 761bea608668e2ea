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
- `app/dispatch.py` is the one broker-aware module of `app`: only it imports Celery, kombu or
  the broker scan (`app/broker_scan.py`, which reads the broker's own Redis keys).
- `app` does not import `workers`, except the edges listed in KNOWN_APP_TO_WORKERS, each with
  why it is still there. The list may only shrink: an edge that no longer exists must be taken
  off it, and a new one fails here.
- One owner per transaction (app/unit_of_work.py, docs/decisions/0018): `app/services` never
  commit, roll back or publish. They flush, and queue what must be sent after the commit on
  the unit of work; of `app.dispatch` they name constants only (task names, queues). No module
  of `app` or `workers` hangs a listener on a session's commit or rollback.

Relative imports (`from . import x`, `from .jobs import y`) count as the modules they name.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (importing file, imported module) -> why the edge still exists
KNOWN_APP_TO_WORKERS = {
    ("app/cli.py", "workers.celery_app"): "`modelfarm worker` starts a Celery worker",
}
API_SQLALCHEMY_ALLOWED = {"sqlalchemy.exc", "sqlalchemy.orm"}


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
        if _under(edge[1], "celery", "kombu", "app.broker_scan")
    }
    assert {path for path, _ in broker} == {"app/dispatch.py"}, broker


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
        "from app import broker_scan\nfrom sqlalchemy import text\n\n"
        "def f(conn):\n    return conn.execute(text('SELECT 1')).scalar(), {}.get(1)\n"
    )
    assert ("app/sweeper.py", "app.broker_scan") in _imports("app", tmp_path, names=True)
    assert ("app/sweeper.py", "sqlalchemy.text") in _imports("app/sweeper.py", tmp_path, True)
    assert ("app/sweeper.py", "app.broker_scan") not in _imports("app", tmp_path)
    assert {m for _, _, m in _query_calls("app/sweeper.py", tmp_path)} == {"execute", "scalar"}


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
    """Imports that can send or commit: any name of `app.dispatch` but its constants (task
    names, queues), the module itself, and the unit of work's owner functions."""
    bad = set()
    for path, module in _imports(package, root, names=True):
        if module == "app.dispatch" or module in OWNER_NAMES:
            bad.add((path, module))
        elif module.startswith("app.dispatch."):
            name = module.removeprefix("app.dispatch.")
            if not name.replace("_", "").isupper():
                bad.add((path, module))
    # `from app.dispatch import X` also yields the bare module: only X decides
    return {
        (path, module)
        for path, module in bad
        if module != "app.dispatch" or _imports_module_itself(root / path, root)
    }


def _imports_module_itself(path: Path, root: Path) -> bool:
    """Whether the file imports `app.dispatch` as a module (`import app.dispatch`, `from app
    import dispatch`), not just names from it."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name == "app.dispatch" for a in node.names):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and _from_module(path, root, node) == "app"
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
        "from ..dispatch import publish_job, TASK_PLAN_JOB\n"
        "from .. import dispatch\n"
        "from ..unit_of_work import session_scope, send_after_commit\n\n"
        "def f(session):\n"
        "    point = session.begin_nested()\n"
        "    point.rollback()\n"
        "    session.commit()\n"
        "    event.listen(type(session), 'after_commit', f)\n"
    )
    assert {m for _, _, m in _owner_calls("app/services", tmp_path)} == {"commit"}
    assert {m for _, m in _publishing_imports("app/services", tmp_path)} == {
        "app.dispatch",
        "app.dispatch.publish_job",
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
