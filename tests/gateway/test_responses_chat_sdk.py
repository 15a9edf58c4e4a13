"""The Responses API on a provider that speaks only Chat Completions: the official openai SDK, unmodified,
against a live gateway whose simulated provider is marked Chat-only.

What the provider received is checked by asking it directly in Chat's shape: its answers depend only on
the model and the messages, so the same text means the same conversation reached it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest
import redis
from django.conf import settings

from apps.core import names
from apps.core.catalog import CATALOG
from apps.core.events import EVENT_FIELD
from apps.gateway.conversations import HELD_STATE_MAX_BYTES
from apps.ledger.held_responses import held_responses_ingest_batch, held_responses_stream
from apps.ledger.models import HeldResponse, LedgerEntry
from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import WEATHER, chat_only, ledger_row, sdk, simulator_direct, wait_key_live, wait_policy
from tests.live import wait_until
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.live

CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    return chat_only(gateway, tenant)


@pytest.fixture
def provider_direct(upstream: str) -> openai.OpenAI:
    """The simulated provider itself, asked in Chat's shape."""
    return simulator_direct(upstream)


def _chat_answer(direct: openai.OpenAI, messages: list[dict[str, Any]], **extra: Any) -> str:
    answer = direct.chat.completions.create(model="gpt-4o-mini", messages=messages, **extra)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def _expected(row: LedgerEntry, model: str) -> Decimal:
    rates = CATALOG[model].tiers["standard"]
    usd = (row.prompt_tokens - row.cached_tokens) * rates.input + row.cached_tokens * rates.cached_input
    usd += row.completion_tokens * rates.output
    return (usd / Decimal(1_000_000)).quantize(Decimal("1e-8"))


def _billed(request_id: str, *, streamed: bool = False) -> LedgerEntry:
    row = ledger_row(request_id)
    assert (row.endpoint, row.status_code, row.streamed, row.usage_estimated) == ("responses", 200, streamed, False)
    assert row.cost == _expected(row, "gpt-4o-mini") > 0
    return row


def test_create_is_translated_to_chat_and_billed(client: openai.OpenAI, provider_direct: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="What is the capital of France?", instructions="Be brief.", max_output_tokens=200
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.id.startswith("resp_")
    assert response.instructions == "Be brief." and response.max_output_tokens == 200
    direct = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]  # fmt: skip
    assert response.output_text == _chat_answer(provider_direct, direct)
    row = _billed(raw.headers["x-request-id"])
    assert response.usage is not None
    assert (row.prompt_tokens, row.completion_tokens) == (response.usage.input_tokens, response.usage.output_tokens)


def test_stream_is_typed_events_in_order_that_the_sdk_helper_parses(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="gpt-4o-mini", input="Tell me about budgets", store=False).output_text
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Tell me about budgets", stream=True)
    events = list(raw.parse())
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole
    row = _billed(raw.headers["x-request-id"], streamed=True)
    usage = events[-1].response.usage
    assert (row.prompt_tokens, row.completion_tokens) == (usage.input_tokens, usage.output_tokens)
    with client.responses.stream(model="gpt-4o-mini", input="Tell me about budgets") as stream:
        final = stream.get_final_response()
    assert final.output_text == whole and final.usage is not None and final.usage.output_tokens > 0


def test_tools_round_trip_across_two_turns_carries_the_first_turn(
    client: openai.OpenAI, provider_direct: openai.OpenAI
) -> None:
    first = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Weather in Paris?", tools=[WEATHER])
    call = first.parse().output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"Paris"}'
    with client.responses.stream(model="gpt-4o-mini", input="Weather in Paris?", tools=[WEATHER]) as stream:
        streamed = stream.get_final_response().output[0]
    assert streamed.type == "function_call" and streamed.arguments == call.arguments
    # The second turn sends only the tool's output; the simulator refuses a tool message whose call it
    # was not sent, so a 200 already means the first turn went along.
    second = client.responses.with_raw_response.create(
        model="gpt-4o-mini", previous_response_id=first.parse().id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
    )  # fmt: skip
    answer = second.parse()
    assert answer.previous_response_id == first.parse().id
    tool_call = {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    direct = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"sky": "clear"}'},
    ]  # fmt: skip
    assert answer.output_text == _chat_answer(provider_direct, direct, tools=[CHAT_WEATHER])
    assert answer.usage.input_tokens > first.parse().usage.input_tokens
    for raw in (first, second):
        _billed(raw.headers["x-request-id"])


def test_previous_response_id_over_three_turns(client: openai.OpenAI, provider_direct: openai.OpenAI) -> None:
    one = client.responses.create(model="gpt-4o-mini", input="My name is Ada.", instructions="Be kind.")
    two = client.responses.create(model="gpt-4o-mini", input="What is my name?", previous_response_id=one.id,
                                  instructions="Be kind.")  # fmt: skip
    three = client.responses.create(model="gpt-4o-mini", input="Thanks!", previous_response_id=two.id)
    user = [{"role": "user", "content": [{"type": "text", "text": text}]} for text in
            ("My name is Ada.", "What is my name?", "Thanks!")]  # fmt: skip
    kind = {"role": "system", "content": "Be kind."}
    first_turn = [user[0], {"role": "assistant", "content": one.output_text}]
    assert two.output_text == _chat_answer(provider_direct, [kind, *first_turn, user[1]])
    # Instructions are per request (as on OpenAI): the third turn was sent none.
    second_turn = [user[1], {"role": "assistant", "content": two.output_text}]
    assert three.output_text == _chat_answer(provider_direct, [*first_turn, *second_turn, user[2]])


def _held(response_id: str) -> HeldResponse | None:
    """The response's Postgres copy once the held-responses consumer ran (None: there is none)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    while held_responses_ingest_batch(client=client, consumer="tests"):
        pass
    return HeldResponse.objects.filter(response_id=response_id).first()


def test_retrieve_input_items_and_delete_are_answered_by_the_gateway(client: openai.OpenAI, tenant: Tenant) -> None:
    created = client.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": "Remember me"}, {"role": "user", "content": "Twice"}]
    )
    held = _held(created.id)
    assert held is not None and (held.project_id, held.provider_id, held.model) == (
        tenant.project.id, tenant.provider.id, "gpt-4o-mini")  # fmt: skip
    assert [item["content"][0]["text"] for item in held.input_items] == ["Remember me", "Twice"]
    assert held.output_items == held.response["output"] and held.usage["output_tokens"] == created.usage.output_tokens
    fetched = client.responses.retrieve(created.id)
    assert (fetched.id, fetched.output_text, fetched.usage) == (created.id, created.output_text, created.usage)
    items = client.responses.input_items.list(created.id)
    assert [item.content[0].text for item in items.data] == ["Twice", "Remember me"]  # newest first
    oldest = client.responses.input_items.list(created.id, order="asc", limit=1)
    assert [item.content[0].text for item in oldest.data] == ["Remember me"] and oldest.has_more
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(created.id)
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert wait_until(lambda: _held(created.id) is None, timeout=5)
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="gpt-4o-mini", input="Go on", previous_response_id=created.id)
    assert exc.value.param == "previous_response_id"


def test_a_stored_response_holding_nul_is_kept_in_postgres(client: openai.OpenAI, tenant: Tenant) -> None:
    """jsonb cannot hold \\u0000: such a response was dead-lettered, its Postgres copy lost. It is kept with
    U+FFFD in the NUL's place, and the literal text "\\u0000" stays as it was."""
    created = client.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": "nul \x00 here, text \\u0000 there"}]
    )
    held = _held(created.id)
    assert held is not None and held.project_id == tenant.project.id
    assert held.input_items[0]["content"][0]["text"] == "nul \ufffd here, text \\u0000 there"
    assert client.responses.retrieve(created.id).id == created.id


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt-4o-mini", input="Forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert _held(created.id) is None


def test_held_responses_consumer_dead_letters_garbage_and_stores_the_rest(client: openai.OpenAI) -> None:
    stream = held_responses_stream()
    created = client.responses.create(model="gpt-4o-mini", input="Keep me")
    raw = redis.Redis.from_url(settings.REDIS_URL)
    dead_before = raw.xlen(names.dead_letters(stream))
    garbage = [b"not json", b"[]", b'{"type": "store", "response_id": "../x", "project_id": 1}',
               b'{"type": "delete", "response_id": "resp_1", "project_id": -1}', b'{"type": "drop"}']  # fmt: skip
    for payload in garbage:
        raw.xadd(stream, {EVENT_FIELD: payload})
    assert _held(created.id) is not None
    assert raw.xlen(names.dead_letters(stream)) == dead_before + len(garbage)


def test_another_projects_response_is_not_found(gateway: str, client: openai.OpenAI, upstream: str) -> None:
    created = client.responses.create(model="gpt-4o-mini", input="Private to my project")
    other = tenant_make(upstream_url=upstream, name="chat-only-other")
    outsider = chat_only(gateway, other)
    for attempt in (
        lambda: outsider.responses.retrieve(created.id),
        lambda: outsider.responses.input_items.list(created.id),
        lambda: outsider.responses.delete(created.id),
        lambda: outsider.responses.create(model="gpt-4o-mini", input="Go on", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert client.responses.retrieve(created.id).id == created.id  # still there for its owner


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "background": True}, "background"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}, "input"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": "x", "tool_choice": {"type": "mcp"}}, "tool_choice"),
    ],
)
def test_what_chat_cannot_carry_is_a_400_in_openai_shape(client: openai.OpenAI, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/responses", body={"model": "gpt-4o-mini", **body}, cast_to=object)
    assert exc.value.param == param
    assert client.responses.create(model="gpt-4o-mini", input="Still fine").status == "completed"


def test_garbage_input_items_queries_are_400s(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt-4o-mini", input="Page me")
    for query in ({"limit": "0"}, {"limit": "9" * 5000}, {"order": "sideways"}, {"after": "msg_nothing"}):
        with pytest.raises(openai.BadRequestError):
            client.get(f"/responses/{created.id}/input_items", options={"params": query}, cast_to=object)


def test_fallback_from_a_responses_provider_to_a_chat_only_one(gateway: str, tenant: Tenant, upstream: str) -> None:
    backup = provider_create(
        organization=tenant.org, name="chat backup", kind=ProviderKind.OPENAI_COMPATIBLE, base_url=upstream,
        secret="sk-simulated", seed_catalog=True, responses_api=False,
    )  # fmt: skip
    rule_make(tenant, name="chat backup", primaries="gpt-4o", fallbacks="gpt-4o-mini @ chat backup")
    wait_key_live(gateway, tenant.key.plaintext)
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Hello [[sim:gpt-4o/503]]")
    response = raw.parse()
    assert response.model == "gpt-4o-mini" and "failed:gpt-4o" in raw.headers["x-route"]
    row = _billed(raw.headers["x-request-id"])
    assert (row.provider_id, row.served_model) == (backup.id, "gpt-4o-mini")
    # The conversation is ours now: it goes on with the Chat-only provider, and is retrieved from us.
    again = client.responses.with_raw_response.create(
        model="gpt-4o", input="And now? [[sim:gpt-4o/503]]", previous_response_id=response.id
    )
    assert again.parse().model == "gpt-4o-mini" and "failed" not in again.headers["x-route"]  # gpt-4o never tried
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_a_conversation_too_long_to_continue_is_a_400(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt-4o-mini", input="Start")
    raw = redis.Redis.from_url(settings.REDIS_URL)
    key = names.response_state(settings.REDIS_PREFIX, created.id)
    state = orjson.loads(raw.get(key))  # type: ignore[arg-type]
    state["context"] = [{"role": "user", "content": "x" * 1_000_000}] * (HELD_STATE_MAX_BYTES // 1_000_000 + 1)
    raw.set(key, orjson.dumps(state))
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt-4o-mini", input="Go on", previous_response_id=created.id)
    assert exc.value.code == "conversation_too_long"
    assert client.responses.retrieve(created.id).id == created.id  # still readable


def test_an_anthropic_provider_is_a_clear_400_unbilled(gateway: str, tenant: Tenant, upstream: str) -> None:
    provider_create(organization=tenant.org, name="claude", kind=ProviderKind.SIMULATED_ANTHROPIC, base_url=upstream)
    rule_make(tenant, name="to claude", primaries="claude-haiku-4-5 @ claude")
    wait_key_live(gateway, tenant.key.plaintext)
    wait_policy(gateway, tenant.key.plaintext)
    with pytest.raises(openai.BadRequestError) as exc:
        sdk(gateway, tenant.key.plaintext).responses.create(model="gpt-4o-mini", input="Hello")
    assert "serves chat requests only" in exc.value.message
    row = ledger_row(exc.value.response.headers["x-request-id"])
    assert (row.endpoint, row.status_code, row.cost) == ("responses", 400, 0)
