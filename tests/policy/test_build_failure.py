"""A policy snapshot that cannot be built is not skipped in silence: every organisation is alerted."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection

from apps.budgets.models import Alert, AlertKind
from apps.policy.build import load_snapshot
from tests.factories import Tenant, tenant_make
from tests.routing.helpers import rule_make


def _corrupt(rule_id: int) -> None:
    """What a hand edit in psql can leave behind and no form allows: a NULL among a cascade's labels."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE routing_routingrule SET cascade_labels = ARRAY[NULL]::varchar[] WHERE id = %s", [rule_id]
        )


@pytest.mark.django_db
def test_a_snapshot_that_fails_to_build_alerts_every_organisation_once_an_hour(tenant: Tenant) -> None:
    other = tenant_make(name="other")
    assert load_snapshot(1).version == 1  # builds while the rows are sound

    rule = rule_make(tenant, name="broken", action="cascade", primaries="gpt-4o-mini\ngpt-4o",
                     cascade_threshold=Decimal("0.7"))  # fmt: skip
    _corrupt(rule.id)
    # AttributeError as Python (None.casefold); TypeError compiled (costcontrol/compiled.py), where
    # normalize_text's annotation refuses the None before its body runs.
    with pytest.raises((AttributeError, TypeError)):
        load_snapshot(2)  # the gateway keeps its last snapshot and logs; the control plane alerts
    with pytest.raises((AttributeError, TypeError)):
        load_snapshot(3)  # the poll retries: no second alert within the hour

    # Only this test's organisations: the session's gateway processes share the database, and their
    # builds can fail while other tests flush it (raising alerts for the organisations of the moment).
    alerts = Alert.objects.filter(kind=AlertKind.POLICY_STALE, organization__in=[tenant.org, other.org])
    assert sorted(alerts.values_list("organization_id", flat=True)) == sorted([tenant.org.id, other.org.id])
    for alert in alerts:
        # The error's class, never its text: this test's, or that of a session gateway's build that read the
        # same broken row first (alerted first and kept for the hour).
        assert re.search(r"failed \((AttributeError|TypeError)\)", alert.message) and "revocations" in alert.message
        assert "broken" not in alert.message  # nothing of the tenant whose row broke it
