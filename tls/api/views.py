from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.response import Response

from portal.api.base import TenantScopedViewSet
from portal.errors import BadRequest, Conflict
from tls import services
from tls.models import TlsSession

from .serializers import TlsSessionRequestSerializer, TlsSessionSerializer

ERRORS = {
    400: OpenApiResponse(description="bad input: unknown node, unreachable or disallowed target, rotation too "
                         "short, bad mode or key size ({\"error\": {code, message, details}})"),
    403: OpenApiResponse(description="the token lacks tls:write, or the role cannot write"),
    429: OpenApiResponse(description="no free tls_sessions slot (RateLimit-Policy / RateLimit headers)"),
}


@extend_schema_view(
    list=extend_schema(summary="The tenant's TLS sessions (newest first; ?state= filters)"),
    retrieve=extend_schema(summary="One TLS session: state, endpoints, key IDs of every rotation"),
)
class TlsSessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Quantum-keyed TLS 1.3 sessions: QKD keys as external PSKs with X25519 (psk_dhe_ke)."""

    model = TlsSession
    serializer_class = TlsSessionSerializer
    read_scope = "tls:read"
    write_scope = "tls:write"
    lookup_field = "uuid"

    def scope_queryset(self, queryset):
        queryset = queryset.select_related("node_a", "node_b", "sae_a", "sae_b").prefetch_related("rotations")
        state = self.request.query_params.get("state") if self.action == "list" else None
        if state:
            if state not in TlsSession.State.values:
                raise BadRequest(f"state must be one of {', '.join(TlsSession.State.values)}")
            queryset = queryset.filter(state=state)
        return queryset

    @extend_schema(
        summary="Order a TLS session (provisioned by a worker: requested -> provisioning -> active)",
        request=TlsSessionRequestSerializer, responses={202: TlsSessionSerializer, **ERRORS},
        examples=[OpenApiExample("Managed, rotating every 60 s", request_only=True, value={
            "node_a": "CAIT", "node_b": "Rectorado", "target": "127.0.0.1:8080", "rotate_seconds": 60})])
    def create(self, request):
        if not isinstance(request.data, dict):
            raise BadRequest("the request body must be a JSON object")
        session = services.open_session(self.tenant, dict(request.data))
        session.refresh_from_db()  # provisioning may have run already (eager workers)
        return Response(TlsSessionSerializer(session).data, status=202)

    @extend_schema(summary="Close: stop the endpoints, remove the keys, free the slot", request=None,
                   responses={200: TlsSessionSerializer, 409: OpenApiResponse(description="already ended")})
    @action(detail=True, methods=["post"])
    def close(self, request, uuid=None):
        session = self.get_object()
        session.tenant = self.tenant
        return Response(TlsSessionSerializer(services.close_for_tenant(session)).data)

    @extend_schema(summary="Rotate now: a new QKD key and PSK identity (established connections keep the old)",
                   request=None, responses={200: TlsSessionSerializer,
                                            409: OpenApiResponse(description="not active, or no key now")})
    @action(detail=True, methods=["post"])
    def rotate(self, request, uuid=None):
        session = self.get_object()
        session.tenant = self.tenant
        if not services.rotate(session, "manual"):
            raise Conflict(f"the session cannot rotate now (state {session.state}; a key may be unavailable)",
                           details={"state": session.state})
        session.refresh_from_db()
        return Response(TlsSessionSerializer(session).data)
