from rest_framework import serializers

from services.models import KeyStream, QkdNode, Sae


class SaeSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="node_id", queryset=QkdNode.objects.filter(enabled=True))
    has_certificate = serializers.SerializerMethodField()

    class Meta:
        model = Sae
        fields = ["id", "name", "node", "description", "has_certificate", "cert_fingerprint", "cert_not_after",
                  "created_at"]
        read_only_fields = ["id", "has_certificate", "cert_fingerprint", "cert_not_after", "created_at"]

    def get_has_certificate(self, sae: Sae) -> bool:
        return bool(sae.cert_serial)


class SaeBundleSerializer(SaeSerializer):
    certificate = serializers.CharField(read_only=True, help_text="client certificate (PEM)")
    private_key = serializers.CharField(read_only=True, help_text="private key (PEM); shown only in this response")
    ca_chain = serializers.CharField(read_only=True, help_text="the portal CA (PEM), to verify the server")

    class Meta(SaeSerializer.Meta):
        fields = [*SaeSerializer.Meta.fields, "certificate", "private_key", "ca_chain"]


class QkdNodeSerializer(serializers.ModelSerializer):
    kme_url = serializers.CharField(required=False, help_text="operators only (an internal address)")

    class Meta:
        model = QkdNode
        fields = ["node_id", "site", "kme_url", "auth_mode", "enabled", "source"]


class _KeySerializer(serializers.Serializer):
    """The two fields every delivered key carries; the subclasses add where it came from."""

    key_ID = serializers.UUIDField()
    key = serializers.CharField(help_text="base64")


class SimpleKeySerializer(_KeySerializer):
    size = serializers.IntegerField(help_text="bits")
    hops = serializers.IntegerField(help_text="QKD links the key crossed (1 = direct link)")
    src = serializers.CharField(help_text="the master SAE")
    dst = serializers.CharField(help_text="the slave SAE")


class HopKeySerializer(_KeySerializer):
    src = serializers.CharField(help_text="your SAE at the link's first end (the master)")
    dst = serializers.CharField(help_text="your SAE at the link's other end (fetches the peer copy by key_ID)")
    hops = serializers.IntegerField(help_text="1 when the key came over the link itself")
    # "from" is a Python keyword: declared in __init__.
    to = serializers.CharField(help_text="node at the link's other end")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["from"] = serializers.CharField(help_text="node at the link's first end")


class PerHopKeysSerializer(serializers.Serializer):
    mode = serializers.CharField(help_text="per-hop")
    size = serializers.IntegerField(help_text="bits of each hop key")
    src = serializers.CharField()
    dst = serializers.CharField()
    path = serializers.ListField(child=serializers.CharField(), help_text="nodes from src to dst")
    hops = serializers.IntegerField(help_text="QKD links on the path (= number of keys)")
    keys = HopKeySerializer(many=True)


class KeyStreamSerializer(serializers.ModelSerializer):
    """A key stream's metadata and counters; key material never leaves the backend KMEs through here."""

    Key_stream_ID = serializers.UUIDField(source="ksid", read_only=True)
    source = serializers.SlugRelatedField(slug_field="name", read_only=True, help_text="the initiating SAE")
    destination = serializers.SlugRelatedField(slug_field="name", read_only=True)
    QoS = serializers.JSONField(source="qos", read_only=True, help_text="the negotiated QoS (ETSI 004 names)")
    key_bits_metered = serializers.SerializerMethodField(help_text="chunks_metered x Key_chunk_size x 8")
    hops = serializers.SerializerMethodField(help_text="QKD links the last chunk crossed")
    path = serializers.SerializerMethodField(help_text="nodes the last chunk crossed")
    connected_at = serializers.DateTimeField(source="activated_at", read_only=True, allow_null=True,
                                             help_text="when the peer SAE joined")
    order_id = serializers.UUIDField(source="uuid", read_only=True,
                                     help_text="the service order id (order_id of its usage records)")

    class Meta:
        model = KeyStream
        fields = ["id", "order_id", "Key_stream_ID", "source", "destination", "state", "QoS", "created_at",
                  "connected_at",
                  "expires_at", "closed_at", "next_index_source", "next_index_destination", "highest_index",
                  "prefetched_to", "chunks_metered", "key_bits_metered", "hops", "path"]
        read_only_fields = fields

    def get_key_bits_metered(self, stream: KeyStream) -> int:
        return stream.chunks_metered * int(stream.qos.get("Key_chunk_size", 0)) * 8

    def get_hops(self, stream: KeyStream) -> int | None:
        return (stream.route or {}).get("hops")

    def get_path(self, stream: KeyStream) -> list[str] | None:
        return (stream.route or {}).get("path")
