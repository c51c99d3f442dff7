"""Errors as values the HTTP layer renders once: ETSI 014 bodies ``{"message", "details"}``."""

from __future__ import annotations

from typing import Any


class TwinError(Exception):
    """A request the KME refuses; ``status`` is the HTTP code, ``details`` the ETSI details list."""

    status = 400

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(TwinError):
    status = 400


class Unauthorized(TwinError):
    status = 401


class KeyUnavailable(TwinError):
    """Not enough key material or no usable path: ETSI 014 maps server-side shortage to 503."""

    status = 503


class TopologyError(ValueError):
    """An invalid topology file, located by line and field."""

    def __init__(self, source: str, line: int | None, field: str, message: str):
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {field}: {message}")
        self.source = source
        self.line = line
        self.field = field
        self.message = message
