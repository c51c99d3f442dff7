"""Per-token request rate limits: a token bucket, atomic in Redis when configured, per process otherwise.

Rate limits protect capacity (seconds); quotas are commercial entitlements (days, months). They are kept
apart: this module never touches the database.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from rest_framework.throttling import BaseThrottle


@dataclass(frozen=True)
class BucketResult:
    allowed: bool
    remaining: int
    retry_after: float  # seconds until one request is allowed again (0 when allowed)
    reset_after: float  # seconds until the bucket is full again


class LocalTokenBucket:
    """Thread-safe in-process buckets (the embedded default: one process, one limiter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: float, burst: int, now: float | None = None) -> BucketResult:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
        return _result(allowed, tokens, rate, burst)


# KEYS[1] bucket; ARGV rate, burst, now (s). Stored as a hash {tokens, ts}; expires when it would be full.
_REDIS_SCRIPT = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(tokens)}
"""


class RedisTokenBucket:
    """Shared buckets for many web processes; one Lua script per request keeps take() atomic."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._script = self._client.register_script(_REDIS_SCRIPT)

    def take(self, key: str, rate: float, burst: int, now: float | None = None) -> BucketResult:
        now = time.time() if now is None else now
        allowed, tokens = self._script(keys=[f"qxaas:rl:{key}"], args=[rate, burst, now])
        return _result(bool(allowed), float(tokens), rate, burst)


def _result(allowed: bool, tokens: float, rate: float, burst: int) -> BucketResult:
    retry_after = 0.0 if allowed else (1.0 - tokens) / rate
    return BucketResult(allowed, int(tokens), retry_after, (burst - tokens) / rate)


@lru_cache(maxsize=1)
def limiter() -> LocalTokenBucket | RedisTokenBucket:
    return RedisTokenBucket(settings.REDIS_URL) if settings.REDIS_URL else LocalTokenBucket()


def rate_headers(result: BucketResult, rate: float, burst: int, policy: str = "requests") -> dict[str, str]:
    window = math.ceil(burst / rate)
    return {
        "RateLimit-Policy": f'"{policy}";q={burst};w={window}',
        "RateLimit": f'"{policy}";r={result.remaining};t={math.ceil(result.reset_after)}',
        "X-RateLimit-Limit": str(burst),
        "X-RateLimit-Remaining": str(result.remaining),
        "X-RateLimit-Reset": str(int(time.time() + math.ceil(result.reset_after))),
    }


# Key delivery (ETSI 014 / 004: views with ``rate_limit_scope = "keys"``) is machine-to-machine traffic whose
# volume is already bounded by the tenant's key-bit quota, by the KMEs' limits and, for 004 streams, by the
# stream's Max_bps shaping; a 004 stream at its default QoS (40 kbit/s in 32-byte chunks) alone is ~160
# get_key calls per second per SAE. So it gets its own, larger bucket per credential, and a burst of key
# requests never starves the same token's management calls (nor the other way round).
KEY_DELIVERY_RATE_PER_SECOND = 500.0
KEY_DELIVERY_BURST = 1000


def scope_limits(scope: str) -> tuple[float, int, str]:
    """(rate per second, burst, policy name) of a throttle scope; a rate of 0 disables the scope's limit."""
    if scope == "keys":
        return (float(getattr(settings, "KEY_DELIVERY_RATE_LIMIT_PER_SECOND", KEY_DELIVERY_RATE_PER_SECOND)),
                int(getattr(settings, "KEY_DELIVERY_RATE_LIMIT_BURST", KEY_DELIVERY_BURST)), "key-requests")
    return settings.API_RATE_LIMIT_PER_SECOND, settings.API_RATE_LIMIT_BURST, "requests"


def _take(scope: str, ident: str) -> tuple[BucketResult, dict[str, str]] | None:
    """One request of ``ident`` in ``scope``'s bucket and the headers to send; None when the scope is off."""
    rate, burst, policy = scope_limits(scope)
    if rate <= 0:
        return None
    result = limiter().take(f"{scope}:{ident}" if scope != "api" else ident, rate, burst)
    return result, rate_headers(result, rate, burst, policy)


def take(scope: str, ident: str) -> dict[str, str]:
    """One request of ``ident`` in ``scope``'s bucket outside DRF (the key gateway): the headers to send, or
    ``RateLimited`` (429 with them and Retry-After) when the bucket is empty. Same buckets and identities as
    ``TokenRateThrottle``."""
    from portal.errors import RateLimited

    taken = _take(scope, ident)
    if taken is None:
        return {}
    result, headers = taken
    if not result.allowed:
        rate, burst, policy = scope_limits(scope)
        raise RateLimited(f"too many requests: {policy} allows {burst} at once and {rate:g} a second",
                          headers={**headers, "Retry-After": str(math.ceil(result.retry_after))})
    return headers


class TokenRateThrottle(BaseThrottle):
    """DRF throttle: one bucket per API token (or per user for browser sessions, per SAE for SAE certificates,
    per IP when anonymous) and per scope (``rate_limit_scope`` of the view: ``api`` or ``keys``)."""

    def allow_request(self, request, view) -> bool:
        auth = request.auth
        if getattr(auth, "key", None):
            ident = f"token:{auth.key}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        taken = _take(getattr(view, "rate_limit_scope", "api"), ident)
        if taken is None:
            return True
        result, headers = taken
        # Seen by the middleware that puts these headers on every API response, errors included.
        request._request.ratelimit_headers = headers
        self._retry_after = result.retry_after
        return result.allowed

    def wait(self) -> float | None:
        return self._retry_after
