"""The Django cache's serializer for Redis: JSON, not pickle.

Redis is a trust boundary (docs/operations.md, "Redis"): whoever can write to it must not be able to run code in
the portal's processes, which Django's default pickle serializer would allow (``pickle.loads`` of a planted
value). What the portal and its libraries cache is JSON already: flags and counters (``cache.add(key, 1)``, the
readiness probe's ``"1"``, allauth's ``True``/``"y"`` markers), and lists of timestamps (allauth's and DRF's
rate-limit histories). A value JSON cannot hold fails loudly at ``set`` (``TypeError``) instead of being pickled.
Integers stay plain Redis integers, as with Django's serializer, so ``incr``/``decr`` stay atomic.
"""

from __future__ import annotations

import json
from typing import Any


class JSONSerializer:
    """``CACHES["default"]["OPTIONS"]["serializer"]`` for ``django.core.cache.backends.redis.RedisCache``."""

    def dumps(self, obj: Any) -> int | bytes:
        if type(obj) is int:  # not bool: True must come back as True, not 1
            return obj
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes | int) -> Any:
        try:
            return int(data)
        except ValueError:
            return json.loads(data)
