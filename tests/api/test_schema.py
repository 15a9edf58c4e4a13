"""Every operation of /api/schema/ answers as the schema says: schemathesis, in process, through Django.

The schema is made once when the tests are collected, by the generator /api/schema/ serves (a test
checks the served document is that one). One test per documented operation, each with a bounded
number of generated requests (``SCHEMA_EXAMPLES``), as an owner with a write token over a small
organisation (a project, a key, a budget, a rule, a channel, a cache entry, a deployment, a finished
export). Checked for every answer: no 5xx, a documented status code, a documented content type, and
a body that matches the documented schema (errors included: they have one shape). Then every write
operation once more with a read-only token: refused with 403, nothing written.

Generated URLs (provider base URLs, webhook targets) are pointed at loopback before they are sent: the
egress policy resolves a URL's host when it is saved, and random host names would reach out to DNS.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.serializers.json import DjangoJSONEncoder
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.audit.models import AuditEvent
from apps.budgets.models import BudgetScope, ChannelKind
from apps.budgets.services import budget_create, channel_create
from apps.cache.models import CacheEntry
from apps.dashboard.models import TokenScope
from apps.dashboard.services import api_token_rotate
from apps.reports.selectors import ExportQuery
from apps.reports.services import export_job_create, export_job_run
from apps.routing.services import rule_save
from apps.tenancy.models import Role
from tests.deployments.helpers import deployment_make
from tests.factories import member_make, tenant_make

READ = TokenScope.READ
SCHEMA_EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
LOOPBACK_URL = "http://127.0.0.1:9/v1"

# What /api/schema/ serves (test_the_served_schema_is_the_one_tested): made here, at collection time,
# so that each operation becomes a test of its own.
SCHEMA_DOCUMENT = SchemaGenerator().get_schema(request=None, public=True)
schema = schemathesis.openapi.from_dict(json.loads(json.dumps(SCHEMA_DOCUMENT, cls=DjangoJSONEncoder)))
schema.app = get_wsgi_application()


@pytest.fixture
def in_process(db: None) -> Iterator[None]:
    """Requests share the test's database connection and transaction, as Django's test client arranges:
    the handler must not close that connection when a request starts or finishes."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def world(in_process: None) -> dict[str, Any]:
    tenant = tenant_make()
    project = tenant.project
    finance = member_make(tenant, Role.FINANCE)
    budget_create(organization=tenant.org, name="b", scope=BudgetScope.PROJECT, project=project, amount_usd=Decimal(5))
    rule_save(project=project, fields={"name": "r"}, primaries=[], fallbacks=[], shadow=[])
    channel_create(organization=tenant.org, name="hook", kind=ChannelKind.WEBHOOK, target="http://127.0.0.1:9/h")
    CacheEntry.objects.create(
        project=project, exact_key="k", fingerprint="f", model="gpt-4o-mini", prompt_text="hello",
        response={"choices": []}, expires_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    deployment_make(tenant.org)
    job = export_job_create(
        user=tenant.owner,
        organization=tenant.org,
        kind="ledger",
        query=ExportQuery(since=timezone.now() - dt.timedelta(days=1), until=timezone.now()),
        enqueue=False,
    )
    export_job_run(job=job)
    return {"write": api_token_rotate(user=tenant.owner).key, "read": api_token_rotate(user=finance, scope=READ).key}


@pytest.fixture
def reader(in_process: None) -> str:
    """A read-only token of an owner: refused before any view runs, so it needs no rows around it."""
    return api_token_rotate(user=tenant_make().owner, scope=READ).key


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict):
        for name in ("base_url", "target"):
            if name in body:
                body[name] = LOOPBACK_URL
    return body


_SETTINGS = settings(
    max_examples=SCHEMA_EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@_SETTINGS
def test_every_operation_answers_as_documented(case: Any, world: dict[str, Any]) -> None:
    case.call_and_validate(headers={"Authorization": f"Token {world['write']}"}, checks=CHECKS)


WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


# Any value of the right shape: a read token is refused before the view looks anything up.
PATH_VALUES = {"id": "1", "pk": "1", "slug": "some-project", "lookup_id": "abcd2345", "opportunity_id": "route-1"}


def test_a_read_only_token_writes_nothing(reader: str) -> None:
    """Every write operation of the schema, called with a read-only token: 403 in the error shape, no change."""
    before, refused = AuditEvent.objects.count(), []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() not in WRITE_METHODS:
            continue
        values = {parameter.name: PATH_VALUES[parameter.name] for parameter in operation.path_parameters}
        if operation.body:  # a body the operation documents (any will do: it is never read)
            case = operation.Case(path_parameters=values, body={}, media_type=operation.body[0].media_type)
        else:
            case = operation.Case(path_parameters=values)
        response = case.call(headers={"Authorization": f"Token {reader}"})
        assert response.status_code == 403, (operation.label, response.status_code, response.text[:300])
        assert "read-only" in response.json()["error"]["message"]
        refused.append(operation.label)
    assert len(refused) > 30 and AuditEvent.objects.count() == before


def test_the_served_schema_is_the_one_tested(world: dict[str, Any]) -> None:
    served = Client(headers={"Authorization": f"Token {world['read']}"}).get(
        "/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(SCHEMA_DOCUMENT, cls=DjangoJSONEncoder))


def test_every_endpoint_is_documented_without_guesswork(tmp_path: Any) -> None:
    """drf-spectacular warns when it has to guess an answer's shape; a new endpoint must not make it guess."""
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
