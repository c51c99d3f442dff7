"""DRF authentication by bearer API token."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from .tokens import InvalidToken, verify_token


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer qx_<key>.<secret>``; sets ``request.auth`` to the ``ApiToken``."""

    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            token = verify_token(parts[1].decode("ascii", errors="replace"))
        except InvalidToken:
            # One message for every failure: do not tell a guesser which part was right.
            raise AuthenticationFailed("Invalid, expired or revoked API token.") from None
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="qxaas"'
