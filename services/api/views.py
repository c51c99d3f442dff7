from __future__ import annotations

import base64

from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from portal.errors import BadRequest, sees_internal
from services import delivery, registry, saes
from services.models import KeyStream, QkdNode, Sae
from tenants.api.base import TenantAPIView, TenantScopedViewSet
from tenants.authentication import TOKEN_ONLY

from .etsi014 import key_response
from .serializers import (
    KeyStreamSerializer,
    PerHopKeysSerializer,
    QkdNodeSerializer,
    SaeBundleSerializer,
    SaeSerializer,
    SimpleKeySerializer,
)


def bundle_response(bundle: saes.SaeBundle, status_code: int = 200) -> Response:
    data = SaeBundleSerializer(bundle.sae).data
    data.update(certificate=bundle.certificate, private_key=bundle.private_key, ca_chain=bundle.ca_chain)
    return Response(data, status=status_code, headers={"Cache-Control": "no-store"})


@extend_schema_view(
    list=extend_schema(summary="The tenant's SAEs"),
    retrieve=extend_schema(summary="One SAE (never its private key)"),
    destroy=extend_schema(summary="Delete an SAE that has no delivered keys or key streams on record (else 409)"),
)
class SaeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantScopedViewSet):
    """Secure Application Entities: the tenant's endpoints of key delivery, each attached to a QKD node."""

    model = Sae
    serializer_class = SaeSerializer
    error_reasons = {"create": {400: "bad input: an unknown node, or a name that is not a valid SAE name",
                                409: "an SAE with this name exists in this tenant"},
                     "destroy": {409: "the SAE has delivered keys or key streams on record: revoke it instead"}}
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


@extend_schema_view(
    list=extend_schema(summary="The tenant's ETSI 004 key streams: state, QoS and chunk counters (never keys)",
                       parameters=[OpenApiParameter("state", OpenApiTypes.STR, enum=KeyStream.State.values,
                                                    description="only streams in this state"),
                                   OpenApiParameter("sae", OpenApiTypes.STR,
                                                    description="only streams with this SAE at either end")]),
    retrieve=extend_schema(summary="One key stream"),
)
class KeyStreamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """ETSI GS QKD 004 key streams of the tenant (opened with ``/api/etsi004/open_connect``)."""

    model = KeyStream
    serializer_class = KeyStreamSerializer
    read_scope = "keys:read"
    lookup_field = "ksid"  # the Key_stream_ID the tenant's SAEs use (unique per tenant)

    def scope_queryset(self, queryset):
        queryset = queryset.select_related("source", "destination").order_by("-created_at")
        if self.action != "list":
            return queryset
        state = self.request.query_params.get("state")
        if state is not None:
            if state not in KeyStream.State.values:
                raise BadRequest(f"state must be one of {', '.join(KeyStream.State.values)}")
            queryset = queryset.filter(state=state)
        sae = self.request.query_params.get("sae")
        if sae:
            queryset = queryset.filter(Q(source__name=sae) | Q(destination__name=sae))
        return queryset


class NodeListView(TenantAPIView):
    @extend_schema(summary="The QKD network's nodes (where SAEs can be attached)",
                   responses=QkdNodeSerializer(many=True))
    def get(self, request):
        registry.ensure_twin_registered()
        nodes = QkdNodeSerializer(QkdNode.objects.filter(enabled=True), many=True).data
        if not sees_internal(request):  # KME addresses are the operator's internals
            for node in nodes:
                node.pop("kme_url", None)
        return Response(nodes)


def _sae_or_node(tenant, value: str) -> Sae:
    """An SAE name of the tenant, or a node id (then the tenant's SAE at that node)."""
    sae = Sae.objects.for_tenant(tenant).select_related("node").filter(name=value).first()
    return sae or saes.default_sae(tenant, value)


MODES = ["end-to-end", "per-hop"]


class SimpleKeyView(TenantAPIView):
    """The simple REST interface for scripts: one call for a key, one for its peer copy."""

    authentication_classes = TOKEN_ONLY  # a GET that draws metered keys: no browser session (cross-site links)

    read_scope = "keys:write"  # getting a fresh key takes it out of the pool and is metered
    error_reasons = {"get": {400: "bad input: src or dst neither your SAE nor a node, src and dst at one node, or "
                                  "a size outside the KMEs' limits"}}

    @extend_schema(
        summary="Get a fresh key between two nodes (or two of your SAEs): end-to-end or one key per hop",
        description=(
            "mode=end-to-end (default): one key shared by src and dst, relayed by the trusted nodes on the way "
            "(hops says how many QKD links it crossed); the dst side fetches it with GET /api/qkd/keys/{key_ID}."
            "\n\nmode=per-hop: one key per QKD link along a fewest-hops path of links that are up, each between "
            "your SAEs at the link's two ends (an SAE is created at an intermediate node when you have none "
            "there); each hop's peer copy is fetched by its key_ID the same way. Charged hops x size bits, all "
            "or nothing."),
        parameters=[
            OpenApiParameter("src", {"type": "string", "minLength": 1}, required=True,
                             description="node id or your SAE (master)"),
            OpenApiParameter("dst", {"type": "string", "minLength": 1}, required=True,
                             description="node id or your SAE (slave)"),
            OpenApiParameter("size", {"type": "integer", "minimum": 8, "multipleOf": 8},
                             description="bits, multiple of 8 (default 256; at most the KMEs' max_key_size)"),
            OpenApiParameter("mode", OpenApiTypes.STR, enum=MODES, description="end-to-end (default) or per-hop"),
        ],
        responses=PolymorphicProxySerializer("SimpleKeyOrHopKeys", [SimpleKeySerializer, PerHopKeysSerializer],
                                             resource_type_field_name=None),
        examples=[OpenApiExample("Key CAIT->Rectorado", response_only=True, value={
            "key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139", "key": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s=",
            "size": 256, "hops": 2, "src": "node-cait", "dst": "node-rectorado"}),
            OpenApiExample("Per hop CAIT->Rectorado (mode=per-hop)", response_only=True, value={
                "mode": "per-hop", "size": 256, "src": "node-cait", "dst": "node-rectorado",
                "path": ["CAIT", "CCS", "Rectorado"], "hops": 2, "keys": [
                    {"from": "CAIT", "to": "CCS", "src": "node-cait", "dst": "node-ccs", "hops": 1,
                     "key_ID": "0f4f3d3e-33a1-4a86-9c55-6bd0d9b1f0a1",
                     "key": "3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
                    {"from": "CCS", "to": "Rectorado", "src": "node-ccs", "dst": "node-rectorado", "hops": 1,
                     "key_ID": "7a1c1a52-0d55-4b67-8f0e-1f2b6f5b9e11",
                     "key": "u7u7u7u7AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]})],
    )
    def get(self, request):
        src, dst = request.query_params.get("src"), request.query_params.get("dst")
        if not src or not dst:
            raise BadRequest("src and dst are required (node ids or your SAE names)")
        mode = request.query_params.get("mode", "end-to-end")
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}", details={"mode": mode[:40]})
        master, slave = _sae_or_node(self.tenant, src), _sae_or_node(self.tenant, dst)
        if mode == "per-hop":
            body = delivery.per_hop_keys(self.tenant, master, slave, request.query_params.get("size", 256),
                                         sae_at_node=lambda node_id: saes.default_sae(self.tenant, node_id))
            return key_response(body)
        # The peer copy stays at the slave's KME until the dst side fetches it by key ID.
        pair = delivery.take_key(self.tenant, master, slave, request.query_params.get("size", 256),
                                 reference=f"simple:{master.name}->{slave.name}", peer=False)
        return key_response({"key_ID": pair.key_id, "key": base64.b64encode(pair.key).decode(), "size": pair.size,
                             "hops": pair.hops, "src": master.name, "dst": slave.name})


class SimplePeerKeyView(TenantAPIView):
    authentication_classes = TOKEN_ONLY  # a GET that uses up the peer's copy: no browser session
    read_scope = "keys:read"
    error_reasons = {"get": {400: "no key with this ID for this tenant (never charged, or fetched already)"}}

    @extend_schema(summary="Get the peer copy of a key by its ID (the slave side)", responses=SimpleKeySerializer,
                   parameters=[OpenApiParameter("key_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
                   operation_id="qkd_peer_key_retrieve")
    def get(self, request, key_id: str):
        record, key = delivery.peer_key(self.tenant, key_id)
        return key_response({"key_ID": key["key_ID"], "key": key["key"], "size": record.size_bits,
                             "hops": record.hops, "src": record.master.name, "dst": record.slave.name})
