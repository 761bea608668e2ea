"""The layering DESIGN.md describes, checked on every import statement of the source.

- `workers/runtime` is model code only: no Celery, no database, nothing of `app`.
- `app/api` reaches the database only through services: of SQLAlchemy it may name the session
  type and the exceptions it maps to answers, never build a query.
- `workers/tasks` stay thin: they take an id, call a service, call the runtime, record through a
  service. Of SQLAlchemy they may name the session type (and read rows by primary key), never
  build a query: the claim, plan, assembly and training records live in `app/services`.
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
    ("app/cli.py", "workers.celery_app"): "`modelfarm worker` starts a Celery worker",
    ("app/services/jobs.py", "workers.runtime.registry"): "the builtin model catalogue",
    ("app/services/jobs.py", "workers.runtime.training"): "training parameter checks (step 7)",
    ("app/services/models.py", "workers.runtime.registry"): "the builtin model catalogue",
    ("app/services/models.py", "workers.runtime.base"): "validation at registration (step 7)",
    ("app/services/models.py", "workers.runtime.sklearn"): "validation at registration (step 7)",
}
API_SQLALCHEMY_ALLOWED = {"sqlalchemy.exc", "sqlalchemy.orm"}


def _imports(package: str, root: Path = ROOT) -> set[tuple[str, str]]:
    """(file relative to the root, module) for every import in a package, nested ones too."""
    found = set()
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            found |= {(str(path.relative_to(root)), m) for m in modules}
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
