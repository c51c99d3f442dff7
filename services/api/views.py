from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from portal.api.base import TenantAPIView, TenantScopedViewSet
from portal.errors import BadRequest
from services import delivery, registry, saes
from services.models import KeyDelivery, QkdNode, Sae

from .serializers import QkdNodeSerializer, SaeBundleSerializer, SaeSerializer, SimpleKeySerializer


def bundle_response(bundle: saes.SaeBundle, status_code: int = 200) -> Response:
    data = SaeBundleSerializer(bundle.sae).data
    data.update(certificate=bundle.certificate, private_key=bundle.private_key, ca_chain=bundle.ca_chain)
    return Response(data, status=status_code, headers={"Cache-Control": "no-store"})


@extend_schema_view(
    list=extend_schema(summary="The tenant's SAEs"),
    retrieve=extend_schema(summary="One SAE (never its private key)"),
    destroy=extend_schema(summary="Delete an SAE that has no delivered keys on record"),
)
class SaeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet):
    """Secure Application Entities: the tenant's endpoints of key delivery, each attached to a QKD node."""

    model = Sae
    serializer_class = SaeSerializer
    read_scope = "keys:read"
    write_scope = "keys:write"

    def scope_queryset(self, queryset):
        return queryset.select_related("node")

    @extend_schema(summary="Register an SAE on a node; the response carries its certificate bundle, once",
                   request=SaeSerializer, responses={201: SaeBundleSerializer},
                   examples=[OpenApiExample("SAE at CAIT", request_only=True,
                                            value={"name": "lab-cait", "node": "CAIT"})])
    def create(self, request):
        serializer = SaeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        d = serializer.validated_data
        bundle = saes.register_sae(self.tenant, d["name"], d["node"].node_id, d.get("description", ""))
        return bundle_response(bundle, status.HTTP_201_CREATED)

    @extend_schema(summary="Issue a new certificate (the old one stops working); bundle shown once", request=None,
                   responses=SaeBundleSerializer)
    @action(detail=True, methods=["post"])
    def certificate(self, request, pk=None):
        return bundle_response(saes.reissue_certificate(self.get_object()))

    @extend_schema(summary="Revoke the SAE's certificate", request=None, responses=SaeSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        sae = self.get_object()
        saes.revoke_certificate(sae)
        return Response(SaeSerializer(sae).data)

    def perform_destroy(self, instance):
        saes.delete_sae(instance)


class NodeListView(TenantAPIView):
    @extend_schema(summary="The QKD network's nodes (where SAEs can be attached)",
                   responses=QkdNodeSerializer(many=True))
    def get(self, request):
        registry.ensure_twin_registered()
        return Response(QkdNodeSerializer(QkdNode.objects.filter(enabled=True), many=True).data)


def _sae_or_node(tenant, value: str) -> Sae:
    """An SAE name of the tenant, or a node id (then the tenant's SAE at that node)."""
    sae = Sae.objects.for_tenant(tenant).select_related("node").filter(name=value).first()
    return sae or saes.default_sae(tenant, value)


class SimpleKeyView(TenantAPIView):
    """The simple REST interface for scripts: one call for a key, one for its peer copy."""

    read_scope = "keys:write"  # getting a fresh key takes it out of the pool and is metered

    @extend_schema(
        summary="Get a fresh key between two nodes (or two of your SAEs)",
        parameters=[
            OpenApiParameter("src", OpenApiTypes.STR, required=True, description="node id or your SAE (master)"),
            OpenApiParameter("dst", OpenApiTypes.STR, required=True, description="node id or your SAE (slave)"),
            OpenApiParameter("size", OpenApiTypes.INT, description="bits, multiple of 8 (default 256)"),
        ],
        responses=SimpleKeySerializer,
        examples=[OpenApiExample("Key CAIT->Rectorado", response_only=True, value={
            "key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139", "key": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s=",
            "size": 256, "hops": 2, "src": "node-cait", "dst": "node-rectorado"})],
    )
    def get(self, request):
        src, dst = request.query_params.get("src"), request.query_params.get("dst")
        if not src or not dst:
            raise BadRequest("src and dst are required (node ids or your SAE names)")
        master, slave = _sae_or_node(self.tenant, src), _sae_or_node(self.tenant, dst)
        container = delivery.enc_keys(master, slave.name, number=1, size=request.query_params.get("size", 256))
        key = container["keys"][0]
        hops = (key.get("key_ID_extension") or {}).get("hops", 1)
        return Response({"key_ID": key["key_ID"], "key": key["key"], "size": int(request.query_params.get("size", 256)),
                         "hops": hops, "src": master.name, "dst": slave.name}, headers={"Cache-Control": "no-store"})


class SimplePeerKeyView(TenantAPIView):
    read_scope = "keys:read"

    @extend_schema(summary="Get the peer copy of a key by its ID (the slave side)", responses=SimpleKeySerializer,
                   operation_id="qkd_peer_key_retrieve")
    def get(self, request, key_id: str):
        ids = delivery.parse_key_ids([key_id])
        record = KeyDelivery.objects.for_tenant(self.tenant).select_related("master", "slave", "slave__node",
                                                                           "master__node").filter(key_id=ids[0]).first()
        if record is None:
            raise BadRequest("key ID not found")
        container = delivery.dec_keys(record.slave, record.master.name, ids)
        key = container["keys"][0]
        return Response({"key_ID": key["key_ID"], "key": key["key"], "size": record.size_bits,
                         "hops": record.hops, "src": record.master.name, "dst": record.slave.name},
                        headers={"Cache-Control": "no-store"})
