"""Every Redis key, stream and channel name, as a function of the install's prefix.

The gateway writes what the control plane reads (streams, cache entries, the
policy version) and both sides count on the same budget and rate-limit keys,
so each name is spelled once, here. ``prefix`` is ``settings.REDIS_PREFIX``
(``cc:`` by default; tests use one per run).

Redis Cluster runs a script or a transaction only when all its keys live in one
hash slot, and a key's slot is taken from its hash tag, the text between the
first ``{`` and the next ``}``. So every key that one script touches carries the
same tag: budgets, leases, rate windows and in-flight sets carry their
organisation's (``{org:<id>}``; one request's scopes all belong to one
organisation), the breakers share ``{breaker}``, and a dead-letter stream is
tagged with its stream's name. Keys read or written alone (streams, cache
entries, stored responses, the policy version) carry no tag, so they spread over
the cluster. The prefix must not contain braces.
"""

from __future__ import annotations

# --- streams (the gateway appends, consumers in the control plane read) ---------------------


def ledger_stream(prefix: str) -> str:
    return prefix + "ledger"


def shadow_stream(prefix: str) -> str:
    """Shadow comparisons: the ledger's event format, stored apart from ledger rows."""
    return prefix + "shadow"


def trial_stream(prefix: str) -> str:
    """Semantic-cache trials' comparisons (apps/opportunities), stored apart from ledger rows."""
    return prefix + "trials"


def cache_stream(prefix: str) -> str:
    """Cache stores and hits, indexed in Postgres by the cache consumer."""
    return prefix + "cache:events"


def held_responses_stream(prefix: str) -> str:
    """Responses the gateway holds itself (Chat-only providers): stored and deleted, copied to Postgres."""
    return prefix + "responses:held"


def dead_letters(stream: str) -> str:
    """Where a stream's entries that could not be stored are kept for a person to inspect.

    Tagged with the stream's whole name, which puts it in the stream's slot: the consumer moves an
    entry there and acknowledges it in one transaction.
    """
    return f"{stream}:dead{{{stream}}}"


# --- the policy snapshot ----------------------------------------------------------------------


def policy_channel(prefix: str) -> str:
    """Pub/sub channel on which the control plane announces a policy change."""
    return prefix + "policy:changed"


def policy_version(prefix: str) -> str:
    """Counter bumped with every announcement, polled by gateways as a safety net."""
    return prefix + "policy:version"


# --- budgets and rate limits (one organisation's share a slot) ----------------------------------


def org_tag(organization_id: int) -> str:
    """The hash tag of an organisation's admission keys."""
    return f"{{org:{organization_id}}}"


def budget_counter(prefix: str, budget_id: int, period_start: float, *, organization_id: int) -> str:
    """Nano-dollars spent and reserved on a budget in the period starting at ``period_start`` (epoch s)."""
    return f"{prefix}{org_tag(organization_id)}:budget:{budget_id}:{int(period_start)}"


def leased(counter: str) -> str:
    """The part of a budget counter that gateway processes hold as leases."""
    return counter + ":leased"


def rate_window(prefix: str, scope_name: str, *, organization_id: int) -> str:
    """The sliding 60 s window (requests and tokens per second) of a rate-limit scope ("project:3")."""
    return f"{prefix}{org_tag(organization_id)}:rl:{scope_name}:win"


def rate_inflight(prefix: str, scope_name: str, *, organization_id: int) -> str:
    """The concurrency slots in use in a rate-limit scope."""
    return f"{prefix}{org_tag(organization_id)}:rl:{scope_name}:inflight"


# --- the response cache -------------------------------------------------------------------------


def cache_entry(prefix: str, *, project_id: int, namespace: str, exact_key: str) -> str:
    """Where an exact-cache answer lives (the gateway reads and writes it, purges delete it)."""
    return f"{prefix}cache:{project_id}:{namespace}:{exact_key}"


# --- routing (the breakers' script touches the shared hash and one deployment's keys) ------------


def breaker_open(prefix: str) -> str:
    """Hash of open circuit breakers: deployment -> open until (epoch s)."""
    return prefix + "{breaker}:open"


def breaker_channel(prefix: str) -> str:
    return prefix + "breaker:changed"


def breaker_failures(prefix: str, deployment: str) -> str:
    return prefix + "{breaker}:fails:" + deployment


def breaker_probe(prefix: str, deployment: str) -> str:
    """Claimed by the one request that probes a half-open breaker."""
    return prefix + "{breaker}:probe:" + deployment


def cascade_labels(prefix: str, rule_id: int) -> str:
    """Answers a cascade rule's strong model has given (known labels)."""
    return f"{prefix}route:{rule_id}:labels"


# --- the Responses API ----------------------------------------------------------------------------


def response_owner(prefix: str, response_id: str) -> str:
    """Which project, provider and model a stored response belongs to, and the tokens its conversation
    has used so far (the gateway writes it when it relays the response; retrieve, delete, cancel and
    ``previous_response_id`` read it)."""
    return f"{prefix}resp:{response_id}"


def held_restored(prefix: str) -> str:
    """Set once the held conversations Postgres keeps were written back to this Redis (never expires): when
    it is missing, Redis may have lost them (a restart without persistence, a flush), and a restore runs."""
    return prefix + "respstate:restored"


def response_state(prefix: str, response_id: str) -> str:
    """A response the gateway answered itself from a Chat-only provider: the Response object and the input
    items (the conversation before it, and its own), for retrieve, ``input_items`` and the next turn."""
    return f"{prefix}respstate:{response_id}"
