from rest_framework import serializers

from ..models import Tunnel, TunnelKeyEvent
from ..services import DEFAULT_ESP_PROPOSAL, ESP_PROPOSALS


class TunnelKeyEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TunnelKeyEvent
        fields = ["kind", "key_id", "key_bits", "ok", "error", "duration_ms", "ike_sa_id", "at"]


class TunnelCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, default="", allow_blank=True, help_text="your label")
    node_a = serializers.CharField(max_length=100, help_text="node of side A (its gateway initiates)")
    node_b = serializers.CharField(max_length=100, help_text="node of side B")
    subnet_a = serializers.CharField(max_length=50, help_text="your subnet behind node A (CIDR, in its pools)")
    subnet_b = serializers.CharField(max_length=50, help_text="your subnet behind node B (CIDR, in its pools)")
    esp_proposal = serializers.ChoiceField(choices=list(ESP_PROPOSALS), default=DEFAULT_ESP_PROPOSAL,
                                           help_text="ESP proposal; default AES-GCM-256")
    rekey_interval_s = serializers.IntegerField(required=False, help_text="seconds between re-keys with a fresh "
                                                "QKD key (default 3600; minimum IPSEC_MIN_REKEY_INTERVAL_S)")
    key_path = serializers.ChoiceField(choices=Tunnel.KeyPath.values, default=Tunnel.KeyPath.END_TO_END,
                                       help_text="end-to-end: one relayed key; per-hop: one key per QKD link")


class TunnelSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True, help_text="the tunnel's id (the order id)")
    key_events = serializers.SerializerMethodField(help_text="the last 20 keyings (key IDs only)")

    class Meta:
        model = Tunnel
        fields = ["id", "name", "state", "reason", "node_a", "node_b", "subnet_a", "subnet_b", "esp_proposal",
                  "rekey_interval_s", "key_path", "current_key_id", "rekey_count", "next_rekey_at",
                  "established_at", "bytes_in", "bytes_out", "packets_in", "packets_out", "counters_at", "probe",
                  "created_at", "activated_at", "closed_at", "key_events"]
        read_only_fields = fields

    def get_key_events(self, tunnel) -> list[dict]:
        return TunnelKeyEventSerializer(tunnel.key_events.all()[:20], many=True).data


class ProbeSerializer(serializers.Serializer):
    sent = serializers.IntegerField()
    lost = serializers.IntegerField()
    rtt_p50_ms = serializers.FloatField(allow_null=True)
    rtt_p99_ms = serializers.FloatField(allow_null=True)
    throughput_mbit_s = serializers.FloatField(allow_null=True, help_text="~1 MB of TCP through the tunnel")
    at = serializers.DateTimeField()
