"""One end user's cached answer is never served to another unless the lead turned sharing on."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.cache.models import CachePolicy
from tests.factories import Tenant, login, member_make
from tests.gateway.helpers import sdk, wait_policy

pytestmark = pytest.mark.live

QUESTION = [{"role": "user", "content": "What is on my last invoice?"}]
SHARED = {
    "feature": "",
    "exact_enabled": "on",
    "similarity_threshold": "0.95",
    "ttl_seconds": "60",
    "max_entries": "10",
    "eviction": "lfu",
    "share_across_users": "on",
    "deny_patterns": "",
}


def _cache(client, **kwargs: object) -> str:  # type: ignore[no-untyped-def]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=QUESTION, **kwargs)
    return raw.headers["x-cache"]


def test_answers_stay_with_their_end_user_by_default(gateway: str, tenant: Tenant) -> None:
    CachePolicy.objects.create(project=tenant.project)
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    assert _cache(client, user="alice") == "miss"
    assert _cache(client, user="alice") == "hit-exact"
    assert _cache(client, user="bob") == "miss", "bob must not get alice's answer"
    assert _cache(client, extra_headers={"X-End-User": "carol"}) == "miss"
    assert _cache(client, user="alice:billing-bot") == "hit-exact", "the end user, not the feature, scopes it"
    assert _cache(client, extra_headers={"X-End-User": "bob"}) == "hit-exact"


def test_a_lead_can_share_answers_across_end_users(gateway: str, tenant: Tenant) -> None:
    browser = login(Client(), tenant.owner)
    assert browser.post(f"/projects/{tenant.project.slug}/cache/", SHARED).status_code == 302
    assert CachePolicy.objects.get(project=tenant.project).share_across_users
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    assert _cache(client, user="alice") == "miss"
    assert _cache(client, user="bob") == "hit-exact"


def test_a_developer_cannot_turn_sharing_on(gateway: str, tenant: Tenant) -> None:
    CachePolicy.objects.create(project=tenant.project)
    developer = member_make(tenant, team=tenant.team)
    browser = login(Client(), developer)
    assert browser.post(f"/projects/{tenant.project.slug}/cache/", SHARED).status_code == 403
    garbage = login(Client(), tenant.owner).post(
        f"/projects/{tenant.project.slug}/cache/", {**SHARED, "share_across_users": "\x00", "ttl_seconds": "x"}
    )
    assert garbage.status_code == 400
    assert CachePolicy.objects.get(project=tenant.project).share_across_users is False
