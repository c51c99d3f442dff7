"""Request parameters and response shapes of the entropy API (validated here, drawn by ``qrng.delivery``)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from qrng import formats, quality
from qrng.models import QualityReport
from qrng.reports import MIN_REPORT_BYTES

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class EntropyQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=formats.FORMATS, default="hex")
    bytes = serializers.IntegerField(min_value=1, default=32,
                                     help_text="raw / hex / base64: bytes of entropy to deliver")
    count = serializers.IntegerField(min_value=1, max_value=formats.MAX_COUNT, default=1,
                                     help_text="numeric formats: how many numbers")
    min = serializers.IntegerField(min_value=INT64_MIN, max_value=INT64_MAX, required=False,
                                   help_text="format=int: smallest value (inclusive)")
    max = serializers.IntegerField(min_value=INT64_MIN, max_value=INT64_MAX, required=False,
                                   help_text="format=int: largest value (inclusive)")
    bits = serializers.ChoiceField(choices=formats.SEED_BITS, default=256, help_text="format=seed: 128 or 256")
    mean = serializers.FloatField(default=0.0, help_text="format=normal")
    stddev = serializers.FloatField(default=1.0, help_text="format=normal (> 0)")

    def validate(self, attrs: dict) -> dict:
        fmt = attrs["format"]
        limit = settings.QRNG_MAX_REQUEST_BYTES if fmt in formats.STREAM_ENCODINGS else None
        if limit is not None and attrs["bytes"] > min(limit, formats.MAX_STREAM_BYTES):
            raise serializers.ValidationError({"bytes": f"at most {min(limit, formats.MAX_STREAM_BYTES)} per request"})
        if fmt == "int":
            if "min" not in attrs or "max" not in attrs:
                raise serializers.ValidationError({"min": "format=int needs min and max"})
            if attrs["min"] > attrs["max"]:
                raise serializers.ValidationError({"min": "min must not exceed max"})
        if fmt == "normal" and not attrs["stddev"] > 0:
            raise serializers.ValidationError({"stddev": "must be positive"})
        return attrs

    def params(self) -> dict:
        """The parameters ``qrng.formats.render`` takes for this format."""
        d = self.validated_data
        fmt = d["format"]
        if fmt in formats.STREAM_ENCODINGS:
            return {"bytes": d["bytes"]}
        if fmt == "seed":
            return {"bits": d["bits"]}
        params = {"count": d["count"]}
        if fmt == "int":
            params.update(min=d["min"], max=d["max"])
        if fmt == "normal":
            params.update(mean=d["mean"], stddev=d["stddev"])
        return params


class AnuQuerySerializer(serializers.Serializer):
    length = serializers.IntegerField(min_value=1, max_value=formats.ANU_MAX_LENGTH)
    type = serializers.ChoiceField(choices=formats.ANU_TYPES, default="uint8")
    size = serializers.IntegerField(min_value=1, max_value=formats.ANU_MAX_SIZE, default=1,
                                    help_text="hex8 / hex16: bytes per hex block")


class SourceProvenanceSerializer(serializers.Serializer):
    source = serializers.CharField()
    kind = serializers.ChoiceField(choices=["device", "http", "twin"])
    simulated = serializers.BooleanField(help_text="true: a software PRNG standing in for a QRNG, not quantum")
    health = serializers.CharField(help_text="the source's SP 800-90B health state when the bytes were read")


class ProvenanceSerializer(serializers.Serializer):
    sources = SourceProvenanceSerializer(many=True)
    simulated = serializers.BooleanField()
    request_id = serializers.CharField()
    notice = serializers.CharField(required=False, help_text="present when the entropy is simulated")


class EntropyResponseSerializer(serializers.Serializer):
    format = serializers.CharField()
    data = serializers.JSONField(help_text="a hex or base64 string, a list of numbers, or the seed integer")
    hex = serializers.CharField(required=False, help_text="format=seed: the seed in hex (exact in JavaScript)")
    bytes_consumed = serializers.IntegerField(help_text="entropy bytes metered, rejected draws included")
    provenance = ProvenanceSerializer()


class AnuResponseSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=formats.ANU_TYPES)
    length = serializers.IntegerField()
    size = serializers.IntegerField(required=False)
    data = serializers.JSONField(help_text="integers (uint8/uint16) or hex strings (hex8/hex16)")
    success = serializers.BooleanField()
    provenance = ProvenanceSerializer()


class AlarmSerializer(serializers.Serializer):
    source = serializers.CharField()
    kind = serializers.CharField()
    simulated = serializers.BooleanField()
    test = serializers.CharField()
    sample_index = serializers.IntegerField()
    detail = serializers.CharField()
    at = serializers.DateTimeField()


class CapabilitiesSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["available", "unavailable"])
    reason = serializers.CharField(allow_null=True)
    formats = serializers.ListField(child=serializers.CharField())
    streamed_encodings = serializers.ListField(child=serializers.CharField())
    max_request_bytes = serializers.IntegerField(help_text="largest JSON (non-streamed) request")
    max_stream_bytes = serializers.IntegerField(help_text="largest streamed raw/hex/base64 request")
    max_count = serializers.IntegerField()
    sources = serializers.ListField(child=serializers.DictField(), help_text="name, kind, simulated, health, "
                                    "health_tests (RCT/APT cutoffs), last_alarm, last_error, priority, fallback")
    any_simulated = serializers.BooleanField()
    simulated_notice = serializers.CharField(allow_null=True)
    alarms = AlarmSerializer(many=True, help_text="health alarms not yet reset by an operator")
    pool = serializers.DictField(allow_null=True)
    quality_report = serializers.DictField()
    anu = serializers.DictField()


class QualityReportSerializer(serializers.ModelSerializer):
    class Meta:
        model = QualityReport
        fields = ["id", "state", "progress", "stage", "n_bytes", "source", "error", "result", "created_at",
                  "started_at", "finished_at"]
        read_only_fields = fields


class QualityReportCreateSerializer(serializers.Serializer):
    bytes = serializers.IntegerField(min_value=MIN_REPORT_BYTES, max_value=quality.MAX_REPORT_BYTES,
                                     default=quality.DEFAULT_REPORT_BYTES,
                                     help_text="bytes to draw and test (10^6-bit sequences of 125,000 bytes)")
    source = serializers.CharField(required=False, allow_blank=True, default="",
                                   help_text="one source by name (default: the pool, as requests are served)")


class SourceResetSerializer(serializers.Serializer):
    source = serializers.CharField()
    alarms_closed = serializers.IntegerField()
    health = serializers.CharField()
