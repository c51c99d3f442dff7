from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from tenants.api.base import TenantScopedViewSet

from .. import services
from ..models import Tunnel
from .serializers import ProbeSerializer, TunnelCreateSerializer, TunnelSerializer

ERRORS = {
    400: OpenApiResponse(description="bad input (unknown node, subnet outside the node's pools or overlapping a "
                         "live tunnel, proposal not allowed, interval too short); nothing configured or charged"),
    403: OpenApiResponse(description="the token lacks tunnels:write"),
    429: OpenApiResponse(description="no free ipsec_tunnels slot (RateLimit-* headers)"),
    503: OpenApiResponse(description="IPsec unavailable: no gateway registered (the reason and the fix)"),
}


@extend_schema_view(
    list=extend_schema(summary="The tenant's IPsec tunnels: state, counters, key IDs in use"),
    retrieve=extend_schema(summary="One tunnel, with its re-key history (key IDs only)"),
    destroy=extend_schema(summary="Close the tunnel (same as POST .../close)", responses={202: TunnelSerializer}),
)
class TunnelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet):
    """Quantum-keyed site-to-site IPsec tunnels between two network nodes' gateways."""

    model = Tunnel
    serializer_class = TunnelSerializer
    read_scope = "tunnels:read"
    write_scope = "tunnels:write"
    lookup_field = "uuid"

    def scope_queryset(self, queryset):
        return queryset.order_by("-created_at").prefetch_related("key_events")

    @extend_schema(summary="Order a tunnel (provisioned in the background: poll its state)",
                   request=TunnelCreateSerializer, responses={202: TunnelSerializer, **ERRORS},
                   examples=[OpenApiExample("CAIT to Rectorado", request_only=True, value={
                       "node_a": "CAIT", "node_b": "Rectorado", "subnet_a": "10.100.1.0/24",
                       "subnet_b": "10.102.1.0/24", "rekey_interval_s": 3600})])
    def create(self, request):
        serializer = TunnelCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tunnel = services.order_tunnel(self.tenant, **serializer.validated_data)
        return Response(TunnelSerializer(tunnel).data, status=status.HTTP_202_ACCEPTED)

    def destroy(self, request, uuid=None):
        return self.close(request, uuid)

    @extend_schema(summary="Close: terminate, unload on both gateways, release the quota slot", request=None,
                   responses={202: TunnelSerializer, 409: OpenApiResponse(description="already ended")})
    @action(detail=True, methods=["post"])
    def close(self, request, uuid=None):
        tunnel = services.request_close(self.get_object())
        return Response(TunnelSerializer(tunnel).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(summary="A bounded connectivity test between the two tenant hosts", request=None,
                   responses={200: ProbeSerializer, 409: OpenApiResponse(description="the tunnel is not up")})
    @action(detail=True, methods=["post"])
    def probe(self, request, uuid=None):
        return Response(services.probe(self.get_object()))
