from __future__ import annotations

from uuid import UUID

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.errors import BadRequest, Conflict, Forbidden, NotFound
from services.authentication import SaeCertificateAuthentication, token_calling_sae
from services.models import Sae
from tenants.api.base import TenantScopedViewSet
from tenants.authentication import BearerTokenAuthentication
from tenants.models import ApiToken
from tenants.tenancy import resolve_tenant
from tls import services, tasks
from tls.models import TlsSession

from .serializers import (
    EndpointKeySerializer,
    TlsSessionCreatedSerializer,
    TlsSessionRequestSerializer,
    TlsSessionSerializer,
)

ERRORS = {
    400: OpenApiResponse(description="bad input: unknown node, unreachable or disallowed target, rotation too "
                         "short, bad mode or key size ({\"error\": {code, message, details}})"),
    403: OpenApiResponse(description="the token lacks tls:write, or the role cannot write"),
    429: OpenApiResponse(description="no free tls_sessions slot (RateLimit-Policy / RateLimit headers)"),
}
READ_ERRORS = {403: OpenApiResponse(description="the token lacks tls:read"),
               404: OpenApiResponse(description="no such session in this tenant")}
WRITE_ERRORS = {403: ERRORS[403], 404: READ_ERRORS[404]}


@extend_schema_view(
    list=extend_schema(summary="The tenant's TLS sessions (newest first; ?state= filters)",
                       responses={200: TlsSessionSerializer(many=True), 400: ERRORS[400], 403: READ_ERRORS[403]},
                       parameters=[OpenApiParameter("state", OpenApiTypes.STR, enum=TlsSession.State.values,
                                                    description="only sessions in this state")]),
    retrieve=extend_schema(summary="One TLS session: state, endpoints, key IDs of every rotation",
                           responses={200: TlsSessionSerializer, **READ_ERRORS}),
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
        if state is not None:
            if state not in TlsSession.State.values:
                raise BadRequest(f"state must be one of {', '.join(TlsSession.State.values)}")
            queryset = queryset.filter(state=state)
        return queryset

    @extend_schema(
        summary="Order a TLS session (provisioned by a worker: requested -> provisioning -> active)",
        request=TlsSessionRequestSerializer, responses={202: TlsSessionCreatedSerializer, **ERRORS},
        examples=[OpenApiExample("Managed, rotating every 60 s", request_only=True, value={
            "node_a": "CAIT", "node_b": "Rectorado", "target": "127.0.0.1:8080", "rotate_seconds": 60})])
    def create(self, request):
        if not isinstance(request.data, dict):
            raise BadRequest("the request body must be a JSON object")
        session, bundles = services.open_session(self.tenant, dict(request.data),
                                                 provision=lambda s: tasks.provision.delay(str(s.uuid)))
        session.refresh_from_db()  # provisioning may have run already (eager workers)
        data = TlsSessionSerializer(session).data
        if bundles:
            data["endpoint_credentials"] = [
                {"endpoint": end, "sae": b.sae.name, "certificate": b.certificate, "private_key": b.private_key,
                 "ca_chain": b.ca_chain} for end, b in zip("ab", bundles, strict=True)]
        return Response(data, status=202, headers={"Cache-Control": "no-store"})

    @extend_schema(summary="Close: stop the endpoints, remove the keys, free the slot", request=None,
                   responses={200: TlsSessionSerializer, 409: OpenApiResponse(description="already ended"),
                              **WRITE_ERRORS})
    @action(detail=True, methods=["post"])
    def close(self, request, uuid=None):
        session = self.get_object()
        session.tenant = self.tenant
        return Response(TlsSessionSerializer(services.close_for_tenant(session)).data)

    @extend_schema(summary="Rotate now: a new QKD key and PSK identity (established connections keep the old)",
                   request=None, responses={200: TlsSessionSerializer, **WRITE_ERRORS,
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


class EndpointKeyView(APIView):
    """Bring-your-own: an endpoint of a session asks which key is current, with its own credential (its SAE
    certificate, or an API token with keys:read naming the SAE in X-SAE-ID). It then fetches its copy of the
    key through ETSI 014 ``dec_keys``, which only this SAE can do, once."""

    authentication_classes = [SaeCertificateAuthentication, BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]
    rate_limit_scope = "keys"

    @extend_schema(summary="Bring-your-own endpoint: the current PSK identity and where to fetch its key",
                   tags=["tls"], responses={
                       200: EndpointKeySerializer, 401: OpenApiResponse(description="no credential"),
                       403: OpenApiResponse(description="a token without keys:read, or no X-SAE-ID"),
                       404: OpenApiResponse(description="not a session of this endpoint"),
                       409: OpenApiResponse(description="no key yet (still provisioning)")})
    def get(self, request, uuid=None):
        if isinstance(request.auth, Sae):
            resolve_tenant(request)
            caller = request.auth
        elif isinstance(request.auth, ApiToken):
            caller = token_calling_sae(resolve_tenant(request), request.headers.get("X-SAE-ID"), "keys:read")
        else:
            raise Forbidden("an SAE certificate or an API token is required")
        try:
            uuid = UUID(uuid)
        except ValueError:  # the URL's pattern lets any 32-36 hex digits and dashes through
            raise NotFound("no such TLS session for this endpoint") from None
        session = (TlsSession.objects.for_tenant(caller.tenant_id).select_related("sae_master")
                   .filter(uuid=uuid, mode=TlsSession.Mode.BYO).first())
        if session is None or caller.pk not in (session.sae_a_id, session.sae_b_id):
            raise NotFound("no such TLS session for this endpoint")  # another session's: the same answer
        if not session.key_id:
            raise Conflict(f"the session has no key yet (state {session.state})", details={"state": session.state})
        master = session.sae_master.name
        return Response({"id": session.uuid, "state": session.state,
                         "endpoint": "a" if caller.pk == session.sae_a_id else "b",
                         "psk_identity": session.key_id, "master_SAE_ID": master, "key_size": session.key_size,
                         "dec_keys": f"/api/v1/keys/{master}/dec_keys?key_ID={session.key_id}"})
