"""The routing decision as data, and the X-Route text it renders (the formats apps and tests rely on)."""

from __future__ import annotations

import importlib

import pytest

from apps.core.events import MODEL_MAX, decision_clean
from apps.core.route import (
    ALIAS,
    ATTEMPT,
    CACHE,
    CHEAP,
    DIRECT,
    ESCALATED,
    KEPT,
    RULE,
    STRONG_ONLY,
    Pruned,
    RouteDecision,
    Tried,
)

RULE_7 = RouteDecision(kind=RULE, rule_id=7, action="route")
CASES = [
    (RouteDecision(), ""),
    (RouteDecision(kind=DIRECT), "direct"),
    (RouteDecision(kind=ALIAS, alias="default-chat"), "alias:default-chat"),
    (RouteDecision(kind=CACHE, cache_hit="semantic"), "cache:semantic"),
    (RULE_7, "route:7:route"),
    (RouteDecision(kind=RULE, rule_id=7, action="split", model="gpt-4.1"), "route:7:split:gpt-4.1"),
    (RouteDecision(kind=RULE, rule_id=7, action="cascade", cascade=STRONG_ONLY), "route:7:cascade:strong-only"),
    (
        RouteDecision(kind=RULE, rule_id=7, action="cascade", cascade=ESCALATED, reason="confidence=0.412<0.7"),
        "route:7:cascade:escalated(confidence=0.412<0.7)",
    ),
    (
        RouteDecision(kind=RULE, rule_id=7, action="cascade", cascade=KEPT, reason="confidence=0.912"),
        "route:7:cascade:kept(confidence=0.912)",
    ),
    (
        RouteDecision(kind=RULE, rule_id=7, action="cascade", part=CHEAP, cascade=ESCALATED, reason="new-label"),
        "route:7:cascade:cheap:escalated(new-label)",
    ),
    (RouteDecision(kind=DIRECT, part=ATTEMPT), "direct:attempt"),
    (
        RouteDecision(kind=DIRECT, tried=(Tried("gpt-4o-mini", "openai", "503"),)),
        "direct;failed:gpt-4o-mini@openai(503)",
    ),
    (
        RULE_7.variant(tried=(Tried("a", "p", "timeout"), Tried("b", "q", "circuit-open")), retries=1, unpriced=True),
        "route:7:route;failed:a@p(timeout);failed:b@q(circuit-open);retries=1;unpriced",
    ),
    (
        RouteDecision(kind=DIRECT, limits_unchecked=True, would_block=(3, 5)),
        "direct;limits-unchecked;would-block:budget:3,budget:5",
    ),
]


@pytest.mark.parametrize(("decision", "text"), CASES)
def test_text_renders_each_part_in_its_place(decision: RouteDecision, text: str) -> None:
    assert decision.text() == text


@pytest.mark.parametrize(("decision", "text"), CASES)
def test_json_holds_what_is_set_and_reads_back(decision: RouteDecision, text: str) -> None:
    data = decision.as_json()
    if not decision.kind:
        assert data is None
        return
    assert data is not None and all(data.values()), "only what is set is stored"
    assert RouteDecision.from_json(data) == decision


def test_the_common_case_is_one_key() -> None:
    assert RouteDecision(kind=DIRECT).as_json() == {"kind": "direct"}


def test_a_variant_leaves_the_original_alone() -> None:
    original = RULE_7.variant(tried=(Tried("a", "p", "503"),))
    cheap = original.variant(part=CHEAP)
    assert (cheap.part, original.part) == (CHEAP, "") and cheap.tried == original.tried


@pytest.mark.parametrize(("decision", "text"), CASES)
def test_rows_written_before_the_decision_column_get_the_same_decision(decision: RouteDecision, text: str) -> None:
    """The ledger migration reads each pre-existing route text into the JSON the gateway now writes."""
    migration = importlib.import_module("apps.ledger.migrations.0007_ledgerentry_decision")
    assert migration.decision_from_text(text) == decision.as_json()


def test_rows_the_gateway_did_not_route_get_no_decision() -> None:
    migration = importlib.import_module("apps.ledger.migrations.0007_ledgerentry_decision")
    for text in ("batch:batch_abc:sync", "imported from usage.csv; 40 requests", "canary:gpt-4o-mini 10%"):
        assert migration.decision_from_text(text) is None


# Written after the decision column existed: never parsed back from text, so not among CASES.
PRUNED = [
    (
        RouteDecision(kind=DIRECT, pruned=(Pruned("max_tokens", 4000, 300),)),
        "direct;pruned:max_tokens(4000->300)",
    ),
    (
        RULE_7.variant(unpriced=True, pruned=(Pruned("max_tokens", 0, 64), Pruned("history", 12, 5))),
        "route:7:route;unpriced;pruned:max_tokens(0->64);pruned:history(12->5)",
    ),
]


@pytest.mark.parametrize(("decision", "text"), PRUNED)
def test_what_pruning_trimmed_is_said_and_stored(decision: RouteDecision, text: str) -> None:
    assert decision.text() == text
    data = decision.as_json()
    assert data is not None and data["pruned"][0] == {
        "what": decision.pruned[0].what,
        "before": decision.pruned[0].before,
        "after": decision.pruned[0].after,
    }
    assert RouteDecision.from_json(data) == decision
    # What the ingest keeps of it, hostile values fitted.
    assert decision_clean(data) == data
    hostile = {"kind": "direct", "pruned": [{"what": "x" * 999, "before": -5, "after": "many"}, "junk"]}
    assert decision_clean(hostile) == {"kind": "direct", "pruned": [{"what": "x" * MODEL_MAX, "before": 0, "after": 0}]}
