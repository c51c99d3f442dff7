"""drf-spectacular: document bearer-token authentication in the OpenAPI schema."""

from drf_spectacular.drainage import set_override
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from .authentication import SessionRefused


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "qx_<key>.<secret>",
            "description": "An API token created in the portal (Tokens page) or with POST /api/tokens/.",
        }


class SessionRefusedScheme(BearerTokenScheme):
    """``SessionRefused`` adds no way in: the endpoint is documented with the bearer token alone (it shares the
    bearerAuth component, hence the collision warning switched off for it)."""

    target_class = "tenants.authentication.SessionRefused"

    def get_security_requirement(self, auto_schema):
        return None


set_override(SessionRefused, "suppress_collision_warning", True)
