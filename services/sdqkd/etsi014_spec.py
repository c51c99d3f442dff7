"""ETSI GS QKD 014 V1.1.1 as both the portal and the twin's KMEs read it: the standard's fixed error messages
and one rule for optional fields.

Optional means omittable, and ``null`` means absent: ``number: null`` is the default number, ``size: null``
the default size, ``additional_slave_SAE_IDs: []`` no additional slave, ``extension_mandatory: [{}]`` no
extension. Plain Python, no Django: the standalone twin imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The messages the standard fixes (its error tables), word for word.
SIZE_NOT_MULTIPLE_OF_8 = "size shall be a multiple of 8"
EXTENSION_UNSUPPORTED = "not all extension_mandatory parameters are supported"
EXTENSION_UNSUPPORTED_KEY = "extension_mandatory_unsupported"
KEYS_NOT_FOUND = "one or more keys specified are not found on KME"

# The only HTTP statuses the standard gives the 014 paths.
STATUSES = (200, 400, 401, 503)


class Etsi014Error(ValueError):
    """A request that breaks the 014 format: ``message`` and ``details`` (a list of objects)."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details or []


@dataclass(frozen=True)
class KeyRequestFields:
    """A key request's fields with ``null`` read as absent (``None``) and empty lists as none."""

    number: Any = None
    size: Any = None
    additional_slave_SAE_IDs: list[Any] = field(default_factory=list)
    extension_mandatory: list[dict[str, Any]] = field(default_factory=list)
    extension_optional: list[dict[str, Any]] = field(default_factory=list)


def _extensions(value: Any, name: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise Etsi014Error(f"{name} must be a list of objects", [{name: value}])
    return [e for e in value if e]  # [{}] names no extension


def key_request_fields(body: Any) -> KeyRequestFields:
    """The fields of an ``enc_keys`` body (POST) or of its query (GET: number and size only)."""
    if body is None:
        return KeyRequestFields()
    if not isinstance(body, dict):
        raise Etsi014Error("the key request must be a JSON object")
    additional = body.get("additional_slave_SAE_IDs")
    if additional is None:
        additional = []
    if not isinstance(additional, list) or not all(isinstance(s, str | int) and not isinstance(s, bool)
                                                   for s in additional):
        raise Etsi014Error("additional_slave_SAE_IDs must be a list of SAE IDs",
                           [{"additional_slave_SAE_IDs": additional}])
    return KeyRequestFields(body.get("number"), body.get("size"), [str(s) for s in additional],
                            _extensions(body.get("extension_mandatory"), "extension_mandatory"),
                            _extensions(body.get("extension_optional"), "extension_optional"))


def unsupported_mandatory(extensions: list[dict[str, Any]], supported: frozenset[str] | set[str]) -> list[str]:
    """The names of mandatory extensions this KME does not support (sorted); raise with ``EXTENSION_UNSUPPORTED``
    and ``{EXTENSION_UNSUPPORTED_KEY: names}`` when not empty."""
    return sorted({name for ext in extensions for name in ext if name not in supported})
