"""One error format for the whole API, mapped once.

Services raise these exceptions; ``api_exception_handler`` renders them (and DRF's own) as
``{"error": {"code": ..., "message": ..., "details": ...}}`` with the right status and headers.
ETSI endpoints render the same exceptions in the ETSI error format instead (services.etsi014.describe_etsi).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Base class: an error a client can act on."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    """The caller is known but not entitled to this (ETSI 014: a dec_keys caller not named in the key request)."""

    status_code = status.HTTP_401_UNAUTHORIZED
    code = "unauthorized"


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Forbidden(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class QuotaExceeded(ApiError):
    """The tenant's commercial entitlement is used up (429, with RateLimit headers)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "quota_exceeded"


class RateLimited(ApiError):
    """Too many requests for this token right now (429, Retry-After)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "rate_limited"


class ServiceUnavailable(ApiError):
    """A backend (KME, QRNG, strongSwan) cannot serve now; nothing was consumed."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"


_DRF_CODES = {
    drf_exceptions.ValidationError: "invalid",
    drf_exceptions.ParseError: "malformed_request",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "forbidden",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
}


def error_body(code: str, message: str, details: Any = None) -> dict:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def describe(exc: Exception) -> tuple[int, str, str, Any, dict[str, str]]:
    """(status, code, message, details, headers) for any exception the API may raise."""
    if isinstance(exc, ApiError):
        return exc.status_code, exc.code, exc.message, exc.details, dict(exc.headers)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        headers: dict[str, str] = {}
        if isinstance(exc, drf_exceptions.ValidationError):
            message, details = "The request is invalid; see details for each field.", exc.detail
        else:
            message, details = str(exc.detail), None
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait + 0.999))
        return exc.status_code, code, message, details, headers
    raise exc


def api_exception_handler(exc: Exception, context: dict):
    """DRF's EXCEPTION_HANDLER. (Imports are local: DRF loads this module while it is itself loading.)"""
    from rest_framework.response import Response
    from rest_framework.views import exception_handler as drf_exception_handler

    try:
        status_code, code, message, details, headers = describe(exc)
    except Exception:  # not ours: let DRF/Django produce the 500 (and log it)
        return drf_exception_handler(exc, context)
    return Response(error_body(code, message, details), status=status_code, headers=headers)
