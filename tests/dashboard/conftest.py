"""Named people for the dashboard tests: owner, member (developer), finance and an outsider."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from apps.ledger.models import LedgerEntry
from apps.tenancy.models import Role
from tests.factories import PASSWORD, Tenant, member_make, tenant_make

_request_ids = itertools.count(1)


@dataclass
class People:
    tenant: Tenant
    other: Tenant  # another organisation; its owner is the outsider
    owner: User
    member: User
    finance: User
    outsider: User


@pytest.fixture
def people(db: None) -> People:
    tenant, other = tenant_make(), tenant_make()
    return People(
        tenant=tenant,
        other=other,
        owner=tenant.owner,
        member=member_make(tenant, Role.DEVELOPER, team=tenant.team),
        finance=member_make(tenant, Role.FINANCE),
        outsider=other.owner,
    )


def login(client: Client, user: User) -> Client:
    assert client.login(username=user.username, password=PASSWORD)
    return client


def entry_make(tenant: Tenant, **fields: Any) -> LedgerEntry:
    """A ledger row as the ingest would write it; override any field."""
    values: dict[str, Any] = {
        "request_id": f"req-{next(_request_ids)}",
        "created_at": timezone.now(),
        "organization": tenant.org,
        "project": tenant.project,
        "api_key": tenant.key.api_key,
        "provider": tenant.provider,
        "endpoint": "chat.completions",
        "requested_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "status_code": 200,
        "cost": Decimal("0.000027"),
        "counterfactual_cost": Decimal("0.000050"),
        "latency_ms": 120,
    }
    values.update(fields)
    return LedgerEntry.objects.create(**values)
