"""The entropy API: thin views over ``qrng.delivery`` (metering), ``qrng.runtime`` and ``qrng.reports``."""

from __future__ import annotations

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.errors import error_body, sees_internal
from qrng import delivery, formats, quality, reports, runtime, tasks
from qrng.models import QualityReport
from qrng.service import SIMULATED_NOTICE, provenance_body, provenance_headers
from qrng.sources import EntropySourceError
from tenants.api.base import IsOperator, TenantAPIView, TenantScopedViewSet
from tenants.authentication import (
    TOKEN_ONLY,
    ApiKeyHeaderAuthentication,
    BearerTokenAuthentication,
    SessionRefused,
)

from .serializers import (
    AnuQuerySerializer,
    AnuResponseSerializer,
    CapabilitiesSerializer,
    EntropyQuerySerializer,
    EntropyResponseSerializer,
    QualityReportCreateSerializer,
    QualityReportSerializer,
    SourceResetSerializer,
)

SIMULATED_DOC = (
    "**Simulated entropy is labelled.** With no QRNG configured the source is the embedded network twin's "
    f"emulated QRNG. {SIMULATED_NOTICE} Every response says so: `X-Entropy-Simulated: true` and "
    "`provenance.simulated` (with a `notice`)."
)
PROVENANCE_DOC = (
    "Provenance headers on every success: `X-Entropy-Source`, `X-Entropy-Source-Kind`, `X-Entropy-Simulated`, "
    "`X-Entropy-Health`; `X-Request-Id` on every response (errors too)."
)
ERRORS = {
    400: OpenApiResponse(description="bad parameters, or format=int without min and max or with min above max, "
                                     "format=normal with stddev not above 0, bytes above the operator's "
                                     "QRNG_MAX_REQUEST_BYTES"),
    403: OpenApiResponse(description="the token lacks the `entropy:read` scope"),
    429: OpenApiResponse(description="entropy quota exhausted (RateLimit headers), the token's rate limit "
                                     "(Retry-After), or the tenant's streamed downloads at their concurrent "
                                     "limit (Retry-After); nothing was served or charged"),
    503: OpenApiResponse(description="no healthy entropy source can serve now (Retry-After); nothing was "
                                     "charged"),
}


class JsonOnlyNegotiation(BaseContentNegotiation):
    """Always JSON (or our own raw response): ``?format=`` names an entropy format here, not a renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type

    def select_parser(self, request, parsers):
        return parsers[0]


class EntropyViewMixin:
    """Scope ``entropy:read``, a request id and no caching on every response."""

    read_scope = "entropy:read"
    write_scope = "entropy:read"  # starting a quality report draws entropy too; there is no entropy:write
    content_negotiation_class = JsonOnlyNegotiation

    def initialize_request(self, request, *args, **kwargs):
        # The portal's own request ID (portal.logs: made by the server, never the client's) names the ledger row,
        # the X-Request-Id header and the request's log lines alike.
        self.request_id = getattr(request, "request_id", "") or delivery.new_request_id()
        return super().initialize_request(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["X-Request-Id"] = self.request_id
        response["Cache-Control"] = "no-store"  # entropy is served once: no cache may keep or replay it
        return response


ENTROPY_PARAMETERS = [
    OpenApiParameter("format", OpenApiTypes.STR, enum=list(formats.FORMATS), default="hex",
                     description="raw: application/octet-stream (streamed, for `curl -o`); hex/base64: JSON up "
                                 f"to {formats.MAX_REQUEST_BYTES} bytes, above that a streamed text/plain body; "
                                 "uint8..uint64: little-endian words; int: unbiased in [min, max] (Lemire "
                                 "multiply-shift with rejection); float: uniform in [0, 1) from 53 bits; normal: "
                                 "Box-Muller; seed: a 128/256-bit integer for numpy.random.SeedSequence"),
    OpenApiParameter("bytes", {"type": "integer", "minimum": 1, "maximum": formats.MAX_STREAM_BYTES},
                     description="raw/hex/base64: bytes to deliver (default 32; the operator may cap it lower: "
                                 "QRNG_MAX_REQUEST_BYTES)"),
    OpenApiParameter("count", {"type": "integer", "minimum": 1, "maximum": formats.MAX_COUNT},
                     description=f"numeric formats: 1..{formats.MAX_COUNT} (default 1)"),
    OpenApiParameter("min", {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                     description="format=int: smallest value (int64; required with format=int)"),
    OpenApiParameter("max", {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                     description="format=int: largest value (int64, at least min; required with format=int)"),
    OpenApiParameter("bits", OpenApiTypes.INT, enum=[128, 256], description="format=seed (default 256)"),
    OpenApiParameter("mean", OpenApiTypes.DOUBLE, description="format=normal (default 0)"),
    OpenApiParameter("stddev", OpenApiTypes.DOUBLE, description="format=normal (default 1)"),
]


class EntropyView(EntropyViewMixin, TenantAPIView):
    authentication_classes = TOKEN_ONLY  # a GET that draws metered entropy: no browser session (cross-site links)

    @extend_schema(
        summary="Draw health-tested QRNG entropy in a format (raw bytes streamed for curl -o)",
        description=(
            "Entropy from the operator's health-tested sources (NIST SP 800-90B continuous tests), each byte "
            "served once, to one request. Metered on `entropy_bytes`: exactly the bytes consumed, rejected "
            "integer draws included (`bytes_consumed`). Streamed responses reserve the requested bytes and give "
            "back what was not served if the download is cut. A tenant runs at most `QRNG_STREAMS_PER_TENANT` "
            "streamed downloads at once (2 by default; one more is a 429, nothing charged); a client that takes "
            "no chunk for `QRNG_STREAM_SEND_TIMEOUT_S` (30 s), or a download longer than "
            "`QRNG_STREAM_MAX_SECONDS` (900 s), is cut (the body is then shorter than Content-Length and the "
            "unserved bytes are given back).\n\n" + SIMULATED_DOC + "\n\n" + PROVENANCE_DOC
        ),
        parameters=ENTROPY_PARAMETERS,
        responses={
            (200, "application/json"): EntropyResponseSerializer,
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (200, "text/plain"): OpenApiTypes.STR,
            **ERRORS,
        },
        examples=[OpenApiExample("Dice", response_only=True, status_codes=["200"], value={
            "format": "int", "data": [3, 6, 1], "bytes_consumed": 12,
            "provenance": {"sources": [{"source": "twin", "kind": "twin", "simulated": True, "health": "healthy"}],
                           "simulated": True, "request_id": "5b0c...", "notice": SIMULATED_NOTICE}})],
    )
    def get(self, request):
        # A plain dict, not the QueryDict: DRF reads a form-style "format=" as absent (the default); here a
        # parameter given empty is refused, as the schema's enums and integers say.
        query = EntropyQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        fmt = query.validated_data["format"]
        n = query.validated_data["bytes"]
        if fmt == "raw" or (fmt in formats.STREAM_ENCODINGS and n > formats.MAX_REQUEST_BYTES):
            return self._stream(n, fmt)
        draw = delivery.draw(self.tenant, fmt, query.params(), self.request_id)
        return Response(draw.json_body(), headers=provenance_headers(draw.provenance, self.request_id))

    def _stream(self, n: int, encoding: str) -> StreamingHttpResponse:
        body = delivery.MeteredStream(self.tenant, n, encoding, self.request_id,
                                      sock=self.request.META.get("gunicorn.socket"))
        content_type = "application/octet-stream" if encoding == "raw" else "text/plain; charset=ascii"
        response = StreamingHttpResponse(body, content_type=content_type,
                                         headers=provenance_headers(body.provenance, self.request_id))
        response["Content-Length"] = str(body.content_length())  # a cut stream is visibly short to curl
        if encoding == "raw":
            response["Content-Disposition"] = f'attachment; filename="entropy-{self.request_id}.bin"'
        return response


class AnuView(EntropyViewMixin, TenantAPIView):
    """ANU QRNG compatible: existing ANU clients work by changing the base URL (and sending a token)."""

    authentication_classes = [BearerTokenAuthentication, ApiKeyHeaderAuthentication, SessionRefused]

    @extend_schema(
        summary="ANU QRNG compatible entropy: {type, length, data, success}",
        description=(
            "The ANU QRNG JSON API shape (`?length=&type=uint8|uint16|hex8|hex16&size=`) so existing ANU "
            "clients work by pointing them here; authenticate with `Authorization: Bearer` or the new ANU "
            "API's `x-api-key` header (the same portal token). `hex8`/`hex16` return `length` hex strings of "
            "`size` bytes each. Errors carry `success: false` and `message` besides the portal's `error`. "
            "Also served at `/api/entropy/anu/API/jsonI.php` (the legacy ANU path). Metered on "
            "`entropy_bytes`.\n\n" + SIMULATED_DOC + "\n\n" + PROVENANCE_DOC
        ),
        parameters=[
            OpenApiParameter("length", {"type": "integer", "minimum": 1, "maximum": formats.ANU_MAX_LENGTH},
                             required=True, description=f"1..{formats.ANU_MAX_LENGTH} values"),
            OpenApiParameter("type", OpenApiTypes.STR, enum=list(formats.ANU_TYPES), default="uint8"),
            OpenApiParameter("size", {"type": "integer", "minimum": 1, "maximum": formats.ANU_MAX_SIZE},
                             description=f"hex8/hex16: bytes per block, 1..{formats.ANU_MAX_SIZE}"),
        ],
        responses={200: AnuResponseSerializer, **ERRORS},
        examples=[OpenApiExample("uint8", response_only=True, status_codes=["200"], value={
            "type": "uint8", "length": 3, "data": [17, 250, 3], "success": True,
            "provenance": {"sources": [{"source": "twin", "kind": "twin", "simulated": True, "health": "healthy"}],
                           "simulated": True, "request_id": "5b0c...", "notice": SIMULATED_NOTICE}})],
    )
    def get(self, request, **kwargs):
        query = AnuQuerySerializer(data=request.query_params.dict())  # "type=" refused, not read as absent
        query.is_valid(raise_exception=True)
        d = query.validated_data
        draw = delivery.anu(self.tenant, d["length"], d["type"], d["size"], self.request_id)
        body = {**draw.value, "provenance": provenance_body(draw.provenance, self.request_id)}
        return Response(body, headers=provenance_headers(draw.provenance, self.request_id))

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if isinstance(response.data, dict) and "error" in response.data:  # ANU clients look at success/message
            response.data = {**formats.anu_error(response.data["error"]["message"]), **response.data}
        return response


class AnuLegacyPathView(AnuView):
    """The same endpoint at the legacy ANU path (``.../API/jsonI.php``), kept out of the schema."""

    @extend_schema(exclude=True)
    def get(self, request, **kwargs):
        return super().get(request, **kwargs)


class CapabilitiesView(EntropyViewMixin, TenantAPIView):
    @extend_schema(
        summary="Entropy formats, limits, sources with health state and whether simulated, open alarms",
        description=(
            "What this portal serves and from where: formats and per-request limits, every configured source "
            "with its SP 800-90B health state and test cutoffs, whether it is simulated, health alarms not yet "
            "reset, and the pool. `state` is `unavailable` (with `reason`) when no source can serve.\n\n"
            + SIMULATED_DOC
        ),
        responses={200: CapabilitiesSerializer, 403: ERRORS[403]},
    )
    def get(self, request):
        body = runtime.capabilities(include_internal=sees_internal(request))  # source locations: operators only
        return Response(body, headers={"X-Entropy-Simulated": "true" if body["any_simulated"] else "false"})


class SourceResetView(EntropyViewMixin, APIView):
    permission_classes = [permissions.IsAuthenticated, IsOperator]

    @extend_schema(
        summary="Operators: reset an entropy source stopped by a health test (reruns its start-up test)",
        request=None, responses={200: SourceResetSerializer, 400: ERRORS[400], 503: ERRORS[503]},
    )
    def post(self, request, name: str):
        try:
            closed = runtime.reset_source(name, request.user)
            source = runtime.get_service().sources.get(name)
        except EntropySourceError as exc:
            raise delivery.as_api_error(exc) from exc
        return Response({"source": name, "alarms_closed": closed, "health": source.health})


class QualityReportViewSet(EntropyViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Quality reports of the tenant's entropy: a Celery job draws N bytes and runs a statistical battery."""

    model = QualityReport
    serializer_class = QualityReportSerializer
    lookup_value_regex = "[0-9a-f-]{36}"

    @extend_schema(summary="The tenant's quality reports (newest first)")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="One quality report: state, progress, and when done the per-test p-values")
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Start a quality report (SP 800-22 subset + SP 800-90B MCV estimate) as a background job",
        description=(
            "Draws `bytes` from the pool (or one `source`) and tests them in 10^6-bit sequences; poll the "
            "report for `progress`. The bytes are tested and dropped, never delivered or stored, but they leave "
            "the shared pool: the bytes drawn (`bytes` rounded down to whole sequences) are charged to "
            "`entropy_bytes`, once per report (429 at once when they would not fit the quota). One report per "
            "tenant runs at a time (409 otherwise), on the workers' own `quality` queue. " + SIMULATED_DOC
        ),
        request=QualityReportCreateSerializer,
        responses={202: QualityReportSerializer, 400: ERRORS[400], 409: OpenApiResponse(
            description="another report of this tenant is still running"), 429: OpenApiResponse(
            description="the report's bytes would exceed the `entropy_bytes` quota (RateLimit headers), or the "
                        "token's rate limit; nothing was queued or charged")},
    )
    def create(self, request):
        body = QualityReportCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        report = reports.start_report(self.tenant, body.validated_data["bytes"], body.validated_data["source"],
                                      request.user, enqueue=tasks.run_quality_report.delay)
        return Response(QualityReportSerializer(report).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(summary="The report's p-values per test as an SVG plot",
                   responses={(200, "image/svg+xml"): OpenApiTypes.STR, 409: OpenApiResponse(
                       description="the report is not done")})
    def plot(self, request, pk=None):
        report = self.get_object()
        if report.state != QualityReport.State.DONE:
            return Response(error_body("conflict", f"the report is {report.state}, not done"), status=409)
        return HttpResponse(quality.report_svg(report.result), content_type="image/svg+xml")
