"""ETSI GS QKD 014 V1.1.1 northbound: the standard paths, for tenants' SAEs.

Callers authenticate with their SAE client certificate (mTLS on the HTTPS listener) or with an API token
(scopes ``keys:write`` for enc_keys, ``keys:read`` for status and dec_keys) plus ``X-SAE-ID`` naming one of
the tenant's SAEs. Errors use the ETSI body ``{"message": ..., "details": [...]}``.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.errors import ApiError, Forbidden
from services import delivery
from services.authentication import SaeCertificateAuthentication, token_calling_sae
from services.etsi014 import (
    AnyContentTypeJSONParser,
    dec_keys_ids,
    describe_etsi,
    enc_keys_params,
    request_object,
)
from services.models import Sae
from tenants.authentication import BearerTokenAuthentication
from tenants.models import ApiToken
from tenants.schema import ETSI_ERROR as ERROR
from tenants.tenancy import resolve_tenant


def etsi_exception_handler(exc: Exception, context: dict) -> Response | None:
    view = context.get("view")
    try:
        status_code, body, headers = describe_etsi(exc, standard_statuses=getattr(view, "standard_statuses", True))
    except Exception:
        return None
    return Response(body, status=status_code, headers=headers)


def key_response(body: dict[str, Any]) -> HttpResponse:
    """A response carrying key material: JSON rendered here, ``Cache-Control: no-store``.

    Not DRF's ``Response``: it keeps its data reachable from a reference cycle (response -> renderer context ->
    view -> response), so every key container (1024 keys: ~3,000 objects, key material included) outlived the
    request until the cyclic garbage collector ran, and those collections (full ones over the whole Django heap,
    ~100 ms each on the benchmark machine) were a large share of a batch request's cost. Here the container is
    freed as soon as it is encoded. Same JSON as DRF's renderer (compact separators, no NaN)."""
    return HttpResponse(json.dumps(body, separators=(",", ":"), allow_nan=False), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


KEY_CONTAINER = inline_serializer("KeyContainer", {"keys": serializers.ListField(child=serializers.DictField())})
EXAMPLE_KEYS = OpenApiExample("Key container", response_only=True, value={"keys": [{
    "key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139", "key": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s=",
    "key_ID_extension": {"hops": 2, "path": ["CAIT", "CCS", "Rectorado"]}}]})


class EtsiView(APIView):
    authentication_classes = [SaeCertificateAuthentication, BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [AnyContentTypeJSONParser]
    standard_statuses = True  # 014 paths answer only 200/400/401/503 (services.etsi014.standard_status)
    required_scope = "keys:read"
    rate_limit_scope = "keys"  # the key-delivery request bucket (tenants.ratelimit), not the management API's

    def get_exception_handler(self):
        return etsi_exception_handler

    def caller(self, request) -> Sae:
        if not isinstance(request.auth, Sae | ApiToken):
            raise Forbidden("an SAE certificate or an API token is required")
        ctx = resolve_tenant(request)  # the one place that decides the tenant (and refuses a suspended one)
        if isinstance(request.auth, Sae):
            return request.auth
        return token_calling_sae(ctx, request.headers.get("X-SAE-ID"), self.required_scope)

    @staticmethod
    def body(request) -> dict[str, Any] | None:
        """The request's JSON object; None for the GET form (its parameters are in the query)."""
        return None if request.method == "GET" else request_object(request.data)


STATUS = inline_serializer("KeyStatus", {
    "source_KME_ID": serializers.CharField(), "target_KME_ID": serializers.CharField(),
    "master_SAE_ID": serializers.CharField(), "slave_SAE_ID": serializers.CharField(),
    "key_size": serializers.IntegerField(), "stored_key_count": serializers.IntegerField(),
    "max_key_count": serializers.IntegerField(), "max_key_per_request": serializers.IntegerField(),
    "max_key_size": serializers.IntegerField(), "min_key_size": serializers.IntegerField(),
    "max_SAE_ID_count": serializers.IntegerField()})


class StatusView(EtsiView):
    @extend_schema(summary="ETSI 014 Get status", tags=["ETSI GS QKD 014"], responses={200: STATUS, 400: ERROR,
                   401: ERROR, 503: ERROR})
    def get(self, request, slave_sae_id: str):
        return Response(delivery.status(self.caller(request), slave_sae_id))

    @extend_schema(summary="ETSI 014 Get status (POST form, accepted for lenient clients)", tags=["ETSI GS QKD 014"],
                   request=None, responses={200: STATUS, 400: ERROR, 401: ERROR, 503: ERROR})
    def post(self, request, slave_sae_id: str):
        return self.get(request, slave_sae_id)


GET_KEY_PARAMS = [
    OpenApiParameter("number", {"type": "integer", "minimum": 1},
                     description="number of keys (default 1; at most max_key_per_request)"),
    OpenApiParameter("size", {"type": "integer", "minimum": 8, "multipleOf": 8},
                     description="key size in bits (multiple of 8, min_key_size..max_key_size; default key_size)"),
]


class EncKeysView(EtsiView):
    required_scope = "keys:write"

    @extend_schema(summary="ETSI 014 Get key (GET form)", tags=["ETSI GS QKD 014"], parameters=GET_KEY_PARAMS,
                   responses={200: KEY_CONTAINER, 400: ERROR, 401: ERROR, 503: ERROR},
                   examples=[EXAMPLE_KEYS])
    def get(self, request, slave_sae_id: str):
        return self._keys(request, slave_sae_id)

    @extend_schema(
        summary="ETSI 014 Get key", tags=["ETSI GS QKD 014"],
        request=inline_serializer("KeyRequest", {
            "number": serializers.IntegerField(required=False), "size": serializers.IntegerField(required=False),
            "additional_slave_SAE_IDs": serializers.ListField(child=serializers.CharField(), required=False),
            "extension_mandatory": serializers.ListField(child=serializers.DictField(), required=False),
            "extension_optional": serializers.ListField(child=serializers.DictField(), required=False)}),
        responses={200: KEY_CONTAINER, 400: ERROR, 401: ERROR, 503: ERROR},
        examples=[OpenApiExample("Two 256-bit keys", request_only=True, value={"number": 2, "size": 256}),
                  EXAMPLE_KEYS],
    )
    def post(self, request, slave_sae_id: str):
        return self._keys(request, slave_sae_id)

    def _keys(self, request, slave: str) -> HttpResponse:
        master = self.caller(request)
        return key_response(delivery.enc_keys(master, slave, **enc_keys_params(request.query_params,
                                                                                self.body(request))))


class DecKeysView(EtsiView):
    @extend_schema(summary="ETSI 014 Get key with key IDs (GET form)", tags=["ETSI GS QKD 014"],
                   parameters=[OpenApiParameter("key_ID", OpenApiTypes.UUID, required=True, description="a key ID")],
                   responses={200: KEY_CONTAINER, 400: ERROR, 401: ERROR, 503: ERROR}, examples=[EXAMPLE_KEYS])
    def get(self, request, master_sae_id: str):
        return self._keys(request, master_sae_id)

    @extend_schema(summary="ETSI 014 Get key with key IDs", tags=["ETSI GS QKD 014"],
                   request=inline_serializer("KeyIds", {
                       "key_IDs": serializers.ListField(allow_empty=False, child=inline_serializer("KeyId", {
                           "key_ID": serializers.UUIDField()}))}),
                   responses={200: KEY_CONTAINER, 400: ERROR, 401: ERROR, 503: ERROR}, examples=[EXAMPLE_KEYS])
    def post(self, request, master_sae_id: str):
        return self._keys(request, master_sae_id)

    def _keys(self, request, master: str) -> HttpResponse:
        slave = self.caller(request)
        return key_response(delivery.dec_keys(slave, master, dec_keys_ids(request.query_params, self.body(request))))


__all__ = ["ApiError", "DecKeysView", "EncKeysView", "StatusView"]
