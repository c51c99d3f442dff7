"""A client for KMEs: ETSI GS QKD 014 (and 004 as REST), normalising vendors' dialects.

One ``requests.Session`` per node keeps TLS connections alive (connection pooling). Only calls that are
safe to repeat are retried: ``status`` (a read) is; ``enc_keys`` / ``dec_keys`` are not, because a key
that left the pool once must not be asked for twice. Every failure becomes one of two exceptions, so the
portal maps backend trouble in one place (``services.errors``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 15.0
STATUS_READ_TIMEOUT_S = 5.0  # a status is a read from memory: a KME that takes longer is in trouble


class KmeUnavailable(Exception):
    """The KME cannot serve now (unreachable, timeout, 5xx, not enough key): nothing was delivered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class KmeRejected(Exception):
    """The KME refused the request as malformed or unauthorised (4xx): the caller's request is at fault."""

    def __init__(self, message: str, *, status: int, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details


@dataclass(frozen=True)
class KmeEndpoint:
    base_url: str
    backend_sae_id: str  # who the portal is at this KME
    proxy_header: bool = False  # send X-SAE-ID (trusted proxy) instead of holding each SAE's certificate
    client_cert: tuple[str, str] | None = None
    ca_path: str | None = None


@dataclass(slots=True)
class DeliveredKey:
    key_id: str
    key: str  # base64, as on the wire; never logged or stored
    key_id_extension: dict | None = None

    @property
    def hops(self) -> int:
        ext = self.key_id_extension or {}
        return int(ext.get("hops", 0)) if isinstance(ext.get("hops", 0), int | str) else 0


@dataclass
class KmeClient:
    endpoint: KmeEndpoint
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def session(self) -> requests.Session:
        # requests.Session is not documented as thread-safe: one per thread, each with its own pool.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # a REQUESTS_CA_BUNDLE in the environment must not replace our CA
            session.verify = self.endpoint.ca_path or True
            if self.endpoint.client_cert:
                session.cert = self.endpoint.client_cert
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16,
                                  max_retries=Retry(total=2, connect=2, read=0, status=0, allowed_methods={"GET"},
                                                    backoff_factor=0.2))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._local.session = session
        return session

    def _headers(self, acting_as: str | None) -> dict[str, str]:
        if self.endpoint.proxy_header:
            return {"X-SAE-ID": acting_as or self.endpoint.backend_sae_id}
        return {}

    def _call(self, method: str, path: str, acting_as: str | None = None, read_timeout: float = READ_TIMEOUT_S,
              **kwargs: Any) -> Any:
        url = self.endpoint.base_url.rstrip("/") + path
        try:
            response = self.session.request(method, url, headers=self._headers(acting_as),
                                            timeout=(CONNECT_TIMEOUT_S, read_timeout), **kwargs)
        except requests.Timeout as exc:
            raise KmeUnavailable(f"the KME did not answer in time ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise KmeUnavailable(f"the KME is unreachable ({type(exc).__name__})") from None
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        return _answer(response.status_code, body, response.reason)

    # --- ETSI GS QKD 014 ----------------------------------------------------------------------------------------
    def status(self, slave_sae_id: str, *, acting_as: str | None = None) -> dict[str, Any]:
        return _normalise_status(self._call("GET", f"/api/v1/keys/{slave_sae_id}/status", acting_as,
                                            read_timeout=STATUS_READ_TIMEOUT_S))

    def enc_keys(self, slave_sae_id: str, *, number: int, size: int, additional_slave_sae_ids: list[str] | None = None,
                 acting_as: str | None = None) -> list[DeliveredKey]:
        body: dict[str, Any] = {"number": number, "size": size}
        if additional_slave_sae_ids:
            body["additional_slave_SAE_IDs"] = additional_slave_sae_ids
        return _keys(self._call("POST", f"/api/v1/keys/{slave_sae_id}/enc_keys", acting_as, json=body))

    def dec_keys(self, master_sae_id: str, key_ids: list[str], *, acting_as: str | None = None) -> list[DeliveredKey]:
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return _keys(self._call("POST", f"/api/v1/keys/{master_sae_id}/dec_keys", acting_as, json=body))

    # --- telemetry (twin and KMEs that expose it) -------------------------------------------------------------
    def topology(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/topology")

    # --- the twin's admin interface (fault injection; the portal's own certificate, never as an SAE) ---------
    def admin_link(self, link_id: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``/api/v1/admin/links/{link}/{action}`` (cut, restore, attack, clear-attack...); the link's
        telemetry after the change. Sent without X-SAE-ID: the twin takes the caller for the portal only then."""
        url = f"{self.endpoint.base_url.rstrip('/')}/api/v1/admin/links/{link_id}/{action}"
        try:
            response = self.session.post(url, json=body or {}, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except requests.RequestException as exc:
            raise KmeUnavailable(f"the twin is unreachable ({type(exc).__name__})") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return _answer(response.status_code, answer, response.reason)


def _answer(status: int, body: Any, reason: str | None) -> Any:
    """The body of a successful answer; otherwise the failure as one of the two exceptions."""
    if status == 200 and body is not None:
        return body
    message = body.get("message") if isinstance(body, dict) else None
    message = str(message or reason or "no message")[:500]
    details = body.get("details") if isinstance(body, dict) else None
    # Dialects: some KMEs answer 404/409/412 where ETSI 014 says 400, and 504 where it says 503.
    if status in (400, 401, 403, 404, 409, 412, 422):
        raise KmeRejected(message, status=status, details=details)
    raise KmeUnavailable(message, status=status)


class AsyncKmeClient:
    """The ETSI 014 key calls of ``KmeClient`` for asyncio (the key gateway): one aiohttp session per node,
    connections kept alive, same dialects and the same two exceptions. Key calls are never retried."""

    def __init__(self, endpoint: KmeEndpoint, connections: int = 64) -> None:
        import ssl

        import aiohttp

        self.endpoint = endpoint
        context = ssl.create_default_context(cafile=endpoint.ca_path) if endpoint.base_url.startswith("https") \
            else None
        if context is not None and endpoint.client_cert:
            context.load_cert_chain(*endpoint.client_cert)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context if context is not None else False, limit=connections),
            timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
            trust_env=False, raise_for_status=False)

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, path: str, body: dict[str, Any], acting_as: str | None) -> Any:
        import asyncio

        import aiohttp

        headers = {"X-SAE-ID": acting_as or self.endpoint.backend_sae_id} if self.endpoint.proxy_header else {}
        try:
            async with self._session.post(self.endpoint.base_url.rstrip("/") + path, json=body,
                                          headers=headers) as response:
                raw = await response.read()
                status, reason = response.status, response.reason
        except TimeoutError as exc:
            raise KmeUnavailable(f"the KME did not answer in time ({type(exc).__name__})") from None
        except (aiohttp.ClientError, asyncio.CancelledError, OSError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise KmeUnavailable(f"the KME is unreachable ({type(exc).__name__})") from None
        try:
            parsed = _json_loads(raw)
        except ValueError:
            parsed = None
        return _answer(status, parsed, reason)

    async def enc_keys(self, slave_sae_id: str, *, number: int, size: int,
                       additional_slave_sae_ids: list[str] | None = None,
                       acting_as: str | None = None) -> list[DeliveredKey]:
        body: dict[str, Any] = {"number": number, "size": size}
        if additional_slave_sae_ids:
            body["additional_slave_SAE_IDs"] = additional_slave_sae_ids
        return _keys(await self._call(f"/api/v1/keys/{slave_sae_id}/enc_keys", body, acting_as))

    async def dec_keys(self, master_sae_id: str, key_ids: list[str], *,
                       acting_as: str | None = None) -> list[DeliveredKey]:
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return _keys(await self._call(f"/api/v1/keys/{master_sae_id}/dec_keys", body, acting_as))


def _json_loads(raw: bytes) -> Any:
    return orjson.loads(raw)  # a JSONDecodeError is a ValueError, like json's


def _normalise_status(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise KmeUnavailable("the KME's status is not a JSON object")
    out = dict(body)
    for k in ("master_SAE_ID", "slave_SAE_ID", "source_KME_ID", "target_KME_ID"):
        if k in out and out[k] is not None:
            out[k] = str(out[k])  # some KMEs use integer SAE IDs
    return out


def _keys(body: Any) -> list[DeliveredKey]:
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        raise KmeUnavailable("the KME's key container has no 'keys' list")
    try:
        return [DeliveredKey(str(item["key_ID"]), item["key"], item.get("key_ID_extension")) for item in keys]
    except (TypeError, KeyError, AttributeError):  # not an object, or one without key_ID / key
        raise KmeUnavailable("the KME returned a malformed key") from None
