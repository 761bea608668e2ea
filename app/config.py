"""Every knob of the farm, read once from the environment (prefix ``MODELFARM_``)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Written by `modelfarm up` when it starts embedded servers, so that every other command run
# with the same DATA_DIR reaches the same farm without URLs being set by hand.
STATE_FILE = "farm.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELFARM_", extra="ignore")

    environment: str = "development"  # "production" refuses placeholder secrets
    data_dir: Path = Path("data")

    # Services. Unset means: use the embedded servers that `modelfarm up` started.
    database_url: str | None = None
    redis_url: str | None = None  # Redis: the Celery broker unless BROKER_URL names another
    # The Celery broker when it is not REDIS_URL: `amqp://user:pw@host:5672/vhost` (RabbitMQ).
    broker_url: str | None = None
    # On a broker the sweeper cannot look into (RabbitMQ), a queued job, shard or validation
    # whose message was published this long ago and not yet started is published again.
    broker_redeliver_seconds: float = 60.0

    # HTTP
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    # `user:password` for Flower's basic auth; Flower refuses a non-loopback address without
    # it, since anyone who reaches it can shut workers down and revoke tasks.
    flower_basic_auth: SecretStr | None = None
    flower_max_tasks: int = 10000  # tasks Flower keeps (in memory and in DATA_DIR/flower.db)
    # `up` (and the GPU pool) restart a process that exited after this long, twice as long
    # after each further crash within seconds of its start (at most 30 s; five give up).
    restart_seconds: float = Field(default=1.0, gt=0)
    api_url: str | None = None  # for the CLI as a client; default http://api_host:api_port
    api_key: SecretStr | None = None  # for the CLI as a client
    max_upload_bytes: int = 2 * 1024**3
    max_inline_items: int = 1000
    max_request_bytes: int = 32 * 1024 * 1024  # any other request body
    # A model archive or skops file may unpack to this much: a checkpoint as large as the
    # upload limit unpacks to about its own size (safetensors barely compress), with room.
    model_max_unpacked_bytes: int = 4 * 1024**3
    max_model_versions: int = 100  # versions one model name keeps; more: delete old ones first
    # An output line longer than this is that item's error line instead (a model answering
    # 20 million numbers an item turned 2 items into 160 MB).
    max_output_line_bytes: int = 1024 * 1024
    model_max_archive_members: int = 10_000
    max_wait_seconds: float = 60.0  # ceiling for `Prefer: wait=N`
    # The dashboard's login form: attempts per client address, and logins per tenant, a minute.
    ui_login_attempts_per_minute: int = Field(default=10, ge=1)
    ui_logins_per_tenant_per_minute: int = Field(default=30, ge=1)
    # /metrics: with a token, a scrape must send `Authorization: Bearer <token>`. Model names
    # of tenants' own models are shown only with metrics_model_names (builtins always are).
    metrics_token: SecretStr | None = None
    metrics_model_names: bool = False
    # The HTTP edge (app/api/serve.py): a request head larger than this, or with more headers,
    # is a 431; a head not complete this long after the connection (or the last answer) is a
    # 408, as is a body that stops arriving for this long.
    http_max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    http_max_headers: int = Field(default=100, ge=8)
    http_head_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_idle_seconds: float = Field(default=30.0, gt=0)
    api_workers: int | None = None  # API processes; default one per core
    # Requests one API process works on at once; its PostgreSQL pool holds as many connections
    # (so api_workers x api_threads must fit the server's max_connections).
    api_threads: int = 16
    # An API process answers a key it read from PostgreSQL from memory for this long. Revoking
    # a key or changing a tenant applies at once anyway (app/ratelimit.py); only with Redis
    # unreachable does it take up to this long.
    auth_cache_seconds: float = 5.0

    # Jobs and workers
    artifact_root: str | None = None  # default: <data_dir>/artifacts; s3://bucket/prefix works too
    # An S3-compatible store that is not AWS (MinIO, Ceph, moto); keys and region come from the
    # standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
    s3_endpoint_url: str | None = None
    # Bytes an S3 write buffers before it sends them as one part of a multipart upload (S3's
    # smallest part is 5 MiB); reads fetch blocks of this size too.
    s3_block_size: int = 16 * 1024 * 1024
    max_item_chars: int = 20000
    max_line_bytes: int = 1024 * 1024  # a longer input line is that item's error, never read whole
    # Images (docs/images.md): a larger picture is an `image_too_large` error line; an image
    # item's line (base64) may be this long; an image job reads this many items per chunk.
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 16 * 1024 * 1024
    image_chunk_items: int = 64
    image_batch_pixels: int = 16_000_000
    # Speech (docs/tasks.md#speech-to-text): longer audio is an `audio_too_long` error line
    # (known from its header before it is decoded); an audio item's line (base64) or an
    # archive member may be MAX_AUDIO_BYTES (OpenAI's upload limit); a speech job reads this
    # many items per chunk and runs this many 30 s windows in one generate.
    max_audio_seconds: float = Field(default=600.0, gt=0, le=7200)
    max_audio_bytes: int = 25 * 1024 * 1024
    audio_chunk_items: int = 16
    audio_batch_windows: int = 8
    # Pictures in a CPU micro-batch: a convolutional network gains nothing from larger
    # batches on a CPU and loses its caches (docs/decisions/0013); the GPU pool's is
    # gpu_batch_size.
    image_batch_size: int = Field(default=8, ge=1)
    # Images per shard: a picture costs a CPU about 100 ms where a sentence costs 1, so a
    # crash repeats at most this many (SHARD_ITEMS is for text).
    image_shard_items: int = Field(default=256, ge=1)
    # Items read, run and recorded together: larger chunks sort and pad better (1024 items ran
    # 11% slower than 3000 here, 512 items 23% slower); a cancel is seen between micro-batches.
    # Items read and run together; a shard records its counts after a chunk (at most once per
    # PROGRESS_SECONDS), so a few hundred keeps progress moving every second or so.
    chunk_items: int = 512
    batch_tokens: int = 1024  # measured best on a 2-core CPU (workers/runtime/base.py)
    batch_size: int = 64
    # The GPU pool: larger micro-batches (a GPU is idle between small ones), and torch under
    # fp16 autocast unless gpu_mixed_precision is off.
    gpu_batch_tokens: int = 16384
    gpu_batch_size: int = 256
    gpu_mixed_precision: bool = True
    # Text generation (docs/generation.md): `max_tokens` above this is lowered to it; the KV
    # cache of the sequences decoding together holds at most this many tokens (prompts and
    # max_tokens reserved, every row counted at the longest row's length, as the cache pads
    # them; 16384 is about 0.75 GB for SmolLM2-135M); generation_batch_size (CPU) and
    # gpu_batch_size (GPU pool) cap how many decode together (a job's batch_size may lower it).
    generation_max_tokens: int = Field(default=4096, ge=1)
    generation_kv_tokens: int = Field(default=16384, ge=1)
    generation_batch_size: int = Field(default=32, ge=1)  # sequences decoding together (CPU)
    gpu_generation_kv_tokens: int = Field(default=262144, ge=1)
    worker_concurrency: int = 1  # processes per CPU worker; torch threads = cores / processes
    worker_threads: int | None = None  # override the torch threads per process
    model_cache_size: int = 2
    # Text models: "onnx" runs ONNX Runtime (graph exported once per version, checked against
    # torch); "torch" runs torch; "auto" is ONNX on CPU, and on CUDA when ONNX Runtime's CUDA
    # provider is installed, else torch.
    inference_backend: Literal["auto", "onnx", "torch"] = "auto"
    preload_models: str = "minilm"  # comma separated builtin models loaded at process start
    gpu_count: int | None = None  # GPU processes to start; default: GPUs visible to the host
    device_override: str | None = None  # e.g. "cpu": run the GPU pool's code on the CPU
    # The pools this farm runs, comma separated (`up` sets it for its processes: no GPU pool
    # on a host without one). /readyz reports a pool left out as absent by choice, not as
    # missing its workers. Unset: every pool is expected.
    pools: str | None = None
    visibility_timeout_seconds: int = 4200  # > task_time_limit: see the check below
    shard_items: int = 4096  # input items per shard: the unit of work that a crash repeats
    sklearn_shard_items: int = 65536  # ... for scikit-learn models, whose items are cheap
    # Shard messages the broker holds per pool (released and not finished): the scheduler
    # releases the next shard only inside this window, so a newcomer waits at most about a
    # window of shards. 0: twice the pool's live worker processes (as their heartbeats say),
    # at least 2.
    scheduler_window: int = Field(default=0, ge=0)
    progress_seconds: float = 1.0  # a running shard records its counts about this often
    # A job that ended this many days ago is removed with its events and result files by the
    # sweeper (as DELETE /v1/jobs/{id} does); 0 keeps everything.
    result_ttl_days: float = 30.0
    lease_seconds: float = 60.0  # a silent worker keeps its work this long before re-dispatch
    sweep_interval_seconds: float = 15.0
    max_attempts: int = 3  # tries per shard before the job fails (and per model validation)
    # One attempt at validating an uploaded model (unpack, check, probe) stops past this; its
    # lease lasts this long plus a margin, so the sweeper gives a dead attempt's version again.
    model_validation_seconds: int = 900
    # An uploaded model is measured from its config before it is built (issue 25): at most
    # this many parameters and bytes of weights, and a validation may grow its process by at
    # most this much memory (an address-space limit while it checks and probes).
    model_max_parameters: int = 2_000_000_000
    model_max_bytes: int = 8 * 1024**3
    model_validation_memory_bytes: int = 16 * 1024**3
    # A scikit-learn model's widths: features per item, outputs (or classes) per item, parts.
    model_max_features: int = 100_000
    model_max_outputs: int = 10_000
    model_max_estimators: int = 10_000
    task_soft_time_limit: int = 3600  # a shard task past this stops and is tried again
    task_time_limit: int = 3900  # ... and is killed past this
    db_retry_seconds: float = 120.0  # how long workers retry writes while PostgreSQL is away

    # Webhooks. The schedule is the seconds between attempts after the first (Standard
    # Webhooks: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each stretched by up to +-10% jitter.
    webhook_allowed_hosts: str = ""  # hosts or CIDRs exempt from the private-address block
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_timeout_seconds: float = 15.0
    webhook_concurrency: int = 8  # threads of a webhooks worker (waiting on receivers, not CPU)

    secret_key: SecretStr = SecretStr("dev-insecure-secret")
    # `api`, `worker` and `sweeper` bring the schema up to date before they start (under an
    # advisory lock, so processes started together migrate once); `--migrate` does the same.
    migrate_on_start: bool = False

    @model_validator(mode="after")
    def _fill_from_state(self) -> Settings:
        self.retry_delays()  # a bad schedule stops the process at start, not at the first retry
        if self.visibility_timeout_seconds < self.task_time_limit + 60:
            # The broker hands an unacknowledged message to another worker after this long: a
            # task still within its time limit would then run twice at once.
            raise ValueError(
                f"MODELFARM_VISIBILITY_TIMEOUT_SECONDS ({self.visibility_timeout_seconds}) must "
                f"be at least MODELFARM_TASK_TIME_LIMIT ({self.task_time_limit}) + 60"
            )
        if self.flower_basic_auth is not None:
            user, sep, password = self.flower_basic_auth.get_secret_value().partition(":")
            if not (user and sep and password) or "," in password:
                # Flower reads a comma as the start of another user:password pair.
                raise ValueError(
                    "MODELFARM_FLOWER_BASIC_AUTH must be user:password (no comma in the password)"
                )
        if self.visibility_timeout_seconds < self.model_validation_seconds + 60:
            raise ValueError(
                f"MODELFARM_VISIBILITY_TIMEOUT_SECONDS ({self.visibility_timeout_seconds}) must "
                f"be at least MODELFARM_MODEL_VALIDATION_SECONDS "
                f"({self.model_validation_seconds}) + 60"
            )
        if self.environment == "production" and self.secret_key.get_secret_value().startswith(
            "dev-"
        ):
            raise ValueError("MODELFARM_SECRET_KEY must be set outside development")
        state = self.read_state()
        if self.database_url is None:
            self.database_url = state.get("database_url")
        if self.redis_url is None:
            self.redis_url = state.get("redis_url")
        if self.api_key is None and state.get("api_key"):
            self.api_key = SecretStr(state["api_key"])
        return self

    def read_state(self) -> dict[str, str]:
        path = self.data_dir / STATE_FILE
        try:
            state: dict[str, str] = json.loads(path.read_text())  # what write_state wrote
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return state

    def write_state(self, state: dict[str, str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / STATE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)

    def retry_delays(self) -> list[float]:
        """WEBHOOK_RETRY_SCHEDULE as seconds; an empty schedule means a single attempt."""
        try:
            delays = [float(p) for p in self.webhook_retry_schedule.split(",") if p.strip()]
        except ValueError:
            raise ValueError(
                "MODELFARM_WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas, "
                f"not {self.webhook_retry_schedule!r}"
            ) from None
        if any(d < 0 for d in delays):
            raise ValueError("MODELFARM_WEBHOOK_RETRY_SCHEDULE may not hold negative delays")
        return delays

    @property
    def artifacts(self) -> str:
        return self.artifact_root or str((self.data_dir / "artifacts").resolve())

    def api_processes(self) -> int:
        return self.api_workers or os.cpu_count() or 1

    @property
    def client_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    def expected_pools(self, known: tuple[str, ...]) -> set[str]:
        if self.pools is None:
            return set(known)
        return {p.strip() for p in self.pools.split(",") if p.strip()}

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "No database: set MODELFARM_DATABASE_URL or start the farm with `modelfarm up`"
            )
        return self.database_url

    def require_broker_url(self) -> str:
        """The Celery broker: BROKER_URL when set, else REDIS_URL."""
        url = self.broker_url or self.redis_url
        if not url:
            raise RuntimeError(
                "No broker: set MODELFARM_REDIS_URL (or MODELFARM_BROKER_URL) or start the farm "
                "with `modelfarm up`"
            )
        return url

    def processes_per_worker(self, pool: str) -> int:
        """Pool processes a worker of `pool` runs, as this process is configured: what the
        scheduler assumes of a worker whose heartbeat does not say (one started before 0009)."""
        if pool == "gpu":
            return self.gpu_count or 1
        return self.worker_concurrency

    def torch_threads(self, cores: int | None = None) -> int:
        if self.worker_threads:
            return self.worker_threads
        # The cores this process may run on: a worker pinned with taskset (or a cgroup cpuset)
        # gets a share of those, not of the whole machine's.
        cores = cores or len(os.sched_getaffinity(0)) or 1
        return max(1, cores // max(1, self.worker_concurrency))


@lru_cache
def get_settings() -> Settings:
    return Settings()
