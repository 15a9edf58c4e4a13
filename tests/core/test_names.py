"""Redis names: the keys one script or transaction touches share a Redis Cluster hash slot.

Slots are computed with redis-py's ``key_slot`` (CRC16 of the hash tag, as the cluster does),
itself checked against the values Redis documents, so a wrong tag fails here and not first on a
production cluster.
"""

from __future__ import annotations

import inspect

import pytest
from redis.crc import key_slot

from apps.core import names

PREFIX = "cc:"


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_key_slot_is_the_clusters_crc16() -> None:
    # Redis Cluster's specification: "123456789" has CRC16 0x31C3; a tag hashes only what is between the braces.
    assert slot("123456789") == 0x31C3 % 16384
    assert slot("{user1000}.following") == slot("{user1000}.followers") == slot("user1000")
    assert slot("foo{{bar}}zap") == slot("{bar")  # the first "{" to the first "}" after it
    assert slot("foo{}{bar}") != slot("bar")  # an empty first tag: the whole key is hashed


def test_every_name_that_takes_an_organisation_carries_its_tag() -> None:
    takes_org = [
        function
        for _name, function in inspect.getmembers(names, inspect.isroutine)  # compiled, a function is a builtin
        if "organization_id" in inspect.signature(function).parameters and function is not names.org_tag
    ]
    assert {f.__name__ for f in takes_org} >= {"budget_counter", "rate_window", "rate_inflight"}
    for function in takes_org:
        parameters = inspect.signature(function).parameters
        args = {"prefix": PREFIX, "budget_id": 5, "period_start": 1_700_000_000.0, "scope_name": "project:3"}
        key = function(**{k: v for k, v in args.items() if k in parameters}, organization_id=42)
        assert key.startswith(PREFIX + "{org:42}:"), key
        assert slot(key) == slot("org:42")


def _one_admission(organization_id: int) -> list[str]:
    """Every key the admission script is given for a request under budgets at three levels and a
    project and a key rate limit (``Limiter.admit``'s KEYS)."""
    keys = []
    for budget_id in (1, 2, 3):
        counter = names.budget_counter(PREFIX, budget_id, 1_700_000_000, organization_id=organization_id)
        keys += [counter, names.leased(counter)]
    for scope in ("project:3", "key:17"):
        keys += [
            names.rate_window(PREFIX, scope, organization_id=organization_id),
            names.rate_inflight(PREFIX, scope, organization_id=organization_id),
        ]
    return keys


def test_one_admissions_keys_hash_to_one_slot_and_two_organisations_keys_do_not_meet() -> None:
    first, second = _one_admission(1), _one_admission(2)
    assert len({slot(key) for key in first}) == 1
    assert len({slot(key) for key in second}) == 1
    # A tenant's keys are named by its own organisation: no name of one is a name of the other.
    assert not set(first) & set(second)
    assert slot(first[0]) != slot(second[0])


def test_the_breakers_script_and_transaction_keys_share_a_slot() -> None:
    deployment = "7:gpt-4o-mini"
    keys = [
        names.breaker_open(PREFIX),
        names.breaker_failures(PREFIX, deployment),
        names.breaker_probe(PREFIX, deployment),
        names.breaker_failures(PREFIX, "8:other"),
    ]
    assert len({slot(key) for key in keys}) == 1


@pytest.mark.parametrize("stream", [names.ledger_stream(PREFIX), names.cache_stream(PREFIX), "cctest:ab12:shadow"])
def test_a_dead_letter_stream_lives_in_its_streams_slot_and_under_the_prefix(stream: str) -> None:
    dead = names.dead_letters(stream)
    assert slot(dead) == slot(stream)
    assert dead.startswith(stream + ":dead") and dead != stream
