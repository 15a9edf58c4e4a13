"""Chat-history windows, recommended and trialled: the report estimates what keeping only the last turns
saves; ``apply`` starts a shadow trial that asks the same model without the earlier turns (through a live
gateway and the official SDK); ``enable`` sets the feature's pruning policy once the answers agree.
Garbage bodies and another tenant are refused."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import redis as redis_lib
from django.conf import settings
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.opportunities.models import Lever, Trial, TrialState
from apps.opportunities.selectors import HISTORY_WINDOW_TURNS, project_opportunities
from apps.opportunities.trial_selectors import trial_measured
from apps.routing.models import PrunePolicy, ShadowComparison
from apps.routing.services import shadow_ingest_batch
from tests.factories import People, Tenant, entry_make, tenant_make
from tests.gateway.helpers import ingest_all, sdk, wait_key_live, wait_policy
from tests.live import wait_until
from tests.opportunities.test_trials import _api, _post

MODEL = "gpt-4o-mini"
SYSTEM = {"role": "system", "content": "You answer questions about Acme's invoices."}


def _long_chats(tenant: Tenant, *, turns: int, n: int) -> None:
    """``n`` answered chat requests of the support feature, each ``turns`` messages long (the system
    prompt's 500 tokens static), 10,500 prompt tokens each."""
    for i in range(n):
        entry_make(tenant, created_at=timezone.now() - dt.timedelta(minutes=i + 1), feature="support",
                   served_model=MODEL, requested_model=MODEL, cache_key=f"{i:064x}", prompt_tokens=10_500,
                   prefix_tokens=500, completion_tokens=50, turns=turns, cost=Decimal("0.002"))  # fmt: skip


def _recommendation(tenant: Tenant) -> dict[str, Any]:
    body = _api(tenant.owner).get(f"/api/projects/{tenant.project.slug}/opportunities/?days=1").json()
    [found] = [o for o in body["opportunities"] if o["lever"] == "history_window"]
    return dict(found)


@pytest.mark.django_db
def test_the_report_estimates_what_a_window_saves_on_the_longer_conversations() -> None:
    tenant = tenant_make()
    _long_chats(tenant, turns=21, n=4)
    _long_chats(tenant, turns=HISTORY_WINDOW_TURNS + 1, n=3)  # system + 7: nothing to trim
    found = _recommendation(tenant)
    # Of 20 messages after the system prompt, the window keeps 7: 13/20 of the 10,000 conversation tokens.
    saved = 4 * 10_000 * 13 // 20
    assert found["evidence"] == {
        "model": MODEL, "turns": HISTORY_WINDOW_TURNS, "requests": 7, "requests_trimmed": 4,
        "prompt_tokens": 7 * 10_500, "prompt_tokens_saved_estimate": saved,
        "quality": "unmeasured: a shadow trial asks the same model without the earlier turns",
    }  # fmt: skip
    assert Decimal(found["predicted_savings_usd"]) == (Decimal(saved) * Decimal("0.15") / 1_000_000).quantize(
        Decimal("0.000001")
    )
    assert found["feature"] == "support"
    # Short conversations only: no recommendation.
    other = tenant_make()
    entry_make(other, feature="support", served_model=MODEL, turns=3, prompt_tokens=900, prefix_tokens=500)
    assert [o for o in project_opportunities(project=other.project, days=1).opportunities
            if o.lever == "history_window"] == []  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [{"mode": "sideways"}, {"quality_target": "lots"}, {"min_samples": -1}, {"daily_cap_usd": "NaN"}, [], "x"],
)
def test_garbage_apply_bodies_start_no_trial(body: Any) -> None:
    tenant = tenant_make()
    _long_chats(tenant, turns=21, n=2)
    found = _recommendation(tenant)
    response = _post(_api(tenant.owner), f"/api/projects/{tenant.project.slug}/opportunities/{found['id']}/apply", body)
    assert response.status_code == 400
    assert not Trial.objects.exists()


@pytest.mark.django_db
def test_another_tenant_and_lesser_roles_cannot_apply_it(people: People) -> None:
    tenant = people.tenant
    _long_chats(tenant, turns=21, n=2)
    found = _recommendation(tenant)
    url = f"/api/projects/{tenant.project.slug}/opportunities/{found['id']}/apply"
    assert _post(_api(people.outsider), url, {"mode": "shadow"}).status_code == 404
    assert _api(people.outsider).get(f"/api/projects/{tenant.project.slug}/opportunities/").status_code == 404
    for user in (people.member, people.finance):  # a developer and finance read the report, never apply it
        assert _api(user).get(f"/api/projects/{tenant.project.slug}/opportunities/").status_code == 200
        assert _post(_api(user), url, {"mode": "shadow"}).status_code == 403
    assert not Trial.objects.exists()
    assert _post(_api(people.owner), url, {"mode": "shadow"}).status_code == 201
    for user in (people.member, people.finance):  # nor enable the owner's trial
        assert _post(_api(user), url, {"mode": "enable"}).status_code == 403
    assert Trial.objects.get().state == TrialState.SHADOW
    assert not PrunePolicy.objects.filter(project=tenant.project).exists()


def _conversation(turns: int, *, first: str = "", last: str = "") -> list[dict[str, Any]]:
    """The system prompt and ``turns`` alternating messages; ``first`` and ``last`` go into the first and
    the last user message (directives telling the simulator what to answer)."""
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        if i % 2:
            messages.append({"role": "assistant", "content": f"Invoice {i} was paid on the {i}th."})
        else:
            extra = (first if i == 0 else "") + (last if i == turns - 1 else "")
            messages.append({"role": "user", "content": f"When was invoice {i} paid?{extra}"})
    return messages


@pytest.mark.live
def test_a_window_trial_asks_the_same_model_without_the_early_turns_then_enables_the_policy(
    gateway: str, tenant: Tenant
) -> None:
    _long_chats(tenant, turns=21, n=2)
    found = _recommendation(tenant)
    owner = _api(tenant.owner)
    slug = tenant.project.slug
    response = _post(owner, f"/api/projects/{slug}/opportunities/{found['id']}/apply",
                     {"mode": "shadow", "min_samples": 5, "quality_target": "0.8"})  # fmt: skip
    assert response.status_code in (200, 201), response.content
    trial = Trial.objects.get(project=tenant.project)
    assert (trial.lever, trial.state, trial.parameters["turns"]) == (Lever.HISTORY_WINDOW, TrialState.SHADOW, 7)
    assert trial.rule is not None and trial.rule.shadow_history_turns == 7
    wait_key_live(gateway, tenant.key.plaintext)
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)

    def ask(messages: list[dict[str, Any]]) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            extra_headers={"X-Feature": "support"},  # type: ignore[arg-type]
        )
        return raw.parse().choices[0].message.content or "", raw.headers["x-request-id"]

    # The answer the app gets is the whole conversation's; the shadow never sees the first turns.
    stale, stale_id = ask(_conversation(15, first=" [[sim:answer=paid in March]]"))
    assert stale == "paid in March"
    kept_ids = [ask(_conversation(15, last=" [[sim:answer=paid on the 14th]]"))[1] for _ in range(5)]
    short_answer, short_id = ask(_conversation(5, first=" [[sim:answer=paid in May]]"))
    assert short_answer == "paid in May"

    shadows = redis_lib.Redis.from_url(settings.REDIS_URL)

    def compared() -> dict[str, ShadowComparison] | None:
        shadow_ingest_batch(client=shadows, consumer="tests")
        rows = {c.request_id: c for c in ShadowComparison.objects.filter(rule=trial.rule)}
        return rows if len(rows) >= 6 else None

    rows = wait_until(compared, timeout=15)
    assert short_id not in rows, "a conversation the window would not shorten is not shadowed"
    assert not rows[stale_id].normalized_match, "without its first turn, the simulator answers otherwise"
    assert all(rows[i].normalized_match for i in kept_ids)
    # Same model both ways; where the answers match, the windowed copy costs less (a shorter prompt).
    assert all(c.shadow_model == c.primary_model == MODEL for c in rows.values())
    assert all(rows[i].shadow_cost < rows[i].primary_cost for i in kept_ids)
    measured = trial_measured(trial=trial)
    assert (measured.samples, round(measured.agreement or 0, 3), measured.cleared) == (6, 0.833, True)

    response = _post(owner, f"/api/projects/{slug}/opportunities/{found['id']}/apply", {"mode": "enable"})
    assert response.status_code == 200, response.content
    trial.refresh_from_db()
    assert trial.state == TrialState.ENABLED and trial.rule is not None and not trial.rule.is_active
    policy = PrunePolicy.objects.get(project=tenant.project, feature="support")
    assert (policy.history_enabled, policy.history_turns) == (True, 7)
    assert AuditEvent.objects.filter(object_type="prune_policy", object_id=str(policy.pk)).exists(), (
        "the policy change is audited"
    )
    # From now on the feature's requests are trimmed for real, and the trial counts them.
    wait_policy(gateway, tenant.key.plaintext)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=_conversation(15),
        extra_headers={"X-Feature": "support"},  # type: ignore[arg-type]
    )
    assert ";pruned:history(16->8)" in raw.headers["x-route"]
    ingest_all()
    realised = trial_measured(trial=trial).realised
    assert realised is not None and realised["requests"] == 1 and Decimal(realised["realised_savings_usd"]) > 0


@pytest.mark.live
def test_another_projects_requests_are_not_shadowed_by_the_trial(gateway: str, tenant: Tenant, upstream: str) -> None:
    _long_chats(tenant, turns=21, n=2)
    found = _recommendation(tenant)
    _post(_api(tenant.owner), f"/api/projects/{tenant.project.slug}/opportunities/{found['id']}/apply",
          {"mode": "shadow"})  # fmt: skip
    trial = Trial.objects.get(project=tenant.project)
    other = tenant_make(upstream_url=upstream)
    wait_key_live(gateway, other.key.plaintext)
    wait_policy(gateway, other.key.plaintext)
    answer = sdk(gateway, other.key.plaintext).chat.completions.create(
        model=MODEL,
        messages=_conversation(15),
        extra_headers={"X-Feature": "support"},  # type: ignore[arg-type]
    )
    assert answer.choices[0].message.content
    shadow_ingest_batch(client=redis_lib.Redis.from_url(settings.REDIS_URL), consumer="tests")
    assert not ShadowComparison.objects.filter(rule=trial.rule).exists()
    assert not ShadowComparison.objects.filter(project=other.project).exists()
