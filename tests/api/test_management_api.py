"""The management API: what the pages do, through /api/, with token scopes and one error shape.

Who may call what is walked for every verb in tests/tenancy/test_role_matrix.py; here, what each
endpoint does, refuses and answers (happy paths, garbage, the outsider, the lesser role).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.utils import timezone

from apps.cache.models import CacheEntry
from apps.core.pricing import LongContext
from apps.dashboard.models import TokenScope
from apps.dashboard.services import api_token_rotate
from apps.deployments.models import Deployment
from apps.keys.models import ApiKey
from apps.ledger.models import LedgerEntry
from apps.policy.build import build_snapshot
from apps.providers.models import Price, Provider
from apps.providers.services import provider_create
from apps.reports.models import ExportJob, ExportStatus
from apps.reports.services import export_job_run
from apps.tenancy.models import Membership, Project, Role
from tests.factories import People, entry_make, member_make, tenant_make, user_make

pytestmark = pytest.mark.django_db


def api(user: User, scope: str = TokenScope.WRITE) -> Client:
    return Client(headers={"Authorization": f"Token {api_token_rotate(user=user, scope=scope).key}"})


def call(client: Client, method: str, url: str, body: Any = None) -> Any:
    return client.generic(method, url, json.dumps(body if body is not None else {}), content_type="application/json")


def error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "fields"}, body
    return body["error"]


# One error shape ---------------------------------------------------------------------------------------


def test_every_error_has_one_shape(people: People, settings: Any) -> None:
    owner = api(people.owner)
    cases = [
        (Client().get("/api/projects/"), 401, "not_authenticated"),
        (Client(headers={"Authorization": "Token nope"}).get("/api/projects/"), 401, "authentication_failed"),
        (owner.get("/api/projects/nope/"), 404, "not_found"),
        (owner.get("/api/no-such-endpoint/"), 404, "not_found"),
        (call(owner, "PUT", "/api/projects/"), 405, "method_not_allowed"),
        (owner.post("/api/projects/", "{not json", content_type="application/json"), 400, "parse_error"),
        # Nested past Python's recursion limit: json.load raised RecursionError, not ValueError.
        (owner.post("/api/projects/", "[" * 100_000, content_type="application/json"), 400, "parse_error"),
        (owner.post("/api/projects/", '{"name": NaN}', content_type="application/json"), 400, "parse_error"),
        (call(owner, "POST", "/api/projects/", {"organization": people.tenant.org.slug}), 400, "validation_error"),
        (call(api(people.finance), "POST", "/api/projects/", {"name": "x"}), 403, "permission_denied"),
        (owner.get("/api/ledger/", {"since": "yesterday"}), 400, "validation_error"),
        (owner.get("/api/ledger/", {"model": "a\x00b"}), 400, "validation_error"),
        (owner.get("/api/series/spend/", {"until": "0001-01-02"}), 400, "validation_error"),
        (owner.get("/api/series/spend/", {"until": "9999-12-31"}), 400, "validation_error"),
    ]
    for response, status, kind in cases:
        assert response.status_code == status, (response.status_code, response.content[:300])
        assert error(response)["type"] == kind
    fields = error(cases[8][0])["fields"]
    assert fields["name"] == ["This field is required."]
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"user": "1/minute"}}
    limited = api(people.member)
    limited.get("/api/projects/")
    throttled = limited.get("/api/projects/")
    assert throttled.status_code == 429 and error(throttled)["type"] == "throttled" and throttled["Retry-After"]


# Tokens: scope and expiry --------------------------------------------------------------------------------


def test_a_read_token_reads_and_is_refused_every_write(people: People) -> None:
    reader = api(people.owner, TokenScope.READ)
    assert reader.get("/api/projects/").status_code == 200
    refused = call(reader, "POST", f"/api/projects/{people.tenant.project.slug}/keys/", {"name": "ci"})
    assert refused.status_code == 403 and "read-only" in error(refused)["message"]
    assert call(reader, "POST", "/api/account/token/", {"scope": "write"}).status_code == 403  # no escalation
    assert ApiKey.objects.filter(project=people.tenant.project).count() == 1


def test_tokens_are_made_with_a_scope_and_a_shorter_life_through_the_api(people: People) -> None:
    writer = api(people.member)
    made = call(writer, "POST", "/api/account/token/", {"scope": "read", "lifetime_days": 2})
    assert made.status_code == 201 and made["Cache-Control"] == "no-store"
    body = made.json()
    assert body["scope"] == "read" and len(body["key"]) == 40
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert timezone.now() + dt.timedelta(days=1) < expires <= timezone.now() + dt.timedelta(days=2)
    assert writer.get("/api/projects/").status_code == 401  # the token in use was replaced
    fresh = Client(headers={"Authorization": f"Token {body['key']}"})
    state = fresh.get("/api/account/token/").json()
    assert state["scope"] == "read" and "key" not in state and state["prefix"] == body["key"][:6]
    too_long = call(api(people.member), "POST", "/api/account/token/", {"scope": "write", "lifetime_days": 9999})
    assert too_long.status_code == 400 and "lifetime_days" in error(too_long)["fields"]
    for garbage in ({"scope": "admin"}, {"scope": "read", "lifetime_days": 0}, {"scope": ["write"]}, {}):
        response = call(api(people.member), "POST", "/api/account/token/", garbage)
        assert response.status_code == 400, garbage


def test_the_account_page_makes_read_and_write_tokens(people: People) -> None:
    from tests.factories import login

    page = login(Client(), people.owner)
    response = page.post("/account/token/", {"action": "create", "scope": "read", "lifetime_days": "3"})
    assert response.status_code == 200 and "read-scoped" in response.content.decode()
    assert page.post("/account/token/", {"action": "create", "scope": "root"}).status_code == 400
    assert (
        page.post("/account/token/", {"action": "create", "scope": "write", "lifetime_days": "999"}).status_code == 400
    )


# Projects, teams, members ----------------------------------------------------------------------------------


def test_projects_are_created_and_changed_within_the_matrix(people: People) -> None:
    tenant, owner = people.tenant, api(people.owner)
    lead = member_make(tenant, Role.TEAM_LEAD, team=tenant.team)
    made = call(api(lead), "POST", "/api/projects/",
                {"organization": tenant.org.slug, "name": "Lead's", "team": tenant.team.slug})  # fmt: skip
    assert made.status_code == 201 and made.json()["team"] == tenant.team.slug
    # A lead cannot leave the team out (organisation-wide), nor move a project out of their team.
    assert call(api(lead), "POST", "/api/projects/", {"organization": tenant.org.slug, "name": "x"}).status_code == 403
    other_team = call(owner, "POST", "/api/teams/", {"organization": tenant.org.slug, "name": "Other"}).json()
    moved = call(api(lead), "PATCH", f"/api/projects/{made.json()['slug']}/", {"team": other_team["slug"]})
    assert moved.status_code == 403
    assert Project.objects.get(slug=made.json()["slug"]).team == tenant.team
    renamed = call(owner, "PATCH", f"/api/projects/{made.json()['slug']}/", {"name": "Renamed", "team": None})
    assert renamed.status_code == 200 and renamed.json()["team"] is None and renamed.json()["name"] == "Renamed"
    # Another organisation's provider or team is not a valid choice.
    foreign = call(owner, "PATCH", f"/api/projects/{tenant.project.slug}/",
                   {"default_provider": people.other.provider.pk})  # fmt: skip
    assert foreign.status_code == 400 and "default_provider" in error(foreign)["fields"]
    assert call(owner, "PATCH", f"/api/projects/{tenant.project.slug}/", {"team": "no-such-team"}).status_code == 400
    outsider = call(api(people.outsider), "PATCH", f"/api/projects/{tenant.project.slug}/", {"name": "mine"})
    assert outsider.status_code == 404


def test_members_and_roles_are_the_owners_and_an_organisation_keeps_an_owner(people: People) -> None:
    tenant, owner = people.tenant, api(people.owner)
    newcomer = user_make("newcomer")
    added = call(
        owner,
        "POST",
        "/api/members/",
        {"organization": tenant.org.slug, "user": "newcomer", "role": "developer", "team": tenant.team.slug},
    )
    assert added.status_code == 201 and added.json()["team"] == tenant.team.slug
    assert Membership.objects.get(user=newcomer).role == Role.DEVELOPER
    again = call(owner, "POST", "/api/members/", {"organization": tenant.org.slug, "user": "newcomer", "role": "owner"})
    assert again.status_code == 400 and "user" in error(again)["fields"]
    assert (
        call(
            owner, "POST", "/api/members/", {"organization": tenant.org.slug, "user": "nobody-at-all", "role": "owner"}
        ).status_code
        == 400
    )
    # Nobody but an owner changes roles: a developer cannot make themself owner.
    mine = people.member.memberships.get()
    assert call(api(people.member), "PATCH", f"/api/members/{mine.pk}/", {"role": "owner"}).status_code == 403
    assert call(api(people.finance), "DELETE", f"/api/members/{mine.pk}/").status_code == 403
    assert call(api(people.outsider), "DELETE", f"/api/members/{mine.pk}/").status_code == 404
    # The last owner can be neither demoted nor removed.
    last = people.owner.memberships.get()
    demote = call(owner, "PATCH", f"/api/members/{last.pk}/", {"role": "finance"})
    assert demote.status_code == 400 and "last owner" in error(demote)["fields"]["role"][0]
    assert call(owner, "DELETE", f"/api/members/{last.pk}/").status_code == 400
    assert call(owner, "DELETE", f"/api/members/{added.json()['id']}/").status_code == 204
    assert not Membership.objects.filter(user=newcomer).exists()
    listing = api(people.member).get("/api/members/").json()["results"]
    assert {m["user"] for m in listing} == {people.owner.username, people.member.username, people.finance.username}


def _demote(actor: User, target: User, barrier: threading.Barrier, statuses: list[int]) -> None:
    client = api(actor)
    url = f"/api/members/{target.memberships.get().pk}/"
    barrier.wait()
    statuses.append(call(client, "PATCH", url, {"role": "finance"}).status_code)
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner() -> None:
    for _round in range(4):
        tenant = tenant_make()
        second = member_make(tenant, Role.OWNER)
        barrier, statuses = threading.Barrier(2), []
        threads = [
            threading.Thread(target=_demote, args=(actor, target, barrier, statuses))
            for actor, target in ((tenant.owner, second), (second, tenant.owner))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(statuses) in ([200, 400], [200, 403]), statuses
        assert Membership.objects.filter(organization=tenant.org, role=Role.OWNER).count() == 1


# Keys --------------------------------------------------------------------------------------------------


def test_a_key_is_shown_once_and_rotation_keeps_its_settings(people: People) -> None:
    project, owner = people.tenant.project, api(people.owner)
    issued = call(owner, "POST", f"/api/projects/{project.slug}/keys/",
                  {"name": "ci", "allowed_models": ["gpt-4o-mini"], "default_feature": "ci"})  # fmt: skip
    lookup = issued.json()["lookup_id"]
    assert issued.json()["key"].startswith("cc_live_") and "key" not in owner.get(f"/api/keys/{lookup}/").json()
    rotated = call(owner, "POST", f"/api/keys/{lookup}/rotate/", {"grace_seconds": 3600})
    assert rotated.status_code == 201 and rotated.json()["key"] != issued.json()["key"]
    new = ApiKey.objects.get(lookup_id=rotated.json()["lookup_id"])
    old = ApiKey.objects.get(lookup_id=lookup)
    assert (new.allowed_models, new.default_feature, new.name) == (["gpt-4o-mini"], "ci", "ci")
    assert old.is_active and old.revoked_at is None
    assert timezone.now() < old.expires_at <= timezone.now() + dt.timedelta(hours=1)
    now = call(owner, "POST", f"/api/keys/{new.lookup_id}/rotate/", {})
    assert now.status_code == 201 and not ApiKey.objects.get(pk=new.pk).is_active
    dead = call(owner, "POST", f"/api/keys/{new.lookup_id}/rotate/", {})
    assert dead.status_code == 400  # a revoked key is not rotated
    for garbage in ({"grace_seconds": -1}, {"grace_seconds": 10**9}, {"grace_seconds": "soon"}):
        assert call(owner, "POST", f"/api/keys/{old.lookup_id}/rotate/", garbage).status_code == 400
    assert call(api(people.finance), "POST", f"/api/keys/{old.lookup_id}/rotate/", {}).status_code == 403
    assert call(api(people.outsider), "POST", f"/api/keys/{old.lookup_id}/rotate/", {}).status_code == 404


# Providers, prices, aliases ---------------------------------------------------------------------------------


def test_provider_secrets_are_write_only_and_urls_masked_for_non_owners(people: People) -> None:
    owner = api(people.owner)
    made = call(owner, "POST", "/api/providers/", {
        "organization": people.tenant.org.slug, "name": "vllm", "kind": "openai_compatible",
        "base_url": "http://127.0.0.1:8001/v1", "secret": "sk-top-secret",
    })  # fmt: skip
    assert made.status_code == 201 and "secret" not in made.json() and made.json()["has_secret"] is True
    provider = Provider.objects.get(pk=made.json()["id"])
    assert provider.secret == "sk-top-secret"
    seen = api(people.finance).get(f"/api/providers/{provider.pk}/").json()
    assert seen["base_url"] == "http://127.0.0.1:8001/…****" and "sk-top-secret" not in json.dumps(seen)
    moved = call(owner, "PATCH", f"/api/providers/{provider.pk}/", {"base_url": "http://localhost:8002/v1"})
    assert moved.status_code == 400 and "secret" in error(moved)["fields"]  # a new host needs the secret again
    inward = call(
        owner,
        "POST",
        "/api/providers/",
        {
            "organization": people.tenant.org.slug,
            "name": "meta",
            "kind": "openai_compatible",
            "base_url": "http://169.254.169.254/",
        },
    )
    assert inward.status_code == 400 and "base_url" in error(inward)["fields"]
    garbage = call(
        owner,
        "POST",
        "/api/providers/",
        {"organization": people.tenant.org.slug, "name": "x" * 300, "kind": "carrier-pigeon", "base_url": "ftp://x"},
    )
    assert garbage.status_code == 400 and {"name", "kind", "base_url"} <= set(error(garbage)["fields"])
    assert call(api(people.finance), "PATCH", f"/api/providers/{provider.pk}/", {"name": "x"}).status_code == 403
    assert call(api(people.outsider), "PATCH", f"/api/providers/{provider.pk}/", {"name": "x"}).status_code == 404


def test_a_price_set_through_the_api_keeps_sets_or_removes_the_long_context_rate(people: People) -> None:
    """Setting a model's token prices keeps its long-context rate unless the body says otherwise: before,
    a new price row through the API silently dropped it (a request past 272K input tokens then billed at the
    standard rate)."""
    owner, provider = api(people.owner), people.tenant.provider
    seeded = Price.objects.get(provider=provider, model="gpt-5.4").long_context()
    assert seeded is not None
    base = {"provider": provider.pk, "model": "gpt-5.4", "input_per_mtok": "3", "output_per_mtok": "16"}

    kept = call(owner, "POST", "/api/prices/", {**base, "effective_from": "2031-01-01"})
    assert kept.status_code == 201 and kept.json()["long_context_above_tokens"] == seeded.above
    rule = {"above_input_tokens": 300_000, "input_factor": "2.5", "output_factor": "1.25"}
    changed = call(owner, "POST", "/api/prices/", {**base, "long_context": rule, "effective_from": "2031-02-01"})
    assert changed.status_code == 201
    assert (changed.json()["long_context_above_tokens"], changed.json()["long_context_output_factor"]) == (
        300_000, "1.250",
    )  # fmt: skip
    row = Price.objects.get(provider=provider, model="gpt-5.4", effective_from=dt.date(2031, 2, 1))
    assert row.long_context() == LongContext(300_000, Decimal("2.5"), Decimal("1.25"))
    removed = call(owner, "POST", "/api/prices/", {**base, "long_context": None, "effective_from": "2031-03-01"})
    assert removed.status_code == 201 and removed.json()["long_context_above_tokens"] is None
    for garbage in (
        {"above_input_tokens": 300_000, "input_factor": "2"},
        {"above_input_tokens": 0, "input_factor": "2", "output_factor": "1.5"},
        {"above_input_tokens": 300_000, "input_factor": "0.5", "output_factor": "1"},
        {"above_input_tokens": 300_000, "input_factor": "NaN", "output_factor": "1"},
        {"above_input_tokens": "lots", "input_factor": "2", "output_factor": "1"},
        "x2",
    ):
        body = {**base, "long_context": garbage, "effective_from": "2031-04-01"}
        refused = call(owner, "POST", "/api/prices/", body)
        fields = error(refused)["fields"] if refused.status_code == 400 else {}
        assert any(name.startswith("long_context") for name in fields), garbage
    assert not Price.objects.filter(provider=provider, model="gpt-5.4", effective_from=dt.date(2031, 4, 1)).exists()
    other = {**base, "provider": people.other.provider.pk, "long_context": rule, "effective_from": "2031-05-01"}
    assert call(owner, "POST", "/api/prices/", other).status_code == 400  # another organisation's provider
    assert (
        call(api(people.finance), "POST", "/api/prices/", {**base, "effective_from": "2031-06-01"}).status_code == 403
    )


def test_prices_and_aliases(people: People) -> None:
    owner, provider, slug = api(people.owner), people.tenant.provider, people.tenant.project.slug
    price = call(
        owner,
        "POST",
        "/api/prices/",
        {
            "provider": provider.pk,
            "model": "m",
            "input_per_mtok": "0.5",
            "output_per_mtok": "1.5",
            "effective_from": "2031-01-01",
        },
    )
    assert price.status_code == 201 and price.json()["batch_output_per_mtok"] == "1.500000"
    for garbage in ({"provider": people.other.provider.pk}, {"input_per_mtok": "-1"}, {"input_per_mtok": "NaN"},
                    {"effective_from": "someday"}, {"input_per_mtok": "1e30"}):  # fmt: skip
        body = {"provider": provider.pk, "model": "m", "input_per_mtok": "1", "output_per_mtok": "1",
                "effective_from": "2031-01-01", **garbage}  # fmt: skip
        assert call(owner, "POST", "/api/prices/", body).status_code == 400, garbage
    alias = call(
        owner, "POST", f"/api/projects/{slug}/aliases/", {"alias": "chat", "provider": provider.pk, "model": "gpt-4o"}
    )
    assert alias.status_code == 201
    foreign = call(owner, "POST", f"/api/projects/{slug}/aliases/",
                   {"alias": "x", "provider": people.other.provider.pk, "model": "m"})  # fmt: skip
    assert foreign.status_code == 400
    assert call(api(people.member), "DELETE", f"/api/projects/{slug}/aliases/{alias.json()['id']}/").status_code == 403
    assert call(owner, "DELETE", f"/api/projects/{slug}/aliases/{alias.json()['id']}/").status_code == 204
    assert owner.get(f"/api/projects/{slug}/aliases/").json()["results"] == []


# Cache ----------------------------------------------------------------------------------------------------


def test_cache_policies_entries_and_purge(people: People) -> None:
    owner, slug, project = api(people.owner), people.tenant.project.slug, people.tenant.project
    made = call(owner, "POST", f"/api/projects/{slug}/cache/policies/",
                {"semantic_enabled": True, "deny_patterns": ["re:secret"]})  # fmt: skip
    assert made.status_code == 201 and made.json()["similarity_threshold"] == "0.950"
    twice = call(owner, "POST", f"/api/projects/{slug}/cache/policies/", {})
    assert twice.status_code == 400 and "already exists" in error(twice)["message"]  # one per (project, feature)
    policy_url = f"/api/projects/{slug}/cache/policies/{made.json()['id']}/"
    for garbage in ({"deny_patterns": ["re:(a)\\1"]}, {"similarity_threshold": "2"}, {"ttl_seconds": -5},
                    {"deny_patterns": ["x"] * 51}, {"eviction": "fifo"}):  # fmt: skip
        bad = call(owner, "PATCH", policy_url, garbage)
        assert bad.status_code == 400 and set(garbage) == set(error(bad)["fields"]), garbage
    entry = CacheEntry.objects.create(
        project=project, exact_key="k", fingerprint="f", model="gpt-4o-mini", prompt_text="my address is …",
        response={"choices": [{"message": {"content": "ok"}}]}, expires_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    listed = owner.get(f"/api/projects/{slug}/cache/entries/").json()["results"]
    assert [e["prompt_text"] for e in listed] == ["my address is …"] and "response" not in listed[0]
    detail = owner.get(f"/api/projects/{slug}/cache/entries/{entry.pk}/").json()
    assert detail["response"]["choices"][0]["message"]["content"] == "ok"
    # What users typed: not for developers or finance (403), not for outsiders (404).
    assert api(people.member).get(f"/api/projects/{slug}/cache/entries/").status_code == 403
    assert api(people.finance).get(f"/api/projects/{slug}/cache/entries/{entry.pk}/").status_code == 403
    assert api(people.outsider).get(f"/api/projects/{slug}/cache/entries/").status_code == 404
    assert call(api(people.member), "POST", f"/api/projects/{slug}/cache/purge/", {}).status_code == 403
    purged = call(owner, "POST", f"/api/projects/{slug}/cache/purge/", {"namespace": ""})
    assert purged.json() == {"removed": 1} and not CacheEntry.objects.filter(project=project).exists()


# Deployments --------------------------------------------------------------------------------------------------


def test_deployments_are_registered_started_and_stopped_by_owners(people: People) -> None:
    owner = api(people.owner)
    made = call(owner, "POST", "/api/deployments/", {
        "organization": people.tenant.org.slug, "name": "q", "served_model_name": "qwen",
        "model_path": "Qwen/Qwen2.5-0.5B", "gpu_type": "L4", "hourly_cost_usd": "0.8", "port": 8200,
    })  # fmt: skip
    assert made.status_code == 201 and made.json()["status"] == "stopped"
    hostile = call(owner, "POST", "/api/deployments/", {
        "organization": people.tenant.org.slug, "name": "h", "served_model_name": "h",
        "model_path": "--trust-remote-code", "gpu_type": "L4", "hourly_cost_usd": "1", "port": 8201,
    })  # fmt: skip
    assert hostile.status_code == 400 and "model_path" in error(hostile)["fields"]
    pk = made.json()["id"]
    assert call(api(people.finance), "POST", f"/api/deployments/{pk}/start/").status_code == 403
    assert call(api(people.outsider), "POST", f"/api/deployments/{pk}/start/").status_code == 404
    started = call(owner, "POST", f"/api/deployments/{pk}/start/")
    assert started.status_code == 202 and started.json()["status"] == "starting"
    twice = call(owner, "POST", f"/api/deployments/{pk}/start/")
    assert twice.status_code == 409 and error(twice)["type"] == "conflict"
    stopped = call(owner, "POST", f"/api/deployments/{pk}/stop/")
    assert stopped.status_code == 202 and Deployment.objects.get(pk=pk).status == "stopping"


# Exports and imports ---------------------------------------------------------------------------------------------


def test_an_export_is_started_polled_and_downloaded_by_its_requester_only(people: People) -> None:
    entry_make(people.tenant, feature="=HYPERLINK(1)")
    finance = api(people.finance)
    started = call(
        finance,
        "POST",
        "/api/exports/",
        {"kind": "ledger", "organization": people.tenant.org.slug, "since": "2000-01-01", "until": "2100-01-01"},
    )
    assert started.status_code == 202 and started.json()["status"] == "pending"
    job = ExportJob.objects.get(pk=started.json()["id"])
    assert finance.get(f"/api/exports/{job.pk}/download/").status_code == 404  # not ready yet
    export_job_run(job=job)
    polled = finance.get(f"/api/exports/{job.pk}/").json()
    assert polled["status"] == ExportStatus.DONE and polled["percent"] == 100
    download = finance.get(polled["download_url"], HTTP_ACCEPT="text/csv")
    assert download.status_code == 200 and download["Content-Type"] == "text/csv"
    assert b"'=HYPERLINK(1)" in b"".join(download.streaming_content)
    assert api(people.owner).get(f"/api/exports/{job.pk}/").status_code == 404  # another person's job
    for garbage in ({"kind": "everything"}, {"since": "2100-01-01", "until": "2000-01-01"}, {"project": "nope"},
                    {"organization": people.other.org.slug}, {"group_by": "project,colour"}):  # fmt: skip
        body = {"kind": "rollups", "organization": people.tenant.org.slug, **garbage}
        assert call(finance, "POST", "/api/exports/", body).status_code == 400, garbage


def test_an_import_books_spend_all_or_nothing(people: People) -> None:
    slug, org = people.tenant.project.slug, people.tenant.org.slug
    good = b"start_time,model,input_tokens,output_tokens,cost_usd\n1756684800,gpt-4o-mini,10,5,0.5\n"
    bad = b"start_time,model,input_tokens,output_tokens,cost_usd\n1756684800,gpt-4o-mini,ten,5,0.5\n"

    def upload(user: User, content: bytes, **extra: str) -> Any:
        body = {"organization": org, "project": slug, "file": SimpleUploadedFile("usage.csv", content), **extra}
        return api(user).post("/api/imports/", body)

    refused = upload(people.owner, bad)
    assert refused.status_code == 400 and error(refused)["fields"]["file"][0].startswith("line 2:")
    assert not LedgerEntry.objects.filter(project=people.tenant.project).exists()
    done = upload(people.owner, good)
    assert done.status_code == 201 and done.json()["created"] == 1 and Decimal(done.json()["cost"]) == Decimal("0.5")
    assert upload(people.finance, good).status_code == 403
    assert upload(people.outsider, good).status_code == 400  # the project is not among theirs: an invalid choice
    assert upload(people.owner, good, project=people.other.project.slug).status_code == 400


def test_whether_a_provider_speaks_the_responses_api_is_set_by_owners_and_reaches_the_snapshot(
    people: People,
) -> None:
    owner = api(people.owner)
    made = call(owner, "POST", "/api/providers/", {
        "organization": people.tenant.org.slug, "name": "vllm chat", "kind": "openai_compatible",
        "base_url": "http://127.0.0.1:8001/v1", "responses_api": False,
    })  # fmt: skip
    assert made.status_code == 201 and made.json()["responses_api"] is False
    provider = Provider.objects.get(pk=made.json()["id"])
    assert build_snapshot(1).providers[provider.pk].responses_api is False
    url = f"/api/providers/{provider.pk}/"
    assert call(owner, "PATCH", url, {"responses_api": True}).json()["responses_api"] is True
    assert build_snapshot(2).providers[provider.pk].responses_api is True
    garbage = call(owner, "PATCH", url, {"responses_api": "perhaps"})
    assert garbage.status_code == 400 and "responses_api" in error(garbage)["fields"]
    assert call(api(people.finance), "PATCH", url, {"responses_api": False}).status_code == 403
    assert call(api(people.outsider), "PATCH", url, {"responses_api": False}).status_code == 404
    assert Provider.objects.get(pk=provider.pk).responses_api is True


def test_a_project_created_through_the_api_gets_a_default_provider_by_the_forms_rule(people: People) -> None:
    tenant, owner = people.tenant, api(people.owner)
    only = call(owner, "POST", "/api/projects/", {"organization": tenant.org.slug, "name": "Only one"})
    assert only.status_code == 201 and only.json()["default_provider"] == tenant.provider.pk
    second = provider_create(organization=tenant.org, name="second", kind="simulated", base_url="http://127.0.0.1:9/v1")
    body = {"organization": tenant.org.slug, "name": "Two to choose from"}
    unchosen = call(owner, "POST", "/api/projects/", body)
    assert unchosen.status_code == 400 and "several providers" in error(unchosen)["fields"]["default_provider"][0]
    for garbage in ("x", -1, 0, 10**30, people.other.provider.pk):  # another organisation's provider: not there
        refused = call(owner, "POST", "/api/projects/", {**body, "default_provider": garbage})
        assert refused.status_code == 400, garbage
    assert not Project.objects.filter(name="Two to choose from").exists()
    chosen = call(owner, "POST", "/api/projects/", {**body, "default_provider": second.pk})
    assert chosen.status_code == 201 and chosen.json()["default_provider"] == second.pk
