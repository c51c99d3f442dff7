"""drf-spectacular: bearer-token authentication, and error responses that tell the whole truth.

Every operation documents the errors it can answer, decided once here from what its view declares
(authentication, permissions, tenant scopes, throttles, pagination, a request body or parameters), in the one
error shape of ``portal.errors`` (``{"error": {"code", "message", "details"}}``). Views declare only what this
cannot see, in ``error_reasons`` ({action or method: {status: why}}): a 409 from a service, or the business
rules for which they refuse input the schema allows (an unknown node, a plan still in use: the documented
reason of such a 400; the generic 400 means malformed input only). A declared response without a body gets
the error shape too. ETSI views keep their own error body (``{"message", "details"}``) and, on the 014 paths,
the standard's statuses only (200/400/401/503: ``services.etsi014.standard_status``).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.drainage import set_override
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import inline_serializer
from rest_framework import permissions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import DefaultContentNegotiation

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


ERROR = inline_serializer("Error", {"error": inline_serializer("ErrorBody", {
    "code": serializers.CharField(help_text="stable, machine-readable: e.g. invalid, not_found, quota_exceeded"),
    "message": serializers.CharField(help_text="for people"),
    "details": serializers.JSONField(required=False, help_text="per-field errors, limits, the required scope"),
})})

WHY = {
    "400": "bad input: a malformed body or parameter (`details` names each field); nothing was changed",
    "401": "no valid credential (a missing, unknown, expired or revoked token)",
    "403": "the credential may not do this: a missing scope (`details.required_scope`), a role that cannot "
           "write, a suspended tenant, or operators only",
    "404": "no such object for this credential (another tenant's objects are not found either), an unknown "
           "tenant (`X-Tenant`), or a page past the last",
    "406": "the Accept header asks for something other than JSON",
    "415": "the body is not JSON (`Content-Type: application/json`)",
    "429": "the token's request rate (Retry-After) or the tenant's quota (RateLimit headers); nothing was "
           "served or charged",
    "503": "a backend or one of the portal's own dependencies (database, cache, broker) is away; nothing was "
           "consumed (Retry-After)",
}
# The ETSI GS QKD 014 error body (services.etsi014.describe_etsi renders it; the ETSI views document it).
ETSI_ERROR = inline_serializer("EtsiError", {"message": serializers.CharField(), "details": serializers.ListField(
    child=serializers.DictField(), required=False)})
ETSI_WHY = {
    "400": "bad request (ETSI: also any other client error, e.g. a refused key ID)",
    "401": "no valid credential, or not entitled (ETSI: also a missing scope or a suspended tenant)",
    "503": "the KME or a dependency cannot serve now (ETSI: also a quota or rate limit, with Retry-After)",
}
ETSI_014_STATUSES = ("400", "401", "503")


class PortalAutoSchema(AutoSchema):
    """The project's AutoSchema (``DEFAULT_SCHEMA_CLASS``): adds every error status an operation can answer."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        etsi = hasattr(self.view, "standard_statuses")  # services.api.etsi014.EtsiView and its 004 subclasses
        error = ETSI_ERROR if etsi else ERROR
        if etsi and self.view.standard_statuses:
            codes = set(ETSI_014_STATUSES)
            for code in [c for c in responses if c[0] in "45" and c not in codes]:
                del responses[code]  # the 014 paths never answer it (standard_status maps it away)
        else:
            codes = self.error_statuses()
        operation = getattr(self.view, "action", None) or self.method.lower()
        for code, why in getattr(self.view, "error_reasons", {}).get(operation, {}).items():
            if str(code) not in responses:  # e.g. schema-valid input this operation refuses (400), and why
                responses[str(code)] = {"description": why}
        for code in sorted(codes):
            if code not in responses:
                responses[code] = {"description": (ETSI_WHY if etsi else WHY).get(code, WHY.get(code, ""))}
        for code, response in responses.items():
            if code[0] not in "45":
                continue
            why = (ETSI_WHY if etsi else WHY).get(code, WHY.get(code, ""))
            if "content" not in response:
                response.update(self._get_response_for_code(error, code, direction=direction),
                                description=response.get("description") or why)
            response["description"] = response.get("description") or why
        return dict(sorted(responses.items()))

    def map_parsers(self) -> list[str]:
        # The ETSI views read JSON whatever the Content-Type (AnyContentTypeJSONParser, "*/*"): documented as JSON.
        return list(dict.fromkeys("application/json" if m == "*/*" else m for m in super().map_parsers()))

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.ListField) and not field.allow_empty:
            schema["minItems"] = max(1, schema.get("minItems", 0))
        # the model's slug may be nullable (a draft invoice has no number); this field never is
        if (isinstance(field, serializers.RelatedField) and not field.read_only and not field.allow_null
                and isinstance(schema.get("type"), list)):
            kept = [t for t in schema["type"] if t != "null"]
            schema["type"] = kept[0] if len(kept) == 1 else kept
        return schema

    def error_statuses(self) -> set[str]:
        """The statuses this operation can answer besides its success, from what its view declares."""
        view, method = self.view, self.method
        perms = [type(p) for p in view.get_permissions()]
        public = bool(perms) and all(p is permissions.AllowAny for p in perms)
        tenant_view = hasattr(view, "tenant_context") or hasattr(type(view), "read_scope")
        has_body = method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        has_params = bool(self._get_parameters()) if hasattr(self, "_get_parameters") else False
        codes = {"503"}  # a dependency that is away answers 503 on any path (portal.errors.server_error)
        if view.get_authenticators():
            codes.add("401")  # a bad credential is refused even where none is needed
        if not public and (tenant_view or any(p not in (permissions.IsAuthenticated,) for p in perms)
                           or (method not in permissions.SAFE_METHODS
                               and any(isinstance(a, SessionAuthentication) for a in view.get_authenticators()))):
            codes.add("403")
        if has_body or has_params or tenant_view or method not in permissions.SAFE_METHODS:
            codes.add("400")
        if "{" in self.path or tenant_view or (self._is_list_view() and self._get_paginator() is not None):
            codes.add("404")
        if has_body:
            codes.add("415")
        if view.get_throttles():
            codes.add("429")
        if type(view.get_content_negotiator()).select_renderer is DefaultContentNegotiation.select_renderer:
            codes.add("406")  # an Accept header that JSON does not satisfy (e.g. Accept: text/html)
        return codes


def _any_or_null(node: Any) -> Any:
    """``oneOf [{}, {"type": "null"}]`` (drf-spectacular's nullable JSONField under OpenAPI 3.1) makes null match
    twice, so a null is invalid; ``{}`` already allows null."""
    if isinstance(node, dict):
        one_of = node.get("oneOf")
        if isinstance(one_of, list) and len(one_of) == 2 and {} in one_of and {"type": "null"} in one_of:
            node = {k: v for k, v in node.items() if k != "oneOf"}
        return {k: _any_or_null(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_any_or_null(v) for v in node]
    return node


def postprocess(result: dict, generator, request, public) -> dict:
    """``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]`` (after the enum hook)."""
    return _any_or_null(result)


class SessionRefusedScheme(BearerTokenScheme):
    """``SessionRefused`` adds no way in: the endpoint is documented with the bearer token alone (it shares the
    bearerAuth component, hence the collision warning switched off for it)."""

    target_class = "tenants.authentication.SessionRefused"

    def get_security_requirement(self, auto_schema):
        return None


set_override(SessionRefused, "suppress_collision_warning", True)
