"""Per-tenant token buckets in Redis, and the counter that tells API processes to forget the
keys they remember.

Every `/v1` request whose key is known runs one Lua script: one round trip that takes a token
from the tenant's bucket (when it has a rate limit) and reads the auth generation, a counter
that `modelfarm keys revoke`, `tenants set` and `tenants disable` raise after they commit. A
process that sees the generation move reads the key again from PostgreSQL before it answers,
so those commands take effect at once on every API process, not after AUTH_CACHE_SECONDS.

Redis down (or no Redis at all) never fails open: each API process then keeps the buckets in
its own memory (so the farm-wide rate is the tenant's rate times the API processes), a warning
is logged once per outage, `/readyz` says `rate_limits: in-process`, and Redis is not tried
again for a few seconds, so an outage costs requests no timeouts. Keys then fall back to
AUTH_CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from app.config import get_settings

log = logging.getLogger(__name__)

GENERATION_KEY = "modelfarm:auth:generation"
BUCKET_PREFIX = "modelfarm:rate:"
TIMEOUT_SECONDS = 0.25  # a Redis slower than this counts as down for this request
RETRY_DOWN_SECONDS = 5.0  # how long a process leaves Redis alone after a failure

# KEYS[1]: the tenant's bucket (a hash: tokens, at), KEYS[2]: the auth generation.
# ARGV[1]: tokens per second ('' = no limit: only the generation is read), ARGV[2]: burst,
# ARGV[3]: now in ms ('' = the Redis server's clock, the one every API host shares).
# Returns {allowed 0|1, ms until a token is there, generation}.
BUCKET_SCRIPT = """
local generation = redis.call('GET', KEYS[2]) or '0'
local rate = tonumber(ARGV[1])
if not rate then return {1, 0, generation} end
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait, generation}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # whole seconds, at least 1 when refused
    generation: str | None  # None: Redis was not asked (down, or not configured)


OPEN = Decision(True, 0, None)


def burst_of(rate: float, burst: int | None) -> int:
    """A bucket holds `burst` tokens; by default one second's worth (at least one)."""
    return burst if burst else max(1, math.ceil(rate))


def retry_after_seconds(wait_ms: int) -> int:
    """Retry-After is whole seconds: rounded up, and never 0 (a client would retry at once)."""
    return max(1, math.ceil(wait_ms / 1000))


def _redis_url() -> str | None:
    """REDIS_URL, the farm's Redis for Redis-only uses (it is also the broker unless BROKER_URL
    names another); None where no Redis is configured."""
    url = get_settings().redis_url
    if not url:
        return None
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


_down_until = 0.0
# One client per event loop: redis.asyncio connections belong to the loop that opened them.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _script() -> Any | None:
    loop = asyncio.get_running_loop()
    script = _clients.get(loop)
    if script is None:
        url = _redis_url()
        if url is None:
            return None
        client = redis.asyncio.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )
        script = client.register_script(BUCKET_SCRIPT)
        _clients[loop] = script
    return script


async def take(
    tenant_id: str, rate: float | None, burst: int | None, now_ms: int | None = None
) -> Decision:
    """Take one token from the tenant's bucket (none to take without a rate) and read the auth
    generation, in one round trip; Decision OPEN when Redis cannot answer."""
    if time.monotonic() < _down_until:
        return _take_here(tenant_id, rate, burst)
    script = _script()
    if script is None:
        return _take_here(tenant_id, rate, burst)
    args = ["" if rate is None else repr(float(rate)), burst_of(rate or 1.0, burst)]
    try:
        allowed, wait_ms, generation = await script(
            keys=[BUCKET_PREFIX + tenant_id, GENERATION_KEY],
            args=[*args, "" if now_ms is None else now_ms],
        )
    except (redis.RedisError, OSError):
        _went_down()
        return _take_here(tenant_id, rate, burst)
    generation = generation.decode() if isinstance(generation, bytes) else str(generation)
    if allowed:
        return Decision(True, 0, generation)
    return Decision(False, retry_after_seconds(int(wait_ms)), generation)


def _went_down() -> None:
    """Redis did not answer: limits are kept here for RETRY_DOWN_SECONDS (said once an outage)."""
    global _down_until
    if time.monotonic() >= _down_until + RETRY_DOWN_SECONDS:
        log.warning(
            "Redis is not reachable: rate limits are enforced by each API process alone",
            exc_info=True,
        )
    _down_until = time.monotonic() + RETRY_DOWN_SECONDS


async def probe() -> str:
    """`mode()` after asking Redis (one PING, TIMEOUT_SECONDS at most) unless it was found
    away lately: /readyz says where limits are kept before any request had to find out."""
    script = None if mode() == "in-process" else _script()
    if script is not None:
        try:
            await script.registered_client.ping()
        except (redis.RedisError, OSError):
            _went_down()
    return mode()


#: tenant id -> (tokens, when: time.monotonic()): the buckets of this process, used while
#: Redis cannot answer. One entry per tenant that sent a request with a key: bounded.
_here: dict[str, tuple[float, float]] = {}


def _take_here(tenant_id: str, rate: float | None, burst: int | None) -> Decision:
    """The Lua script's bucket, in this process's memory."""
    if rate is None:
        return OPEN
    capacity, now = burst_of(rate, burst), time.monotonic()
    tokens, at = _here.get(tenant_id, (float(capacity), now))
    tokens = min(capacity, tokens + max(0.0, now - at) * rate)
    if tokens >= 1:
        _here[tenant_id] = (tokens - 1, now)
        return OPEN
    _here[tenant_id] = (tokens, now)
    return Decision(False, retry_after_seconds(math.ceil((1 - tokens) * 1000 / rate)), None)


def mode() -> str:
    """Where this process's rate limits are kept now: "redis", or "in-process" (no Redis
    configured, or it did not answer lately), for /readyz."""
    if _redis_url() is None or time.monotonic() < _down_until:
        return "in-process"
    return "redis"


def bump_generation() -> bool:
    """Tell every API process to read keys and tenants again (after the change committed).
    False when Redis could not be told: the change then takes up to AUTH_CACHE_SECONDS."""
    url = _redis_url()
    if url is None:
        return False
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        with client:
            client.incr(GENERATION_KEY)
    except (redis.RedisError, OSError):
        log.warning("could not raise the auth generation in Redis", exc_info=True)
        return False
    return True
