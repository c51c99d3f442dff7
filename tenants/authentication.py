"""DRF authentication by API token: ``Authorization: Bearer <token>`` everywhere, and the ANU API's
``x-api-key: <token>`` header on the ANU-compatible entropy endpoint. Both carry the same portal token
(``qx_<key>.<secret>``) and are verified the same way. SAE client certificates (mTLS) are
``services.authentication``."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from .models import ApiToken
from .tokens import InvalidToken, verify_token

WWW_AUTHENTICATE = 'Bearer realm="qxaas"'


def _verified(raw: str) -> ApiToken:
    try:
        return verify_token(raw)
    except InvalidToken:
        # One message for every failure: do not tell a guesser which part was right.
        raise AuthenticationFailed("Invalid, expired or revoked API token.") from None


def bearer_token(authorization: str | None) -> ApiToken | None:
    """The usable token of an ``Authorization: Bearer qx_<key>.<secret>`` header; None without a Bearer
    header; ``AuthenticationFailed`` for a malformed header or a bad token."""
    parts = (authorization or "").split()
    if not parts or parts[0].lower() != "bearer":
        return None
    if len(parts) != 2:
        raise AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
    return _verified(parts[1])


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer qx_<key>.<secret>``; sets ``request.auth`` to the ``ApiToken``."""

    def authenticate(self, request):
        token = bearer_token(get_authorization_header(request).decode("ascii", errors="replace"))
        return None if token is None else (token.user, token)

    def authenticate_header(self, request) -> str:
        return WWW_AUTHENTICATE


class ApiKeyHeaderAuthentication(BaseAuthentication):
    """``x-api-key: qx_<key>.<secret>`` (the same token as ``Authorization: Bearer``), so ANU QRNG clients
    only change the base URL. Only the views that list it accept it."""

    def authenticate(self, request):
        raw = request.headers.get("x-api-key")
        if not raw:
            return None
        token = _verified(raw)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return WWW_AUTHENTICATE


class ApiKeyHeaderScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyHeaderAuthentication"
    name = "anuApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "x-api-key",
                "description": "a portal API token, as the ANU QRNG API's x-api-key (ANU-compatible endpoint)"}


class SessionRefused(BaseAuthentication):
    """Last in ``TOKEN_ONLY``: a request that reached it has no token; if it carries a signed-in browser
    session, say why that is not enough (instead of the generic 401)."""

    def authenticate(self, request):
        user = getattr(request._request, "user", None)
        if user is not None and user.is_authenticated:
            raise AuthenticationFailed("this GET takes keys or entropy out of the service: use an API token "
                                       "(Authorization: Bearer ...), not a browser session")
        return None

    def authenticate_header(self, request) -> str:
        return WWW_AUTHENTICATE


# For GETs that change state (a key or entropy drawn and metered): a browser's cookie, which any cross-site
# link would carry, is not accepted (no CSRF check protects a GET).
TOKEN_ONLY = [BearerTokenAuthentication, SessionRefused]
