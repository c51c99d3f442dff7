"""ETSI GS QKD 014 requests and errors as the portal reads them, once for both of its front ends: the DRF views
on the web listener (``services/api/etsi014.py``) and the key gateway (``services/gateway/app.py``).

The standard's own fixed messages and its rule for optional fields (shared with the twin) are
``services.sdqkd.etsi014_spec``; here is what the portal adds around them: the request body as a JSON object,
the enc_keys/dec_keys parameters of the GET and POST forms, and the portal's errors in the 014 error body.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework.parsers import JSONParser

from portal.errors import BadRequest, describe, log_internal

from .delivery import parse_key_ids


def request_object(data: Any) -> dict[str, Any]:
    """A decoded request body as the JSON object the standard sends: empty (``None``, ``""``, ``{}``) is ``{}``."""
    if data is None or data == "" or data == {}:
        return {}
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def parse_body(raw: bytes) -> dict[str, Any]:
    """``request_object`` of raw JSON bytes (the key gateway reads the body itself)."""
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None
    return request_object(data)


def enc_keys_params(query: Mapping[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of ``delivery.order_keys`` / ``delivery.enc_keys``: from the query for the GET form
    (``body`` None: number and size only), from the body for POST."""
    if body is None:
        return {"number": query.get("number"), "size": query.get("size")}
    return {"number": body.get("number"), "size": body.get("size"),
            "additional_slave_sae_ids": body.get("additional_slave_SAE_IDs"),
            "extension_mandatory": body.get("extension_mandatory")}


def dec_keys_ids(query: Mapping[str, str], body: dict[str, Any] | None) -> list[str]:
    """The key IDs a dec_keys request asks for: ``?key_ID=`` for the GET form (``body`` None), ``key_IDs`` in
    the body for POST."""
    if body is None:
        if not query.get("key_ID"):
            raise BadRequest("key_ID is required")
        given = query.getlist("key_ID") if hasattr(query, "getlist") else query.getall("key_ID", [])
        if len(given) > 1:  # the GET form takes one key ID: never silently the last of several
            raise BadRequest("the GET form of dec_keys takes one key_ID; use POST with key_IDs for several",
                             details=[{"key_ID": [str(k)[:40] for k in given[:8]]}])
        return parse_key_ids([{"key_ID": query["key_ID"]}])
    return parse_key_ids(body.get("key_IDs"))


class AnyContentTypeJSONParser(JSONParser):
    """The body as JSON whatever its Content-Type: the standard's clients send JSON as ``text/plain``, with curl's
    default ``application/x-www-form-urlencoded`` or with none, and a 415 is not one of 014's answers."""

    media_type = "*/*"


def standard_status(status_code: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Only 200, 400, 401 and 503 on the 014 paths, as the standard's tables give them: a refused scope or a
    suspended tenant (403) is 401, a quota or rate limit (429) is 503 with ``Retry-After`` and the quota
    headers (the portal's own API keeps 403 and 429), any other client error 400, any server error 503."""
    if status_code in (200, 400, 401, 503):
        return status_code, headers
    if status_code == 403:
        return 401, headers
    if status_code == 429:
        headers = dict(headers)
        if "Retry-After" not in headers:
            reset = headers.get("X-RateLimit-Reset")
            headers["Retry-After"] = str(max(1, math.ceil(int(reset) - time.time())) if reset else 1)
        return 503, headers
    return (503 if status_code >= 500 else 400), headers


def describe_etsi(exc: Exception, *, standard_statuses: bool = True) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) in the ETSI GS QKD 014 error format ``{"message", "details": [...]}``; re-raises
    what is not one of the portal's errors (as ``portal.errors.describe``). ``standard_statuses``: mapped to the
    014 paths' statuses (``standard_status``); the 004 views, which the standard gives no HTTP binding, keep
    the portal's."""
    status_code, _code, message, details, headers = describe(exc)
    log_internal(exc)  # a backend's own words: in the log under the request ID (X-Request-ID), not in the body
    body: dict[str, Any] = {"message": message}
    if details is not None:
        body["details"] = details if isinstance(details, list) else [details if isinstance(details, dict)
                                                                     else {"detail": details}]
    if standard_statuses:
        status_code, headers = standard_status(status_code, headers)
    return status_code, body, headers
