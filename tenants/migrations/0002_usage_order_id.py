from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="order_id",
            field=models.UUIDField(blank=True, null=True,
                                   help_text="the service order (tunnel, session, key stream) this usage belongs to"),
        ),
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(condition=models.Q(order_id__isnull=False), fields=["order_id"], name="usage_order"),
        ),
            migrations.AlterField(
            model_name="usagerecord",
            name="meter",
            field=models.CharField(choices=[("qkd_key_bits", "QKD key bits"), ("entropy_bytes", "QRNG entropy bytes"), ("ipsec_tunnels", "Concurrent IPsec tunnels"), ("tls_sessions", "Concurrent TLS sessions"), ("key_streams", "Concurrent key streams"), ("key_stream_seconds", "Key stream time"), ("ipsec_tunnel_seconds", "IPsec tunnel time"), ("tls_session_seconds", "TLS session time")], max_length=40),
        ),
        migrations.AlterField(
            model_name="usagerollup",
            name="meter",
            field=models.CharField(choices=[("qkd_key_bits", "QKD key bits"), ("entropy_bytes", "QRNG entropy bytes"), ("ipsec_tunnels", "Concurrent IPsec tunnels"), ("tls_sessions", "Concurrent TLS sessions"), ("key_streams", "Concurrent key streams"), ("key_stream_seconds", "Key stream time"), ("ipsec_tunnel_seconds", "IPsec tunnel time"), ("tls_session_seconds", "TLS session time")], max_length=40),
        ),
        ]
