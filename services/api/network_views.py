from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.response import Response

from services.network import network_view
from tenants.api.base import TenantAPIView


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
