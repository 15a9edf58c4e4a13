"""What replaying the ledger needs (apps/opportunities): digests and counts, never the prompt.

Rows written before this migration keep the defaults (no key, no prefix): the
opportunities read only the rows that carry them.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0012_ledger_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="ledgerentry",
            name="cache_key",
            field=models.CharField(
                blank=True,
                help_text="The exact-cache key of the chat request (apps.cache.keys.exact_key, not scoped to the end user)",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="prefix_key",
            field=models.CharField(
                blank=True,
                help_text="Digest of the static prompt prefix a provider could cache: tools, then the leading system messages",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="prefix_tokens",
            field=models.PositiveIntegerField(default=0, help_text="Estimated tokens of that prefix"),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="embedding_key",
            field=models.CharField(
                blank=True,
                help_text="Exact key of the semantic-cache entry whose embedding this request matched or was stored under",
                max_length=64,
            ),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="max_tokens",
            field=models.PositiveIntegerField(blank=True, help_text="The output cap the request asked for", null=True),
        ),
        migrations.AddField(
            model_name="ledgerentry",
            name="turns",
            field=models.PositiveIntegerField(default=0, help_text="Messages in the chat request: history growth"),
        ),
    ]
