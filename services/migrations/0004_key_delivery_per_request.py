"""One KeyDelivery row per request and slave (sealed portal key IDs) instead of one per key.

The old rows named the KME's key IDs, which tenants held; the new portal key IDs cannot be derived from
them, so the old rows are dropped with their table: key IDs handed out before this migration can no longer be
fetched by their slave (the usage ledger, which bills them, is untouched)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('services', '0003_gateway_counters_and_backend_slaves'),
        ('tenants', '0001_initial'),
    ]

    operations = [
        migrations.DeleteModel(name='KeyDelivery'),
        migrations.CreateModel(
            name='KeyDelivery',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('batch', models.BigIntegerField(help_text="the number sealed into the request's portal key IDs")),
                ('size_bits', models.PositiveIntegerField()),
                ('key_count', models.PositiveIntegerField()),
                ('backend_key_ids', models.BinaryField(help_text="the KME's key IDs, 16 bytes each, in the order handed out")),
                ('hops', models.PositiveSmallIntegerField(default=0)),
                ('backend_slave_sae', models.CharField(blank=True, default='', help_text="the portal's SAE at the slave's KME the keys were delivered to (empty: the usual pairing)", max_length=100)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('fetched_keys', models.PositiveIntegerField(default=0, help_text='keys the slave has fetched so far')),
                ('master', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='services.sae')),
                ('slave', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='services.sae')),
                ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenants.tenant')),
            ],
            options={
                'indexes': [models.Index(fields=['tenant', '-created_at'], name='keydelivery_tenant_recent')],
                'constraints': [models.UniqueConstraint(fields=('batch', 'slave'), name='uniq_batch_per_slave')],
            },
        ),
    ]
