from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import permissions
from rest_framework.response import Response
from rest_framework.views import APIView

from services.network import gateway_status, network_alarms, network_view, twin_admin
from tenants.api.base import IsOperator, TenantAPIView


class NetworkView(TenantAPIView):
    @extend_schema(
        summary="The QKD network: nodes, links and live link state (key rate, QBER, key-store fill)",
        responses={200: dict},
        examples=[OpenApiExample("madqci", response_only=True, value={
            "name": "madqci", "simulated": True, "telemetry": True,
            "nodes": [{"id": "CAIT", "site": "CAIT, UPM Montegancedo campus", "source": "twin"}],
            "links": [{"id": "ccs-rectorado", "endpoints": ["CCS", "Rectorado"], "technology": "dv-bb84-decoy",
                       "state": "up", "secret_key_rate_bps": 2.1e6, "qber": 0.011}]})],
    )
    def get(self, request):
        return Response(network_view(include_internal=request.user.is_staff))


class OperatorNetworkView(APIView):
    """The network with operator detail, its alarms and the node gateways' status (operators)."""

    permission_classes = [permissions.IsAuthenticated, IsOperator]

    @extend_schema(summary="Network operations: nodes with KME endpoints and gateways, links, alarms (operators)",
                   responses={200: dict})
    def get(self, request):
        view = network_view(include_internal=True)
        return Response({**view, "alarms": network_alarms(view), "gateways": gateway_status()})


class TwinLinkAdminView(APIView):
    """Fault injection on the embedded twin (operators): recorded in the audit log."""

    permission_classes = [permissions.IsAuthenticated, IsOperator]

    @extend_schema(
        summary="Cut or restore a twin link, add or clear an eavesdropper (operators; simulated network only)",
        request=dict, responses={200: dict},
        examples=[OpenApiExample("Eavesdropper", request_only=True, value={"intercept_resend_fraction": 0.5})],
    )
    def post(self, request, link_id: str, action: str):
        body = request.data if action == "attack" and isinstance(request.data, dict) and request.data else None
        return Response(twin_admin(link_id, action, body))
