from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from portal.errors import error_body


def has_totp(user) -> bool:
    """Whether ``user`` has enrolled a TOTP authenticator (allauth MFA)."""
    from allauth.mfa.models import Authenticator

    return Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()


def is_bearer_request(request) -> bool:
    """A request DRF authenticates by its Bearer token (tried before the session), not by the cookie."""
    parts = request.headers.get("Authorization", "").split()
    return bool(parts) and parts[0].lower() == "bearer"


class RequireStaffMFAMiddleware:
    """Operators (staff) must enrol TOTP before using the web portal, the Django admin or the API.

    allauth provides MFA but leaves "who must use it" to the project. ``request.user`` here is the session's
    user: a session-authenticated API request from staff without TOTP gets a JSON 403 (the one error shape).
    Bearer-token requests are unaffected: the ``operator`` scope can only be put on a token by staff with TOTP
    (``tenants.tokens.allowed_scopes``).
    """

    EXEMPT_PREFIXES = ("/accounts/", "/static/", "/healthz", "/readyz")

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            settings.QXAAS_REQUIRE_STAFF_MFA
            and user is not None
            and user.is_authenticated
            and user.is_staff
            and not request.path.startswith(self.EXEMPT_PREFIXES)
            and not (request.path.startswith("/api/") and is_bearer_request(request))
            and not has_totp(user)
        ):
            if request.path.startswith("/api/"):
                message = "staff must enrol TOTP before using the API with a session: /accounts/2fa/totp/activate"
                return JsonResponse(error_body("mfa_required", message), status=403)
            return redirect(reverse("mfa_activate_totp"))
        return self.get_response(request)


class RateLimitHeadersMiddleware:
    """Puts the per-token rate-limit headers the throttle computed on the API response (errors too)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        for name, value in getattr(request, "ratelimit_headers", {}).items():
            if name not in response:  # quota headers set by the view are more specific: keep them
                response[name] = value
        return response
