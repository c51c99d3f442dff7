from rest_framework import serializers

from tls.models import TlsRotation, TlsSession


class TlsSessionRequestSerializer(serializers.Serializer):
    """What a tenant orders (validated by ``tls.services.validate``; documented here)."""

    node_a = serializers.CharField(help_text="QKD node of the client side: you connect in plaintext there")
    node_b = serializers.CharField(help_text="QKD node of the server side, where the target is reachable")
    target = serializers.CharField(required=False, help_text="host:port of the service behind node B (managed: "
                                   "required; must be allowed by the operator and reachable now)")
    mode = serializers.ChoiceField(choices=TlsSession.Mode.choices, default="managed", required=False)
    key_size = serializers.IntegerField(default=256, required=False, help_text="PSK bits: 128, 192, 256, 384, 512")
    rotate_seconds = serializers.IntegerField(required=False, allow_null=True,
                                              help_text="a new QKD key every N seconds (at least TLS_MIN_ROTATE_"
                                              "SECONDS, default 10)")
    rotate_bytes = serializers.IntegerField(required=False, allow_null=True,
                                            help_text="a new QKD key after N bytes (counted when connections end; "
                                            "at least TLS_MIN_ROTATE_BYTES, default 1 MiB)")
    grace_seconds = serializers.IntegerField(required=False, help_text="old keys stay valid this long (1-3600)")


class TlsRotationSerializer(serializers.ModelSerializer):
    class Meta:
        model = TlsRotation
        fields = ["key_id", "size_bits", "reason", "created_at", "retired_at"]


class TlsSessionSerializer(serializers.ModelSerializer):
    """A session's state, endpoints and key IDs (never a key)."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    node_a = serializers.SlugRelatedField(slug_field="node_id", read_only=True)
    node_b = serializers.SlugRelatedField(slug_field="node_id", read_only=True)
    target = serializers.SerializerMethodField(help_text="host:port behind node B")
    psk_identity = serializers.CharField(source="key_id", read_only=True,
                                         help_text="the current QKD key ID, used as the TLS PSK identity")
    client_endpoint = serializers.SerializerMethodField(help_text="managed: connect here (plaintext) at node A")
    server_endpoint = serializers.SerializerMethodField(help_text="managed: B's TLS 1.3 PSK endpoint")
    sae_a = serializers.SlugRelatedField(slug_field="name", read_only=True,
                                         help_text="your SAE at node A the keys are delivered to")
    sae_b = serializers.SlugRelatedField(slug_field="name", read_only=True)
    master_sae = serializers.SlugRelatedField(
        source="sae_master", slug_field="name", read_only=True,
        help_text="bring-your-own: the master_SAE_ID the endpoints name in ETSI 014 dec_keys")
    rotations = TlsRotationSerializer(many=True, read_only=True, help_text="every key of the session, oldest first")

    class Meta:
        model = TlsSession
        fields = ["id", "state", "reason", "mode", "node_a", "node_b", "target", "key_size", "rotate_seconds",
                  "rotate_bytes", "grace_seconds", "psk_identity", "client_endpoint", "server_endpoint", "sae_a",
                  "sae_b", "master_sae", "restarts", "created_at", "activated_at", "rotated_at", "closed_at",
                  "rotations"]
        read_only_fields = fields

    def get_target(self, session: TlsSession) -> str | None:
        return f"{session.target_host}:{session.target_port}" if session.target_host else None

    def _endpoint(self, session: TlsSession, node_id: str, port: int | None) -> str | None:
        from tls.services import placement

        return f"{placement(node_id).address}:{port}" if port else None

    def get_client_endpoint(self, session: TlsSession) -> str | None:
        return self._endpoint(session, session.node_a.node_id, session.client_port)

    def get_server_endpoint(self, session: TlsSession) -> str | None:
        return self._endpoint(session, session.node_b.node_id, session.server_port)


class EndpointCredentialSerializer(serializers.Serializer):
    endpoint = serializers.ChoiceField(choices=["a", "b"], help_text="a: the client side; b: the server side")
    sae = serializers.CharField(help_text="the SAE ID of this endpoint of this session")
    certificate = serializers.CharField(help_text="its client certificate (PEM)")
    private_key = serializers.CharField(help_text="its private key (PEM); shown only in this response")
    ca_chain = serializers.CharField(help_text="the portal CA (PEM)")


class TlsSessionCreatedSerializer(TlsSessionSerializer):
    endpoint_credentials = EndpointCredentialSerializer(
        many=True, read_only=True, required=False,
        help_text="bring-your-own only: one credential per endpoint, scoped to it (shown once)")

    class Meta(TlsSessionSerializer.Meta):
        fields = [*TlsSessionSerializer.Meta.fields, "endpoint_credentials"]


class EndpointKeySerializer(serializers.Serializer):
    """What a bring-your-own endpoint asks the portal for: which key to fetch, never the key itself."""

    id = serializers.UUIDField(help_text="the session")
    state = serializers.CharField()
    endpoint = serializers.ChoiceField(choices=["a", "b"])
    psk_identity = serializers.CharField(help_text="the current key ID: the PSK identity, and the key_ID to fetch")
    master_SAE_ID = serializers.CharField(help_text="the master SAE to name in dec_keys")
    key_size = serializers.IntegerField(help_text="bits")
    dec_keys = serializers.CharField(help_text="the ETSI 014 path that returns this endpoint's copy of the key")
