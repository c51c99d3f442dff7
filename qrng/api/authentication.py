"""The ANU API's ``x-api-key`` header carrying a portal token, so ANU clients only change the base URL."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from tenants.tokens import InvalidToken, verify_token


class ApiKeyHeaderAuthentication(BaseAuthentication):
    """``x-api-key: qx_<key>.<secret>`` (the same token as ``Authorization: Bearer``)."""

    def authenticate(self, request):
        raw = request.headers.get("x-api-key")
        if not raw:
            return None
        try:
            token = verify_token(raw)
        except InvalidToken:
            raise AuthenticationFailed("Invalid, expired or revoked API token.") from None
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="qxaas"'


class ApiKeyHeaderScheme(OpenApiAuthenticationExtension):
    target_class = "qrng.api.authentication.ApiKeyHeaderAuthentication"
    name = "anuApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "x-api-key",
                "description": "a portal API token, as the ANU QRNG API's x-api-key (ANU-compatible endpoint)"}
