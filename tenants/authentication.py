"""DRF authentication by bearer API token."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from .models import ApiToken
from .tokens import InvalidToken, verify_token


def bearer_token(authorization: str | None) -> ApiToken | None:
    """The usable token of an ``Authorization: Bearer qx_<key>.<secret>`` header; None without a Bearer
    header; ``AuthenticationFailed`` for a malformed header or a bad token."""
    parts = (authorization or "").split()
    if not parts or parts[0].lower() != "bearer":
        return None
    if len(parts) != 2:
        raise AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
    try:
        return verify_token(parts[1])
    except InvalidToken:
        # One message for every failure: do not tell a guesser which part was right.
        raise AuthenticationFailed("Invalid, expired or revoked API token.") from None


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer qx_<key>.<secret>``; sets ``request.auth`` to the ``ApiToken``."""

    def authenticate(self, request):
        token = bearer_token(get_authorization_header(request).decode("ascii", errors="replace"))
        return None if token is None else (token.user, token)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="qxaas"'
