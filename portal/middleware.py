from __future__ import annotations

from django.conf import settings
from django.shortcuts import redirect
from django.urls import reverse


class RequireStaffMFAMiddleware:
    """Operators (staff) must enrol TOTP before using the web portal or the Django admin.

    allauth provides MFA but leaves "who must use it" to the project. API tokens are unaffected: a token
    is created from a session that already passed this gate.
    """

    EXEMPT_PREFIXES = ("/accounts/", "/static/", "/healthz", "/readyz", "/api/")

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
        ):
            from allauth.mfa.models import Authenticator

            if not Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists():
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
