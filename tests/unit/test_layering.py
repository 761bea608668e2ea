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


#: what a session, a connection or a statement is asked to do when code builds or runs a query
QUERY_METHODS = {
    "query", "execute", "scalars", "scalar", "exec_driver_sql", "add", "add_all", "delete",
    "merge", "flush", "refresh", "get_one", "with_for_update", "where", "returning",
}  # fmt: skip


def _sources(package: str, root: Path) -> list[Path]:
    target = root / package
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


def _imports(package: str, root: Path = ROOT, names: bool = False) -> set[tuple[str, str]]:
    """(file relative to the root, module) for every import in a package (or one file), nested
    ones too; with `names`, `from a import b` also counts as importing `a.b`."""
    found = set()
    for path in _sources(package, root):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
                if names:
                    modules += [f"{node.module}.{alias.name}" for alias in node.names]
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
