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
    """Base class: an error a client can act on.

    ``message`` is what every caller sees; ``internal`` (a backend's own words: URLs, SAE IDs, exception text) is
    logged under the request's ID (``portal.logs``, which also puts that ID in the error body) and shown to
    operators only. ``code`` overrides the class's stable code (e.g. ``kme_unavailable``).
    """

    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None,
                 internal: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.internal = internal
        if code is not None:
            self.code = code


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


RETRY_AFTER_S = 2  # what a 503 for a dependency that is restarting tells the client to wait


def dependency_unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 for an error that means one of the portal's own dependencies (PostgreSQL, Redis, the Celery
    broker) is briefly away, or None. Such a request changed nothing: its transaction was rolled back."""
    from django.db import InterfaceError, OperationalError
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, (OperationalError, InterfaceError)):
        name = "database"
    elif isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        name = "cache (Redis)"
    elif isinstance(exc, BrokerError):
        name = "task broker"
    else:
        return None
    logger.warning("%s unavailable: %s: %s", name, type(exc).__name__, exc)
    return ServiceUnavailable(f"the portal's {name} is unavailable; retry in a few seconds",
                              headers={"Retry-After": str(RETRY_AFTER_S)})


NUL_MESSAGE = "NUL characters (U+0000) are not accepted in parameters or bodies"


def is_nul_error(exc: BaseException) -> bool:
    """PostgreSQL cannot take a NUL character in text (psycopg refuses the query): a client's bad input, not a
    server error. Raised before the statement runs, so the request's transaction changed nothing."""
    from django.db import DataError

    return isinstance(exc, (ValueError, DataError)) and "NUL (0x00)" in str(exc)


def sees_internal(request) -> bool:
    """Operators see internal details (a backend's words, KME and appliance addresses): a staff user signed in,
    or through a token that carries the ``operator`` scope (a staff member's plain token is a tenant's view)."""
    user = getattr(request, "user", None)
    if not (user is not None and user.is_authenticated and user.is_staff):
        return False
    scopes = getattr(getattr(request, "auth", None), "scopes", None)
    return scopes is None or "operator" in scopes


def log_internal(exc: Exception) -> None:
    """Log what the client is not told; the log record carries the request ID the client is told
    (``portal.logs.ContextFilter``), so a tenant's report leads to these words."""
    internal = getattr(exc, "internal", None)
    if internal:
        logger.warning("%s (%s): %s", getattr(exc, "code", "error"), exc, internal)


def describe(exc: Exception) -> tuple[int, str, str, Any, dict[str, str]]:
    """(status, code, message, details, headers) for any exception the API may raise."""
    exc = dependency_unavailable(exc) or exc
    if is_nul_error(exc):
        exc = BadRequest(NUL_MESSAGE)
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
    log_internal(exc)
    body = error_body(code, message, details)  # portal.logs.RequestContextMiddleware adds error.request_id
    internal = getattr(exc, "internal", None)
    if internal and sees_internal(context.get("request")):
        body["error"]["internal"] = internal  # operators see the backend's own words
    return Response(body, status=status_code, headers=headers)


ETSI_PREFIXES = ("/api/v1/keys/", "/api/etsi004/")


def server_error(request):
    """handler500: a dependency that is away (PostgreSQL, Redis, the broker) is a 503 in the API's error shape
    (the ETSI shape on ETSI paths) with Retry-After, on any path; anything else is Django's plain 500."""
    import sys

    from django.http import JsonResponse
    from django.views import defaults

    unavailable = dependency_unavailable(sys.exc_info()[1]) if sys.exc_info()[1] else None
    if unavailable is None:
        return defaults.server_error(request)
    status_code, code, message, details, headers = describe(unavailable)
    # ETSI paths: the ETSI error shape ({"message"}), as services.etsi014.describe_etsi renders it.
    body = {"message": message} if request.path.startswith(ETSI_PREFIXES) else error_body(code, message, details)
    return JsonResponse(body, status=status_code, headers=headers)


def page_not_found(request, exception=None):
    """handler404: an /api/ URL that matches no route answers in the API's error shape (the ETSI shape on ETSI
    paths), as every other API error does; pages keep Django's own 404."""
    from django.http import JsonResponse
    from django.views import defaults

    if not request.path.startswith("/api/"):
        return defaults.page_not_found(request, exception)
    message = "no such API path (see /api/schema/)"
    body = {"message": message} if request.path.startswith(ETSI_PREFIXES) else error_body("not_found", message)
    return JsonResponse(body, status=404)
