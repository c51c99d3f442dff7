from rest_framework import serializers

from services.models import QkdNode, Sae


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
    class Meta:
        model = QkdNode
        fields = ["node_id", "site", "kme_url", "auth_mode", "enabled", "source"]


class SimpleKeySerializer(serializers.Serializer):
    key_ID = serializers.UUIDField()
    key = serializers.CharField(help_text="base64")
    size = serializers.IntegerField(help_text="bits")
    hops = serializers.IntegerField(help_text="QKD links the key crossed (1 = direct link)")
    src = serializers.CharField(help_text="the master SAE")
    dst = serializers.CharField(help_text="the slave SAE")
