"""Tenant regexes cannot stall the shared gateway: RE2 (linear time), checked when saved, on capped text."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.cache.models import CachePolicy
from apps.core.patterns import SCAN_CHARS, Pattern
from apps.dashboard.services import api_token_rotate
from apps.routing.models import RoutingRule
from tests.factories import Tenant, login, tenant_make
from tests.gateway.helpers import sdk, wait_policy

EVIL = "(a+)+$"


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_rotate(user=user).key}")
    return client


def test_patterns_are_checked_as_re2_when_saved(db: None) -> None:
    tenant = tenant_make()
    api = _api(tenant.owner)
    rule = {"project": tenant.project.slug, "name": "r", "action": "route", "primaries": ["gpt-4o-mini @ sim"]}
    for bad in ("(a)\\1", "(?<=x)y", "(?!x)", "(", "a{2,1}", "x" * 501):
        response = api.post("/api/routing-rules/", {**rule, "match_regex": bad}, format="json")
        assert response.status_code == 400 and "match_regex" in response.json()["error"]["fields"], bad
    assert not RoutingRule.objects.exists()
    assert api.post("/api/routing-rules/", {**rule, "match_regex": EVIL}, format="json").status_code == 201

    client = login(Client(), tenant.owner)
    url = f"/projects/{tenant.project.slug}/cache/"
    policy = {
        "feature": "",
        "exact_enabled": "on",
        "similarity_threshold": "0.95",
        "ttl_seconds": "60",
        "max_entries": "10",
        "eviction": "lfu",
    }
    refused = client.post(url, {**policy, "deny_patterns": "re:(a)\\1"})
    assert refused.status_code == 400 and "not a valid regular expression" in refused.content.decode()
    too_many = client.post(url, {**policy, "deny_patterns": "\n".join(f"re:x{n}" for n in range(51))})
    assert too_many.status_code == 400 and "At most 50 patterns" in too_many.content.decode()
    assert client.post(url, {**policy, "deny_patterns": f"re:{EVIL}"}).status_code == 302


def test_scanned_text_is_capped() -> None:
    pattern = Pattern("needle")
    assert pattern.search("x" * (SCAN_CHARS - 6) + "needle")
    assert not pattern.search("x" * SCAN_CHARS + "needle"), "text past the cap is not searched"


@pytest.mark.live
def test_an_evil_pattern_does_not_stall_another_tenant(gateway: str, tenant: Tenant, upstream: str) -> None:
    """A lead saves (a+)+$ as a routing condition and as a cache deny pattern, then sends the inputs that
    make a backtracking engine run for ages; a second tenant on the same gateway is answered at once."""
    RoutingRule.objects.all().delete()
    api = _api(tenant.owner)
    created = api.post(
        "/api/routing-rules/",
        {
            "project": tenant.project.slug,
            "name": "evil",
            "action": "route",
            "match_regex": EVIL,
            "primaries": ["gpt-4o-mini @ sim"],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    CachePolicy.objects.create(project=tenant.project, deny_patterns=[f"re:{EVIL}"])
    other = tenant_make(upstream_url=upstream)
    wait_policy(gateway, tenant.key.plaintext)
    wait_policy(gateway, other.key.plaintext)

    evil_texts = ["a" * 40 + "!", "a" * 2_000_000 + "!"]
    errors: list[BaseException] = []
    answered = []

    def attack() -> None:
        client = openai.OpenAI(base_url=gateway, api_key=tenant.key.plaintext, max_retries=0, timeout=60)
        try:
            for _ in range(3):
                for text in evil_texts:
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
                    answered.append(len(text))
        except BaseException as exc:  # noqa: BLE001  (reported below, from the test's thread)
            errors.append(exc)

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for thread in attackers:
        thread.start()
    victim = sdk(gateway, other.key.plaintext)
    waits = []
    try:
        while any(thread.is_alive() for thread in attackers) or not waits:
            started = time.monotonic()
            victim.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            waits.append(time.monotonic() - started)
    finally:
        for thread in attackers:
            thread.join(timeout=120)
    print(f"second tenant: {len(waits)} requests during the attack, slowest {max(waits) * 1000:.0f} ms")
    assert max(waits) < 1.0, f"the second tenant waited {max(waits):.2f} s while the evil pattern ran"
    assert not any(thread.is_alive() for thread in attackers), "the evil requests themselves finished"
    assert errors == [] and len(answered) == 12, "every evil request was answered"
