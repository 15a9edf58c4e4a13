"""What the gateway records for replay, through a live gateway and the official SDK: keys and counts,
never the prompt."""

from __future__ import annotations

import openai
import pytest

from apps.cache.keys import exact_key, static_prefix
from apps.ledger.models import LedgerEntry
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live

pytestmark = pytest.mark.live

SYSTEM = {"role": "system", "content": "You are the billing assistant of Acme. " * 40}


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def _ask(client: openai.OpenAI, question: str, **kwargs: object) -> LedgerEntry:
    messages = [SYSTEM, {"role": "user", "content": question}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, **kwargs)  # type: ignore[call-overload]
    return ledger_row(raw.headers["x-request-id"])


def test_repeats_share_a_cache_key_and_a_system_prompt_shares_a_prefix(client: openai.OpenAI) -> None:
    first = _ask(client, "What's the price of the yearly plan?", max_tokens=300, extra_headers={"X-End-User": "a"})
    again = _ask(client, "What's the price of the yearly plan?", max_tokens=300, extra_headers={"X-End-User": "b"})
    other = _ask(client, "What's the price of the monthly plan?")

    payload = {"model": "gpt-4o-mini", "max_tokens": 300,
               "messages": [SYSTEM, {"role": "user", "content": "What's the price of the yearly plan?"}]}  # fmt: skip
    # The same key the exact cache would use, whoever asked (the end user is its own column).
    assert first.cache_key == again.cache_key == exact_key(payload)
    assert (first.end_user, again.end_user) == ("a", "b")
    assert other.cache_key not in ("", first.cache_key)
    digest, tokens = static_prefix(payload)
    assert first.prefix_key == other.prefix_key == digest and first.prefix_tokens == tokens > 300
    assert (first.max_tokens, first.turns, other.max_tokens, other.turns) == (300, 2, None, 2)
    assert first.embedding_key == "", "no semantic cache, no embedding"
    # Digests and counts: nothing of the prompt's text is in the row.
    assert "Acme" not in " ".join(str(v) for v in LedgerEntry.objects.filter(pk=first.pk).values().get().values())


def test_other_endpoints_and_refused_requests_carry_no_replay_keys(gateway: str, client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello")
    assert ledger_row(raw.headers["x-request-id"]).cache_key == ""
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user"}])  # type: ignore[list-item,typeddict-item]
    row = ledger_row(refused.value.response.headers["x-request-id"])
    assert (row.status_code, row.cache_key, row.turns) == (400, "", 0)
