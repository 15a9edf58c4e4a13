"""Helpers for tests that drive a live gateway."""

from __future__ import annotations

import openai
import redis
from django.conf import settings

from apps.core import names
from apps.ledger.models import LedgerEntry
from apps.ledger.services import ledger_ingest_batch
from apps.providers.services import provider_update
from tests.factories import Tenant
from tests.live import wait_until

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}  # a Responses function tool


def sdk(base_url: str, key: str, **kwargs: object) -> openai.OpenAI:
    """The official SDK, unmodified, pointed at the gateway."""
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=15, **kwargs)  # type: ignore[arg-type]


def wait_key_live(base_url: str, key: str) -> None:
    """Wait until the gateway's policy snapshot knows ``key`` (it refreshes on commit)."""

    def known() -> bool:
        try:
            sdk(base_url, key).models.list()
            return True
        except openai.AuthenticationError:
            return False

    wait_until(known, timeout=5)


def wait_policy(base_url: str, key: str) -> None:
    """Wait until the gateway serves the policy as committed now (budgets, limits, aliases…)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    wanted = int(client.get(names.policy_version(settings.REDIS_PREFIX)) or 0)

    def caught_up() -> bool:
        try:
            raw = sdk(base_url, key).models.with_raw_response.list()
        except openai.AuthenticationError:
            return False
        return int(raw.headers["x-costcontrol-policy-version"]) >= wanted

    wait_until(caught_up, timeout=5)


def ingest_all() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    while ledger_ingest_batch(client=client, consumer="tests", block_ms=0):
        pass


def ledger_row(request_id: str) -> LedgerEntry:
    def fetch() -> LedgerEntry | None:
        ingest_all()
        return LedgerEntry.objects.filter(request_id=request_id).first()

    return wait_until(fetch, timeout=5)


def chat_only(gateway: str, tenant: Tenant) -> openai.OpenAI:
    """The SDK on ``tenant``'s key once its simulated provider is marked as speaking only Chat Completions
    (the gateway then translates ``/v1/responses`` and holds the conversations)."""
    provider = tenant.provider
    provider_update(provider=provider, name=provider.name, base_url=provider.base_url, secret=None, is_active=True,
                    responses_api=False)  # fmt: skip
    wait_key_live(gateway, tenant.key.plaintext)
    wait_policy(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def simulator_direct(upstream: str) -> openai.OpenAI:
    """The simulated provider itself, without the gateway."""
    return openai.OpenAI(base_url=upstream, api_key="sk-simulated", max_retries=0, timeout=15)
