"""A throwaway farm for the benchmarks: servers, schema, an API key, the API and one CPU worker.

    with running_farm() as farm:
        farm.client.upload(...)            # modelfarm_client.Client, already authenticated
        farm.pid("worker")                 # pids of the processes the Supervisor started

PostgreSQL and Redis are the services named by MODELFARM_TEST_DATABASE_URL and
MODELFARM_TEST_REDIS_URL when both are set, otherwise throwaway servers. The farm's settings are
put into os.environ (and stay there), so the child processes and this process agree on them;
`extra_env` adds MODELFARM_* knobs the same way. When the block is entered the API answers and
the worker has run a one-item job, so its model is loaded.

Scripts in bench/ put the repository root on sys.path and import this as `bench.farm`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.local.procs import Supervisor
from modelfarm_client import Client


@dataclass
class FarmHandle:
    client: Client
    tmp: Path  # removed when the farm stops; the artifact store lives under it too
    supervisor: Supervisor  # children "api" and "worker"
    url: str
    api_key: str

    def pid(self, name: str) -> int:
        """The pid of a process the Supervisor started: "api" or "worker" (the Celery main
        process; its pool children are its child processes)."""
        return self.supervisor.children[name].pid


@dataclass
class Services:
    db_url: str
    redis_url: str
    tmp: Path
    port: int  # the API's
    api_key: str


@contextmanager
def farm_services(extra_env: dict[str, str] | None = None) -> Iterator[Services]:
    """PostgreSQL and Redis, migrated, with an API key and the farm's settings in os.environ:
    what every benchmark starts from, before it starts any farm process."""
    from app.local.embedded import free_port, throwaway_servers

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mf-bench-")))
        db_url = os.environ.get("MODELFARM_TEST_DATABASE_URL")
        redis_url = os.environ.get("MODELFARM_TEST_REDIS_URL")
        if not db_url or not redis_url:
            db_url, redis_url = stack.enter_context(throwaway_servers())
        port = free_port()
        os.environ.update(
            {
                "MODELFARM_DATABASE_URL": db_url,
                "MODELFARM_REDIS_URL": redis_url,
                "MODELFARM_DATA_DIR": str(tmp),
                "MODELFARM_API_PORT": str(port),
                "HF_HUB_OFFLINE": "1",
                **(extra_env or {}),
            }
        )
        from app.local.migrate import upgrade
        from app.services.tenants import create_api_key, get_or_create_tenant
        from app.unit_of_work import session_scope

        upgrade()
        with session_scope() as session:
            key = create_api_key(session, get_or_create_tenant(session, "bench"))
        yield Services(db_url, redis_url, tmp, port, key)


@contextmanager
def running_farm(
    extra_env: dict[str, str] | None = None, ready_timeout: float = 180
) -> Iterator[FarmHandle]:
    from app.local.procs import modelfarm_command

    with ExitStack() as stack:
        services = stack.enter_context(farm_services(extra_env))
        supervisor = Supervisor()
        stack.callback(supervisor.stop_all)
        # The farm's own logs go to files beside it, so a benchmark's output is its figures.
        logs = services.tmp / "logs"
        logs.mkdir()
        supervisor.start("api", modelfarm_command("api"), log_file=logs / "api.log")
        worker = modelfarm_command("worker", "--pool", "cpu")
        supervisor.start("worker", worker, log_file=logs / "worker.log")
        url = f"http://127.0.0.1:{services.port}"
        client = Client(url, services.api_key)
        stack.callback(client.close)
        wait_ready(client, timeout=ready_timeout)
        yield FarmHandle(
            client=client,
            tmp=services.tmp,
            supervisor=supervisor,
            url=url,
            api_key=services.api_key,
        )


def wait_ready(client: Client, timeout: float = 180) -> None:
    """A one-item job: the API answers, the worker is up and has its model loaded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = client.create_job({"model": "minilm", "input": {"items": [{"input": "warm"}]}})
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    client.wait(job["id"], timeout=timeout, poll=1)
