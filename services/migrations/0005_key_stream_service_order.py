import uuid

from django.db import migrations, models


def give_uuids(apps, schema_editor):
    KeyStream = apps.get_model("services", "KeyStream")
    for pk in KeyStream._base_manager.values_list("pk", flat=True):
        KeyStream._base_manager.filter(pk=pk).update(uuid=uuid.uuid4())


def drop_old_beat_entry(apps, schema_editor):
    # The per-service job became services.tasks.maintain_orders (settings' beat schedule); beat's database
    # scheduler keeps entries it once synced, so the old one is removed here.
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name="maintain-key-streams").delete()


class Migration(migrations.Migration):
    """Key streams become service orders (services.orders): public uuid, activated_at (was connected_at),
    reason, metered_until, an optional expires_at."""

    dependencies = [("services", "0004_key_delivery_per_request"), ("tenants", "0002_usage_order_id"),
                    ("django_celery_beat", "0019_alter_periodictasks_options")]

    operations = [
        migrations.RenameField("keystream", "connected_at", "activated_at"),
        migrations.AddField("keystream", "uuid", models.UUIDField(null=True, editable=False)),
        migrations.RunPython(give_uuids, migrations.RunPython.noop),
        migrations.RunPython(drop_old_beat_entry, migrations.RunPython.noop),
        migrations.AlterField("keystream", "uuid", models.UUIDField(default=uuid.uuid4, unique=True, editable=False,
                                                                    help_text="the order's public id")),
        migrations.AddField("keystream", "reason", models.TextField(blank=True, help_text="why it failed or was closed")),
        migrations.AddField("keystream", "metered_until", models.DateTimeField(
            null=True, blank=True, help_text="active time metered up to here")),
        migrations.AlterField("keystream", "activated_at", models.DateTimeField(
            null=True, blank=True, help_text="when it first entered an active state")),
        migrations.AlterField("keystream", "expires_at", models.DateTimeField(null=True, blank=True)),
        migrations.AlterField("keystream", "state", models.CharField(
            max_length=20, default="opened", choices=[("opened", "Opened, waiting for the peer SAE"),
                                                      ("connected", "Both SAEs connected"), ("closed", "Closed"),
                                                      ("expired", "Expired (TTL)")])),
    ]
