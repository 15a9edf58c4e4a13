"""The routing decision as data: a JSON column beside the text, filled for the rows written before it.

Readers (roll-up levers, rule statistics, shadow-budget alerts) ask ``decision``
from now on. The gateway's rows before this migration have only the text
(``route``): it is read here, once, into the same fields the gateway now writes
(``apps.core.route``). Batch and imported rows were not routed by the gateway:
they keep no decision.
"""

import re

from django.db import migrations, models

_RULE_HEAD = re.compile(r"route:(\d+):(route|split|cascade)(?::([^:;]+))?")
_CASCADE = re.compile(r":(kept|escalated)\(([^)]*)\)")
_FAILED = re.compile(r";failed:([^;@]*)@([^;]*)\(([^;()]*)\)")
_RETRIES = re.compile(r";retries=(\d+)")
_BUDGET = re.compile(r"budget:(\d+)")
_PARTS = ("cheap", "kept", "escalated", "strong-only", "attempt")


def decision_from_text(route):
    """The decision a pre-migration ``route`` text records, or None for rows the gateway did not route."""
    head = route.split(";", 1)[0]
    if head == "direct" or head.startswith("direct:"):
        decision = {"kind": "direct"}
    elif head.startswith("alias:"):
        decision = {"kind": "alias", "alias": head[len("alias:") :].split(":", 1)[0]}
    elif head.startswith("cache:"):
        return {"kind": "cache", "cache_hit": head[len("cache:") :]}
    else:
        rule = _RULE_HEAD.match(head)
        if rule is None:
            return None
        decision = {"kind": "rule", "rule_id": int(rule[1]), "action": rule[2]}
        if rule[3] and rule[3] not in _PARTS and not rule[3].startswith(("kept(", "escalated(")):
            decision["model"] = rule[3]
    if ":cheap" in route:
        decision["part"] = "cheap"
    elif ":attempt" in route:
        decision["part"] = "attempt"
    if ":strong-only" in route:
        decision["cascade"] = "strong-only"
    elif verdict := _CASCADE.search(route):
        decision["cascade"], decision["reason"] = verdict[1], verdict[2]
    if ";limits-unchecked" in route:
        decision["limits_unchecked"] = True
    if ";would-block:" in route:
        note = route.split(";would-block:", 1)[1].split(";", 1)[0]
        decision["would_block"] = [int(budget) for budget in _BUDGET.findall(note)]
    tried = [{"model": m, "provider": p, "outcome": o} for m, p, o in _FAILED.findall(route)]
    if tried:
        decision["tried"] = tried
    if retries := _RETRIES.search(route):
        decision["retries"] = int(retries[1])
    if ";unpriced" in route:
        decision["unpriced"] = True
    return decision


def fill_decisions(apps, schema_editor):
    entry = apps.get_model("ledger", "LedgerEntry")
    rows = entry.objects.filter(decision__isnull=True, source="gateway").exclude(route="").only("id", "route")
    batch = []
    for row in rows.iterator(chunk_size=2000):
        row.decision = decision_from_text(row.route)
        if row.decision is not None:
            batch.append(row)
        if len(batch) >= 2000:
            entry.objects.bulk_update(batch, ["decision"])
            batch = []
    if batch:
        entry.objects.bulk_update(batch, ["decision"])


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0006_ledgerentry_possibly_billed"),
    ]

    operations = [
        migrations.AddField(
            model_name="ledgerentry",
            name="decision",
            field=models.JSONField(
                blank=True,
                help_text="The routing decision as data (apps.core.route.RouteDecision); what readers ask, never the text",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="route",
            field=models.CharField(blank=True, help_text="Routing decision and its reason, as X-Route said it", max_length=300),
        ),
        migrations.RunPython(fill_decisions, migrations.RunPython.noop),
    ]
