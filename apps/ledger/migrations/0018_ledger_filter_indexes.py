"""Indexes for the /ledger/ page's filters, paid for in part by dropping four that no reader uses.

Added (each on every month partition): the project with the feature, end user, served model or
requested model, then the time; the key and the time; and the project's error rows carrying the
filter columns (a partial index over a few rows in a hundred). Dropped: the single-column indexes on
the key (``ledger_key_time`` starts with it), the provider (no ledger read filters by it), the routing
rule (``ledger_rule_time`` covers the routed rows) and the ``LIKE`` index Django adds to a unique text
column (nothing searches request ids by prefix).

Building an index on the partitioned table blocks ingest while it builds. On a large ledger, create
each index on every partition first with ``CREATE INDEX CONCURRENTLY`` (Postgres then attaches them),
or run this in a quiet hour.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('keys', '0002_initial'),
        ('ledger', '0017_background_response'),
        ('providers', '0007_provider_responses_api'),
        ('routing', '0002_prunepolicy'),
        ('tenancy', '0001_initial'),
    ]

    operations = [
        migrations.RunSQL(
            "DROP INDEX IF EXISTS ledger_ledgerentry_request_id_eb029b67_like",
            "CREATE INDEX IF NOT EXISTS ledger_ledgerentry_request_id_eb029b67_like "
            "ON ledger_ledgerentry (request_id varchar_pattern_ops)",
        ),
        migrations.AlterField(
            model_name='ledgerentry',
            name='api_key',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='keys.apikey'),
        ),
        migrations.AlterField(
            model_name='ledgerentry',
            name='provider',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.provider'),
        ),
        migrations.AlterField(
            model_name='ledgerentry',
            name='route_rule',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='routing.routingrule'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['project', 'feature', 'created_at'], name='ledger_feature_time'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['project', 'end_user', 'created_at'], name='ledger_end_user_time'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['project', 'served_model', 'created_at'], name='ledger_served_time'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['project', 'requested_model', 'created_at'], name='ledger_requested_time'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(fields=['api_key', 'created_at'], name='ledger_key_time'),
        ),
        migrations.AddIndex(
            model_name='ledgerentry',
            index=models.Index(condition=models.Q(('status_code__gte', 400)), fields=['project', 'created_at', 'end_user', 'feature', 'served_model', 'requested_model', 'endpoint', 'api_key'], name='ledger_errors_time'),
        ),
    ]
