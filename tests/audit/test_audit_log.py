"""The audit log: every kind of change leaves one row, through the pages and through the API, with who,
which surface, the object and a before/after diff in which secrets are masked; and no surface can
change or remove a row.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AppendOnlyError, AuditEvent, Surface
from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.cache.models import CacheEntry
from apps.dashboard.services import api_token_rotate
from apps.keys.services import key_issue
from apps.routing.services import rule_save
from tests.deployments.helpers import deployment_make
from tests.factories import People, login

pytestmark = pytest.mark.django_db

PROVIDER_SECRET = "sk-audit-provider-secret-123"
WEBHOOK_PATH = "hooks/T000/B000/very-secret-path"
RULE_FORM = {"match_tools": "any", "shadow_percent": "0", "cascade_threshold": "0.7", "cascade_tokens": "1",
             "cascade_aggregate": "min"}  # fmt: skip


@dataclass
class W:
    people: People
    ui: Client
    api: Client

    @property
    def slug(self) -> str:
        return self.people.tenant.project.slug

    @property
    def org(self) -> Any:
        return self.people.tenant.org

    @property
    def provider(self) -> Any:
        return self.people.tenant.provider


@pytest.fixture
def w(people: People) -> W:
    token = api_token_rotate(user=people.owner).key
    return W(people, login(Client(), people.owner), Client(headers={"Authorization": f"Token {token}"}))


def _json(client: Client, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    return client.generic(method, url, json.dumps(body or {}), content_type="application/json")


def _entry(w: W) -> CacheEntry:
    return CacheEntry.objects.create(
        project=w.people.tenant.project, exact_key=f"k{CacheEntry.objects.count()}", fingerprint="f",
        model="gpt-4o-mini", prompt_text="my card number is 4111", response={"choices": []},
        expires_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip


def _budget(w: W) -> Any:
    return budget_create(
        organization=w.org, name="b", scope=BudgetScope.PROJECT, project=w.people.tenant.project, amount_usd=Decimal(5)
    )


def _rule(w: W) -> Any:
    return rule_save(project=w.people.tenant.project, fields={"name": "r"}, primaries=[], fallbacks=[], shadow=[])


Act = Callable[[W], Any]


@dataclass
class Case:
    object_type: str
    action: str
    ui: Act | None  # None: the pages have no such change (teams, members, rotation: the API's)
    api: Act
    hidden: str = ""  # a secret that must appear nowhere in the row
    check: Callable[[AuditEvent], bool] = lambda event: True


CASES: dict[str, Case] = {
    "project create": Case(
        "project",
        "create",
        lambda w: w.ui.post(reverse("dashboard:project-new", args=[w.org.slug]), {"name": "new p", "slug": "new-p-ui"}),
        lambda w: _json(w.api, "POST", "/api/projects/", {"organization": w.org.slug, "name": "n", "slug": "n-api"}),
        check=lambda e: e.diff["before"] is None and e.diff["after"]["name"] in ("new p", "n"),
    ),
    "project default provider": Case(
        "project",
        "update",
        lambda w: w.ui.post(reverse("dashboard:default-provider", args=[w.slug]), {"default_provider": ""}),
        lambda w: _json(w.api, "PATCH", f"/api/projects/{w.slug}/", {"default_provider": None}),
        check=lambda e: (
            e.diff
            == {
                "before": {"default_provider_id": e.diff["before"]["default_provider_id"]},
                "after": {"default_provider_id": None},
            }
        ),  # fmt: skip
    ),
    "team create": Case(
        "team",
        "create",
        None,
        lambda w: _json(w.api, "POST", "/api/teams/", {"organization": w.org.slug, "name": "platform"}),
    ),
    "member role": Case(
        "membership",
        "update",
        None,
        lambda w: _json(w.api, "PATCH", f"/api/members/{w.people.member.memberships.get().pk}/", {"role": "team_lead"}),
        check=lambda e: e.diff == {"before": {"role": "developer"}, "after": {"role": "team_lead"}},
    ),
    "key issue": Case(
        "key",
        "create",
        lambda w: w.ui.post(reverse("dashboard:key-new", args=[w.slug]), {"name": "ci"}),
        lambda w: _json(w.api, "POST", f"/api/projects/{w.slug}/keys/", {"name": "ci"}),
        check=lambda e: e.diff["after"]["key_hash"].startswith("**** ") and e.diff["after"]["name"] == "ci",
    ),
    "key revoke": Case(
        "key",
        "revoke",
        lambda w: w.ui.post(reverse("dashboard:key-revoke", args=[w.slug, w.people.tenant.key.api_key.lookup_id])),
        lambda w: _json(w.api, "POST", f"/api/keys/{w.people.tenant.key.api_key.lookup_id}/revoke/"),
        check=lambda e: e.diff["before"] == {"revoked_at": None} and e.diff["after"]["revoked_at"],
    ),
    "key rotate": Case(
        "key",
        "rotate",
        None,
        lambda w: _json(w.api, "POST", f"/api/keys/{w.people.tenant.key.api_key.lookup_id}/rotate/", {}),
        check=lambda e: set(e.diff["after"]) == {"revoked_at", "replaced_by"},
    ),
    "alias set": Case(
        "alias",
        "create",
        lambda w: w.ui.post(
            reverse("dashboard:alias-new", args=[w.slug]),
            {"alias": "chat", "provider": w.provider.pk, "model": "gpt-4o"},
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            f"/api/projects/{w.slug}/aliases/",
            {"alias": "chat", "provider": w.provider.pk, "model": "gpt-4o"},
        ),  # fmt: skip
    ),
    "provider create": Case(
        "provider",
        "create",
        lambda w: w.ui.post(
            reverse("dashboard:providers", args=[w.org.slug]),
            {
                "name": "second",
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "secret": PROVIDER_SECRET,
            },
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            "/api/providers/",
            {
                "organization": w.org.slug,
                "name": "second",
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "secret": PROVIDER_SECRET,
            },
        ),  # fmt: skip
        hidden=PROVIDER_SECRET,
        check=lambda e: e.diff["after"]["secret"].startswith("**** "),
    ),
    "provider secret": Case(
        "provider",
        "update",
        lambda w: w.ui.post(
            reverse("dashboard:provider-edit", args=[w.org.slug, w.provider.pk]),
            {
                "name": w.provider.name,
                "base_url": w.provider.base_url,
                "secret": PROVIDER_SECRET,
                "is_active": "on",
                "responses_api": "on",
            },
        ),  # fmt: skip
        lambda w: _json(w.api, "PATCH", f"/api/providers/{w.provider.pk}/", {"secret": PROVIDER_SECRET}),
        hidden=PROVIDER_SECRET,
        check=lambda e: list(e.diff["after"]) == ["secret"] and e.diff["before"]["secret"] != e.diff["after"]["secret"],
    ),
    "price set": Case(
        "price",
        "create",
        lambda w: w.ui.post(
            reverse("dashboard:price-new", args=[w.org.slug, w.provider.pk]),
            {
                f"p{w.provider.pk}-model": "m1",
                f"p{w.provider.pk}-input_per_mtok": "1",
                f"p{w.provider.pk}-output_per_mtok": "2",
                f"p{w.provider.pk}-effective_from": "2030-01-01",
            },
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            "/api/prices/",
            {
                "provider": w.provider.pk,
                "model": "m1",
                "input_per_mtok": "1",
                "output_per_mtok": "2",
                "effective_from": "2030-01-01",
            },
        ),  # fmt: skip
        check=lambda e: e.diff["after"]["input_per_mtok"] == "1.000000",
    ),
    "budget create": Case(
        "budget",
        "create",
        lambda w: w.ui.post(
            reverse("budgets:new"),
            {
                "organization": w.org.pk,
                "name": "b",
                "scope": "project",
                "project": w.people.tenant.project.pk,
                "amount_usd": "10",
                "period": "monthly",
                "timezone": "UTC",
                "mode": "hard",
                "alert_thresholds": "50",
            },
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            "/api/budgets/",
            {
                "organization": w.org.slug,
                "name": "b",
                "scope": "project",
                "project": w.slug,
                "amount_usd": "10",
            },
        ),  # fmt: skip
    ),
    "budget pause": Case(
        "budget",
        "update",
        lambda w: w.ui.post(reverse("budgets:toggle", args=[_budget(w).pk])),
        lambda w: _json(w.api, "PATCH", f"/api/budgets/{_budget(w).pk}/", {"is_active": False}),
        check=lambda e: e.diff == {"before": {"is_active": True}, "after": {"is_active": False}},
    ),
    "rate limit": Case(
        "rate_limit",
        "create",
        lambda w: w.ui.post(
            reverse("budgets:limit-new"), {"project": w.people.tenant.project.pk, "requests_per_minute": "60"}
        ),  # fmt: skip
        lambda w: _json(w.api, "POST", "/api/rate-limits/", {"project": w.slug, "requests_per_minute": 60}),
        check=lambda e: e.diff["after"]["requests_per_minute"] == 60,
    ),
    "channel create": Case(
        "channel",
        "create",
        lambda w: w.ui.post(
            reverse("budgets:channel-new"),
            {
                "organization": w.org.pk,
                "name": "ops",
                "kind": "webhook",
                "target": f"http://127.0.0.1:9/{WEBHOOK_PATH}",
                "secret": "whsec-very-secret",
            },
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            "/api/channels/",
            {
                "organization": w.org.slug,
                "name": "ops",
                "kind": "webhook",
                "target": f"http://127.0.0.1:9/{WEBHOOK_PATH}",
                "secret": "whsec-very-secret",
            },
        ),  # fmt: skip
        hidden=WEBHOOK_PATH,
        check=lambda e: (
            e.diff["after"]["target"].startswith("http://127.0.0.1:9/…****") and "whsec" not in json.dumps(e.diff)
        ),
    ),
    "routing rule create": Case(
        "routing_rule",
        "create",
        lambda w: w.ui.post(
            reverse("routing:rules", args=[w.slug]),
            {"name": "cheap", "action": "route", "primaries": "gpt-4o-mini", **RULE_FORM},
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            "/api/routing-rules/",
            {"project": w.slug, "name": "cheap", "action": "route", "primaries": ["gpt-4o-mini"]},
        ),
        check=lambda e: e.diff["after"]["primaries"] == "gpt-4o-mini @ sim",
    ),
    "routing rule move": Case(
        "routing_rule",
        "move",
        lambda w: (_rule(w), w.ui.post(reverse("routing:move", args=[w.slug, _rule(w).pk]), {"direction": "up"}))[1],
        lambda w: (_rule(w), _json(w.api, "POST", f"/api/routing-rules/{_rule(w).pk}/move/", {"direction": "up"}))[1],
        check=lambda e: e.diff["after"]["position"] == e.diff["before"]["position"] - 1,
    ),
    "routing rule delete": Case(
        "routing_rule",
        "delete",
        lambda w: w.ui.post(reverse("routing:delete", args=[w.slug, _rule(w).pk])),
        lambda w: _json(w.api, "DELETE", f"/api/routing-rules/{_rule(w).pk}/"),
        check=lambda e: e.diff["after"] is None and e.diff["before"]["name"] == "r",
    ),
    "cache policy": Case(
        "cache_policy",
        "create",
        lambda w: w.ui.post(
            reverse("cache:project", args=[w.slug]),
            {
                "feature": "",
                "exact_enabled": "on",
                "similarity_threshold": "0.95",
                "ttl_seconds": "60",
                "max_entries": "10",
                "eviction": "lru",
                "deny_patterns": "",
            },
        ),  # fmt: skip
        lambda w: _json(w.api, "POST", f"/api/projects/{w.slug}/cache/policies/", {"ttl_seconds": 60}),
        check=lambda e: e.diff["after"]["ttl_seconds"] == 60,
    ),
    "cache purge": Case(
        "cache_entry",
        "purge",
        lambda w: (_entry(w), w.ui.post(reverse("cache:purge", args=[w.slug])))[1],
        lambda w: (_entry(w), _json(w.api, "POST", f"/api/projects/{w.slug}/cache/purge/", {}))[1],
        check=lambda e: e.diff["after"] == {"namespace": "(all)", "entries_removed": 1},
    ),
    "cache entry delete": Case(
        "cache_entry",
        "delete",
        lambda w: w.ui.post(reverse("cache:entry-delete", args=[w.slug, _entry(w).pk])),
        lambda w: _json(w.api, "DELETE", f"/api/projects/{w.slug}/cache/entries/{_entry(w).pk}/"),
        hidden="4111",  # what the user typed stays out of the log
    ),
    "deployment create": Case(
        "deployment",
        "create",
        lambda w: w.ui.post(
            reverse("deployments:list", args=[w.slug]),
            {
                "name": "qwen",
                "served_model_name": "qwen2.5",
                "model_path": "Qwen/Qwen2.5-7B",
                "gpu_type": "L4",
                "gpu_count": "1",
                "tensor_parallel_size": "1",
                "max_model_len": "8192",
                "quantization": "none",
                "port": "8123",
                "hourly_cost_usd": "1.5",
                "throughput_tokens_per_s": "500",
            },
        ),  # fmt: skip
        lambda w: _json(
            w.api,
            "POST",
            "/api/deployments/",
            {
                "organization": w.org.slug,
                "name": "qwen",
                "served_model_name": "qwen2.5",
                "model_path": "Qwen/Qwen2.5-7B",
                "gpu_type": "L4",
                "port": 8123,
                "hourly_cost_usd": "1.5",
            },
        ),  # fmt: skip
    ),
    "deployment start": Case(
        "deployment",
        "start",
        lambda w: w.ui.post(reverse("deployments:start", args=[w.slug, deployment_make(w.org).pk])),
        lambda w: _json(w.api, "POST", f"/api/deployments/{deployment_make(w.org).pk}/start/"),
        check=lambda e: e.diff["before"]["status"] == "stopped" and e.diff["after"]["status"] == "starting",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("surface", [Surface.UI, Surface.API])
def test_each_kind_of_change_is_recorded_with_a_masked_diff(w: W, name: str, surface: str) -> None:
    case = CASES[name]
    act = case.ui if surface == Surface.UI else case.api
    if act is None:
        pytest.skip("the pages have no such change; the API's is checked")
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    response = act(w)
    assert response.status_code < 400, (response.status_code, response.content[:400])
    events = list(AuditEvent.objects.filter(id__gt=before, object_type=case.object_type, action=case.action))
    assert len(events) == 1, [(e.object_type, e.action) for e in AuditEvent.objects.filter(id__gt=before)]
    [event] = events
    assert (event.surface, event.actor, event.actor_label) == (surface, w.people.owner, w.people.owner.username)
    assert event.organization_id == w.org.pk and event.object_id and event.object_repr
    assert case.check(event), event.diff
    if case.hidden:
        assert case.hidden not in json.dumps(event.diff) + event.object_repr


def test_an_update_keeps_only_the_fields_that_changed(w: W) -> None:
    budget = _budget(w)
    _json(w.api, "PATCH", f"/api/budgets/{budget.pk}/", {"amount_usd": "7.5", "name": "b"})
    event = AuditEvent.objects.filter(object_type="budget", action="update").get()
    assert event.diff == {"before": {"amount_usd": "5.0000"}, "after": {"amount_usd": "7.5000"}}


def test_a_change_that_fails_leaves_no_row(w: W) -> None:
    before = AuditEvent.objects.count()
    refused = _json(w.api, "POST", "/api/providers/", {
        "organization": w.org.slug, "name": "x", "kind": "openai_compatible", "base_url": "http://169.254.169.254/v1",
    })  # fmt: skip
    assert refused.status_code == 400 and AuditEvent.objects.count() == before


def test_commands_and_background_work_are_labelled(w: W, capsys: Any) -> None:
    from django.core.management import call_command

    call_command("issue_key", "--project", w.slug, "--name", "from the shell")
    event = AuditEvent.objects.filter(object_type="key", action="create").latest("id")
    assert event.surface == Surface.COMMAND and event.actor is None
    assert event.actor_label.startswith("manage.py issue_key (")
    call_command("reencrypt_secrets")
    reencrypted = AuditEvent.objects.filter(action="reencrypt", object_type="provider", object_id=str(w.provider.pk))
    [event] = reencrypted
    assert event.actor_label.startswith("manage.py reencrypt_secrets (") and "sk-simulated" not in json.dumps(
        event.diff
    )
    assert event.diff["before"]["secret"] != event.diff["after"]["secret"]  # the stored ciphertext changed
    key_issue(project=w.people.tenant.project, name="by a worker")  # no request, no command: a task, say
    event = AuditEvent.objects.filter(object_type="key", action="create").latest("id")
    assert (event.surface, event.actor, event.actor_label) == (Surface.SYSTEM, None, "")


@pytest.mark.django_db(transaction=True)  # the ASGI handler runs the view in another thread: rows must be committed
def test_the_async_handler_carries_the_actor_too(w: W) -> None:
    """Under ASGI (how the product runs) the middleware's context reaches the sync view's service call."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    token = api_token_rotate(user=w.people.owner).key
    response = async_to_sync(AsyncClient().post)(
        f"/api/projects/{w.slug}/keys/",
        {"name": "async"},
        content_type="application/json",
        headers={"Authorization": f"Token {token}"},
    )
    assert response.status_code == 201, response.content
    event = AuditEvent.objects.filter(object_type="key", action="create").latest("id")
    assert (event.surface, event.actor) == (Surface.API, w.people.owner)


@pytest.mark.django_db(transaction=True)
def test_the_export_streams_from_a_cursor_that_is_not_holdable(w: W) -> None:
    """A holdable cursor is computed whole before its first row: a long audit log would stall its export."""
    for n in range(4):
        _json(w.api, "POST", f"/api/projects/{w.slug}/keys/", {"name": f"k{n}"})
    response = w.ui.get(reverse("audit:export"))
    stream = iter(response.streaming_content)
    assert next(stream).startswith(b"at,organization")
    next(stream)  # the first event: the query is open now
    with connection.cursor() as cursor:
        cursor.execute("SELECT is_holdable FROM pg_cursors WHERE statement ILIKE '%%audit_auditevent%%'")
        assert cursor.fetchall() == [(False,)]
    assert len(list(stream)) >= 3
    response.close()


# Append-only ------------------------------------------------------------------------------------------


def _event(w: W) -> AuditEvent:
    _json(w.api, "POST", f"/api/projects/{w.slug}/keys/", {"name": "x"})
    return AuditEvent.objects.latest("id")


def test_the_orm_cannot_change_or_delete_an_event(w: W) -> None:
    event = _event(w)
    event.action = "delete"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    for statement in (
        lambda: AuditEvent.objects.filter(pk=event.pk).update(actor_label="someone else"),
        lambda: AuditEvent.objects.filter(pk=event.pk).delete(),
        lambda: AuditEvent.objects.all().delete(),
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            statement()
    assert AuditEvent.objects.get(pk=event.pk).actor_label == w.people.owner.username


@pytest.mark.parametrize(
    "sql",
    ["UPDATE audit_auditevent SET actor_label = 'x'", "DELETE FROM audit_auditevent",
     "UPDATE audit_auditevent SET diff = '{}' WHERE id = %s"],
)  # fmt: skip
def test_raw_sql_cannot_change_or_delete_an_event(w: W, sql: str) -> None:
    event = _event(w)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [event.pk] if "%s" in sql else None)
    assert AuditEvent.objects.filter(pk=event.pk, actor_label=w.people.owner.username).exists()


def test_the_api_has_no_write_verb(w: W) -> None:
    event = _event(w)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for url in ("/api/audit/", f"/api/audit/{event.pk}/"):
            response = _json(w.api, method, url, {"action": "delete"})
            assert response.status_code in (404, 405), (method, url, response.status_code)
            assert response.json()["error"]["type"] in ("not_found", "method_not_allowed")
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_admin_shows_events_read_only(w: W) -> None:
    event = _event(w)
    staff = User.objects.create_superuser("auditor", password="correct horse battery staple")
    client = login(Client(), staff)
    assert client.get("/admin/audit/auditevent/").status_code == 200
    page = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"actor_label": "x"}).status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).actor_label == w.people.owner.username
