"""The projects/keys/ledger/providers/prices API: scoped by membership, writes through services."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from apps.core.apikeys import hash_key
from apps.keys.models import ApiKey
from apps.providers.models import Price
from apps.providers.services import price_set
from tests.factories import People, entry_make

pytestmark = pytest.mark.django_db


def _api(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_anonymous_is_refused(people: People) -> None:
    for url in ("/api/projects/", "/api/ledger/", "/api/providers/", "/api/prices/"):
        assert _api(None).get(url).status_code in (401, 403), url


def test_projects_list_and_detail(people: People) -> None:
    body = _api(people.owner).get("/api/projects/").json()
    assert [p["slug"] for p in body["results"]] == [people.tenant.project.slug]
    detail = _api(people.finance).get(f"/api/projects/{people.tenant.project.slug}/").json()
    assert detail["organization"] == people.tenant.org.slug and detail["default_provider"] == people.tenant.provider.pk


def test_outsider_gets_404_everywhere(people: People) -> None:
    api = _api(people.outsider)
    slug = people.tenant.project.slug
    lookup_id = people.tenant.key.api_key.lookup_id
    assert api.get(f"/api/projects/{slug}/").status_code == 404
    assert api.get(f"/api/projects/{slug}/keys/").status_code == 404
    assert api.post(f"/api/projects/{slug}/keys/", {"name": "x"}, format="json").status_code == 404
    assert api.post(f"/api/keys/{lookup_id}/revoke/").status_code == 404
    assert ApiKey.objects.get(lookup_id=lookup_id).revoked_at is None
    entry_make(people.tenant)
    assert api.get("/api/ledger/", {"project": slug}).json()["results"] == []
    assert people.tenant.provider.pk not in [p["id"] for p in api.get("/api/providers/").json()["results"]]
    assert api.get("/api/prices/", {"provider": people.tenant.provider.pk}).json()["results"] == []


def test_issue_key_returns_plaintext_once(people: People) -> None:
    api = _api(people.member)
    slug = people.tenant.project.slug
    response = api.post(
        f"/api/projects/{slug}/keys/",
        {"name": "ci", "allowed_models": ["gpt-5-nano"], "default_feature": "ci"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    key = ApiKey.objects.get(lookup_id=body["lookup_id"])
    assert body["key"].startswith("cc_live_" + key.lookup_id)
    assert key.key_hash == hash_key(body["key"]) != body["key"]
    assert (key.allowed_models, key.default_feature, key.created_by) == (["gpt-5-nano"], "ci", people.member)
    listing = api.get(f"/api/projects/{slug}/keys/")
    assert body["key"] not in listing.content.decode()
    assert {k["lookup_id"]: k["status"] for k in listing.json()["results"]}[key.lookup_id] == "active"
    assert api.post(f"/api/projects/{slug}/keys/", {"name": ""}, format="json").status_code == 400


def test_revoke(people: People) -> None:
    lookup_id = people.tenant.key.api_key.lookup_id
    response = _api(people.owner).post(f"/api/keys/{lookup_id}/revoke/")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    assert ApiKey.objects.get(lookup_id=lookup_id).revoked_at is not None


def test_finance_reads_but_cannot_post(people: People) -> None:
    api = _api(people.finance)
    slug = people.tenant.project.slug
    lookup_id = people.tenant.key.api_key.lookup_id
    assert api.get(f"/api/projects/{slug}/keys/").status_code == 200
    assert api.post(f"/api/projects/{slug}/keys/", {"name": "x"}, format="json").status_code == 403
    assert api.post(f"/api/keys/{lookup_id}/revoke/").status_code == 403
    assert ApiKey.objects.filter(project=people.tenant.project).count() == 1
    assert ApiKey.objects.get(lookup_id=lookup_id).revoked_at is None


def test_ledger_filters(people: People) -> None:
    day = dt.datetime(2031, 5, 1, 10, tzinfo=dt.UTC)
    entry_make(people.tenant, request_id="a", created_at=day, feature="search", end_user="ann")
    entry_make(people.tenant, request_id="b", created_at=day + dt.timedelta(days=1), served_model="gpt-5-nano")
    entry_make(people.tenant, request_id="c", created_at=day + dt.timedelta(days=2), end_user="bob")
    entry_make(people.other, request_id="foreign", created_at=day)
    api = _api(people.owner)

    def ids(**params: str) -> set[str]:
        response = api.get("/api/ledger/", params)
        assert response.status_code == 200, response.content
        return {row["request_id"] for row in response.json()["results"]}

    assert ids() == {"a", "b", "c"}
    assert ids(project=people.tenant.project.slug, feature="search") == {"a"}
    assert ids(model="gpt-5-nano") == {"b"}
    assert ids(user="bob") == {"c"}
    assert ids(since="2031-05-02") == {"b", "c"}
    assert ids(until="2031-05-02") == {"a", "b"}
    assert ids(since="2031-05-02T00:00:00Z", until="2031-05-02T23:00:00Z") == {"b"}
    assert api.get("/api/ledger/", {"since": "yesterday"}).status_code == 400
    row = api.get("/api/ledger/", {"user": "ann"}).json()["results"][0]
    assert row["key"] == people.tenant.key.api_key.lookup_id and Decimal(row["savings"]) == Decimal("0.000023")


def test_ledger_is_paginated_with_bounded_queries(people: People, django_assert_max_num_queries) -> None:  # type: ignore[no-untyped-def]
    for _ in range(30):
        entry_make(people.tenant)
    api = _api(people.owner)
    with django_assert_max_num_queries(6):
        body = api.get("/api/ledger/", {"limit": 10}).json()
    assert "count" not in body and len(body["results"]) == 10 and body["next"] and body["previous"] is None


def test_providers_never_include_secrets(people: People) -> None:
    provider = people.tenant.provider
    response = _api(people.member).get("/api/providers/")
    text = response.content.decode()
    assert provider.secret and provider.secret not in text and provider.secret_encrypted not in text
    row = response.json()["results"][0]
    assert row["has_secret"] is True and "secret" not in row and "secret_encrypted" not in row


def test_prices_filter_by_provider(people: People) -> None:
    provider = people.tenant.provider
    price_set(provider=provider, model="gpt-4o-mini", input_per_mtok=Decimal("0.2"), output_per_mtok=Decimal("0.8"),
              effective_from=dt.date(2030, 1, 1))  # fmt: skip
    body = _api(people.finance).get("/api/prices/", {"provider": provider.pk, "limit": 500}).json()
    assert body["count"] == Price.objects.filter(provider=provider).count()
    mini = [p for p in body["results"] if p["model"] == "gpt-4o-mini"]
    assert [p["effective_from"] for p in mini] == ["2030-01-01", "2025-08-07"]
    assert _api(people.finance).get("/api/prices/", {"provider": "abc"}).status_code == 400
