"""ETSI GS QKD 014 requests and errors as the portal reads them, once for both of its front ends: the DRF views
on the web listener (``services/api/etsi014.py``) and the key gateway (``services/gateway/app.py``).

The standard's own fixed messages and its rule for optional fields (shared with the twin) are
``services.sdqkd.etsi014_spec``; here is what the portal adds around them: the request body as a JSON object,
the enc_keys/dec_keys parameters of the GET and POST forms, and the portal's errors in the 014 error body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from portal.errors import BadRequest, describe

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
        return parse_key_ids([{"key_ID": query["key_ID"]}])
    return parse_key_ids(body.get("key_IDs"))


def describe_etsi(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) in the ETSI GS QKD 014 error format ``{"message", "details": [...]}``; re-raises
    what is not one of the portal's errors (as ``portal.errors.describe``)."""
    status_code, _code, message, details, headers = describe(exc)
    body: dict[str, Any] = {"message": message}
    if details is not None:
        body["details"] = details if isinstance(details, list) else [details if isinstance(details, dict)
                                                                     else {"detail": details}]
    return status_code, body, headers
