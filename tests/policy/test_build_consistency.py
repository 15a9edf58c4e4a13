"""A policy snapshot is read as of one moment: what commits while a build runs is in the next build."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

from apps.policy.build import build_snapshot
from apps.providers.models import Price, ProviderKind
from apps.providers.services import provider_create
from tests import live
from tests.factories import Tenant


def _waiting_for_a_lock_on(table: str) -> bool:
    with psycopg.connect(live.test_database_url(), autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted", (table,)
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.django_db(transaction=True)
def test_a_provider_added_while_a_build_runs_is_left_for_the_next_build(tenant: Tenant) -> None:
    """The build reads providers, then prices. A provider and its prices committed between the two
    reads used to give prices of a provider the build did not know: the build failed with a KeyError
    and every organisation was alerted that its policy was stale."""
    built: dict[str, Any] = {}

    def build() -> None:
        try:
            built["snapshot"] = build_snapshot(7)
        except Exception as exc:  # noqa: BLE001 (the assertion below shows it)
            built["error"] = exc
        finally:
            connection.close()  # this thread's own connection

    with transaction.atomic():
        # The price table locked: the build reads keys, projects and providers, then waits at the prices.
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {Price._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        builder = threading.Thread(target=build)
        builder.start()
        live.wait_until(lambda: _waiting_for_a_lock_on(Price._meta.db_table), timeout=30)
        late = provider_create(
            organization=tenant.org, name="late", kind=ProviderKind.SIMULATED, base_url="http://127.0.0.1:9/v1"
        )
        assert Price.objects.filter(provider=late).exists()  # the simulator's catalogue
    builder.join(timeout=30)  # the commit above let go of the lock

    assert "error" not in built, built.get("error")
    snapshot = built["snapshot"]
    assert tenant.provider.id in snapshot.providers
    assert late.id not in snapshot.providers
    assert not [key for key in snapshot.prices if key[0] == late.id]

    again = build_snapshot(8)
    assert late.id in again.providers
    assert [key for key in again.prices if key[0] == late.id]
