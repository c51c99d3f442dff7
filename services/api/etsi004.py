"""ETSI GS QKD 004 V2.1.1 northbound, as REST the way the Madrid SD-QKD stack exposes it:
``POST /api/etsi004/open_connect``, ``GET|POST /api/etsi004/get_key``, ``POST /api/etsi004/close``.

Callers are identified exactly as for ETSI 014 (``EtsiView.caller``): an SAE client certificate, or an API
token with ``keys:write`` plus ``X-SAE-ID``. 004 outcomes are HTTP 200 with the 004 ``status`` (0..8);
malformed requests, quota and backend trouble are HTTP errors with the ETSI body ``{"message", "details"}``.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from services import streams

from .etsi014 import ERROR, EtsiView

TAGS = ["ETSI GS QKD 004"]
STATUS_HELP = ("ETSI GS QKD 004 V2.1.1 status: 0 successful; 1 successful, peer not connected; 2 insufficient "
               "key (the chunk was handed to this SAE before, or it is not available yet and the tenant's get_key "
               "calls that may wait are all busy: ask again); 3 peer not yet connected; 4 no QKD connection (also "
               "for a stream that was closed or whose TTL passed); 5 Key_stream_ID in use; 6 timeout (no chunk "
               "within the QoS Timeout, granted as at most 1 s by default, ETSI004_MAX_TIMEOUT_MS); 7 QoS not met "
               "(counter-proposal in QoS); 8 metadata size "
               "insufficient (metadata_size_needed)")

QOS = inline_serializer("KeyStreamQoS", {
    "Key_chunk_size": serializers.IntegerField(required=False, help_text="bytes per chunk (default 32)"),
    "Max_bps": serializers.IntegerField(required=False), "Min_bps": serializers.IntegerField(required=False),
    "Jitter": serializers.IntegerField(required=False), "Priority": serializers.IntegerField(required=False),
    "Timeout": serializers.IntegerField(required=False, help_text="ms a get_key may wait for its chunk (granted as "
                                        "at most ETSI004_MAX_TIMEOUT_MS, 1000 by default)"),
    "TTL": serializers.IntegerField(required=False, help_text="seconds the stream lives"),
    "Metadata_mimetype": serializers.CharField(required=False)})
OPEN_REQUEST = inline_serializer("OpenConnectRequest", {
    "source": serializers.CharField(help_text="sae://<calling SAE>"),
    "destination": serializers.CharField(help_text="sae://<peer SAE of the same tenant>"),
    "QoS": QOS,
    "Key_stream_ID": serializers.UUIDField(required=False, help_text="to join a stream (peer), or to name a new one")})
OPEN_ANSWER = inline_serializer("OpenConnectAnswer", {
    "status": serializers.IntegerField(help_text=STATUS_HELP),
    "Key_stream_ID": serializers.UUIDField(allow_null=True), "QoS": QOS})
GET_KEY_REQUEST = inline_serializer("GetKeyRequest", {
    "Key_stream_ID": serializers.UUIDField(),
    "index": serializers.IntegerField(required=False, min_value=0,
                                      help_text="chunk index (default: the caller's next)"),
    "metadata_size": serializers.IntegerField(required=False, min_value=0,
                                              help_text="bytes the caller has for Metadata")})
GET_KEY_ANSWER = inline_serializer("GetKeyAnswer", {
    "status": serializers.IntegerField(help_text=STATUS_HELP),
    "Key_stream_ID": serializers.UUIDField(), "index": serializers.IntegerField(required=False),
    "key_buffer": serializers.CharField(required=False, help_text="the chunk, base64 (Key_chunk_size bytes)"),
    "Metadata": serializers.DictField(required=False), "message": serializers.CharField(required=False),
    "metadata_size_needed": serializers.IntegerField(required=False)})
CLOSE_REQUEST = inline_serializer("CloseRequest", {"Key_stream_ID": serializers.UUIDField()})
CLOSE_ANSWER = inline_serializer("CloseAnswer", {"status": serializers.IntegerField(help_text=STATUS_HELP),
                                                 "Key_stream_ID": serializers.UUIDField()})

KSID = "5f0c3c5e-8d0e-4d5e-9a49-2f4f7f0f4a11"
QOS_EXAMPLE = {"Key_chunk_size": 32, "Max_bps": 40000, "Min_bps": 5000, "Jitter": 10, "Priority": 0,
               "Timeout": 5000, "TTL": 3600, "Metadata_mimetype": "application/json"}
OPEN_EXAMPLES = [
    OpenApiExample("Open (initiator)", request_only=True,
                   value={"source": "sae://upm-cait", "destination": "sae://upm-rect", "QoS": QOS_EXAMPLE}),
    OpenApiExample("Join (peer)", request_only=True,
                   value={"source": "sae://upm-rect", "destination": "sae://upm-cait", "Key_stream_ID": KSID}),
    OpenApiExample("Opened, waiting for the peer", response_only=True,
                   value={"status": 1, "Key_stream_ID": KSID, "QoS": QOS_EXAMPLE}),
    OpenApiExample("QoS counter-proposal", response_only=True,
                   value={"status": 7, "Key_stream_ID": None, "QoS": {**QOS_EXAMPLE, "Min_bps": 1834,
                                                                      "Max_bps": 1834}}),
]
GET_KEY_EXAMPLES = [
    OpenApiExample("A chunk", response_only=True, value={
        "status": 0, "Key_stream_ID": KSID, "index": 0, "key_buffer": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s=",
        "Metadata": {"Key_stream_ID": KSID, "index": 0, "mimetype": "application/json", "hops": 2,
                     "path": ["CAIT", "CCS", "Rectorado"]}}),
    OpenApiExample("Peer not yet connected", response_only=True, value={"status": 3, "Key_stream_ID": KSID}),
]
RESPONSES = {400: ERROR, 401: ERROR, 403: ERROR, 429: ERROR, 503: ERROR}


class StreamView(EtsiView):
    required_scope = "keys:write"
    standard_statuses = False  # 004 has no HTTP binding of its own: the portal's 403/429 stay


class OpenConnectView(StreamView):
    @extend_schema(summary="ETSI 004 OPEN_CONNECT", tags=TAGS, request=OPEN_REQUEST,
                   responses={200: OPEN_ANSWER, **RESPONSES}, examples=OPEN_EXAMPLES,
                   description="Open a key stream to another SAE of the tenant (status 1), or join one as its "
                               "peer with the Key_stream_ID the initiator got (status 0).")
    def post(self, request):
        return Response(streams.open_connect(self.caller(request), self.body(request)))


class GetKeyView(StreamView):
    @extend_schema(summary="ETSI 004 GET_KEY", tags=TAGS, responses={200: GET_KEY_ANSWER, **RESPONSES},
                   parameters=[OpenApiParameter("Key_stream_ID", OpenApiTypes.UUID, required=True),
                               OpenApiParameter("index", {"type": "integer", "minimum": 0},
                                                description="chunk index (default: the next)"),
                               OpenApiParameter("metadata_size", {"type": "integer", "minimum": 0},
                                                description="bytes available for Metadata")],
                   examples=GET_KEY_EXAMPLES,
                   description="The chunk at index (both SAEs of the stream get the same bytes for an index). "
                               "Each index is metered once in qkd_key_bits, whichever SAE reads it first.")
    def get(self, request):
        return self._get_key(request, request.query_params)

    @extend_schema(summary="ETSI 004 GET_KEY (POST form)", tags=TAGS, request=GET_KEY_REQUEST,
                   responses={200: GET_KEY_ANSWER, **RESPONSES}, examples=GET_KEY_EXAMPLES)
    def post(self, request):
        return self._get_key(request, self.body(request))

    def _get_key(self, request, params) -> Response:
        caller = self.caller(request)
        return Response(streams.get_key(caller, params), headers={"Cache-Control": "no-store"})


class CloseView(StreamView):
    @extend_schema(summary="ETSI 004 CLOSE", tags=TAGS, request=CLOSE_REQUEST,
                   responses={200: CLOSE_ANSWER, **RESPONSES},
                   examples=[OpenApiExample("Close", request_only=True, value={"Key_stream_ID": KSID})])
    def post(self, request):
        return Response(streams.close(self.caller(request), self.body(request)))
