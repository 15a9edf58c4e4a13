"""Break-even from the project's hourly model roll-ups, checked against figures worked out by hand."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.ledger.models import Dimension, SliceHourlyRollup
from apps.tenancy.models import Project
from tests.deployments.helpers import deployment_make
from tests.factories import People, login

pytestmark = pytest.mark.django_db


def _rollup(project: Project, hour: dt.datetime, model: str, *, prompt: int, completion: int, cost: str,
            dimension: str = Dimension.MODEL) -> None:  # fmt: skip
    SliceHourlyRollup.objects.create(
        hour=hour, organization_id=project.organization_id, project=project, dimension=dimension, value=model,
        requests=completion // 100, errors=0, cache_hits=0, prompt_tokens=prompt, cached_tokens=0,
        completion_tokens=completion, cost=Decimal(cost), counterfactual_cost=Decimal(cost),
    )  # fmt: skip


@pytest.fixture
def traffic(people: People) -> None:
    """Ten days of a project: gpt-4o (3M output, 9M prompt, $52.50) and gpt-4o-mini (1M, 4M, $0.90)."""
    project, hour = people.tenant.project, timezone.now().replace(minute=0, second=0, microsecond=0)
    _rollup(project, hour - dt.timedelta(days=2), "gpt-4o", prompt=6_000_000, completion=2_000_000, cost="35.00")
    _rollup(project, hour - dt.timedelta(days=9), "gpt-4o", prompt=3_000_000, completion=1_000_000, cost="17.50")
    _rollup(project, hour, "gpt-4o-mini", prompt=4_000_000, completion=1_000_000, cost="0.90")
    # None of these count: too old, another dimension, another project.
    _rollup(project, hour - dt.timedelta(days=11), "gpt-4o", prompt=10**9, completion=10**9, cost="9999")
    _rollup(project, hour, "support-bot", prompt=10**9, completion=10**9, cost="9999", dimension=Dimension.FEATURE)
    _rollup(people.other.project, hour, "gpt-4o", prompt=10**9, completion=10**9, cost="9999")


def _api(client: Client, people: People, **params: object) -> dict:  # type: ignore[type-arg]
    login(client, people.finance)
    response = client.get(reverse("deployments:api-break-even", kwargs={"slug": people.tenant.project.slug}), params)
    assert response.status_code == 200, response.content
    return response.json()


def _close(value: object, expected: Fraction) -> bool:
    return abs(Fraction(str(value)) - expected) <= Fraction(1, 10**5)


@pytest.mark.usefixtures("traffic")
def test_monthly_costs_replicas_and_crossover(client: Client, people: People) -> None:
    deployment = deployment_make(
        people.tenant.org, hourly_cost_usd=Decimal("2.00"), throughput_tokens_per_s=Decimal(100)
    )
    data = _api(client, people, days=10, deployment=deployment.pk, utilisation_percent=50)

    # By hand: a month is 30 days of API traffic (×3 here) and 730 GPU hours.
    capacity = 100 * 3600 * 730 * Fraction(1, 2)  # 131,400,000 output tokens per replica
    replica = Fraction(2) * 730  # $1,460
    assert data["assumptions"]["replica_monthly_output_tokens"] == capacity == 131_400_000
    assert Decimal(data["assumptions"]["replica_monthly_usd"]) == replica
    big, mini = data["models"]
    assert big["model"] == "gpt-4o" and mini["model"] == "gpt-4o-mini"  # biggest spend first
    assert (big["monthly_output_tokens"], big["monthly_tokens"]) == (9_000_000, 36_000_000)
    assert Decimal(big["api_monthly_usd"]) == Decimal("157.50") and big["replicas"] == 1
    assert Decimal(big["self_hosted_monthly_usd"]) == replica
    assert Decimal(big["monthly_saving_usd"]) == Decimal("157.50") - Decimal(1460)
    per_token = Fraction("52.50") / 3_000_000
    assert per_token * capacity >= replica  # one replica could carry the crossover volume
    assert _close(big["crossover_output_tokens"], replica / per_token) or big["crossover_output_tokens"] == int(
        replica / per_token
    )
    assert big["crossover_output_tokens"] == 83_428_571 and big["crossover_tokens"] == 333_714_285
    # gpt-4o-mini is so cheap that a full replica's tokens cost less on the API ($118.26) than the replica.
    assert Fraction("0.90") / 1_000_000 * capacity < replica and mini["crossover_output_tokens"] is None
    total = data["total"]
    assert Decimal(total["api_monthly_usd"]) == Decimal("160.20") and total["monthly_output_tokens"] == 12_000_000
    assert total["crossover_output_tokens"] == int(replica / (Fraction("53.40") / 4_000_000)) == 109_363_295
    assert data["verdict"] == (
        f"Moving all of this project's traffic (12,000,000 output tokens a month) to {deployment.name} would cost "
        "$1,460.00 a month (1 replica) against $160.20 on the API: the API is cheaper by $1,299.80 a month; "
        "self-hosting pays off from 109,363,296 output tokens a month (about $1,460.00 of API spend at today's "
        "prices)."
    )


@pytest.mark.usefixtures("traffic")
def test_typed_assumptions_override_and_slow_servers_need_replicas(client: Client, people: People) -> None:
    deployment = deployment_make(people.tenant.org, hourly_cost_usd=Decimal("9"), throughput_tokens_per_s=None)
    cheap = _api(client, people, days=10, deployment=deployment.pk, hourly_cost_usd="0.10",
                 throughput_tokens_per_s="100", utilisation_percent=50)  # fmt: skip
    assert cheap["assumptions"]["hourly_cost_usd"] == "0.10"
    assert Decimal(cheap["total"]["self_hosted_monthly_usd"]) == Decimal("73.0")
    assert cheap["verdict"].endswith("self-hosting saves $87.20 a month.")

    # 1 token/s at 100%: 2,628,000 output tokens a month per replica, so 12M need ⌈4.57⌉ = 5 replicas.
    slow = _api(client, people, days=10, hourly_cost_usd="0.10", throughput_tokens_per_s="1", utilisation_percent=100)
    assert slow["total"]["replicas"] == 5 and Decimal(slow["total"]["self_hosted_monthly_usd"]) == Decimal("365.0")
    assert slow["models"][0]["replicas"] == 4  # 9M alone: ⌈3.42⌉


def test_without_cost_or_throughput_the_page_shows_traffic_and_the_api_says_what_is_missing(
    client: Client, people: People, traffic: None
) -> None:
    login(client, people.owner)
    deployment = deployment_make(people.tenant.org, throughput_tokens_per_s=None)
    page = client.get(reverse("deployments:break-even", kwargs={"slug": people.tenant.project.slug}),
                      {"days": 10, "deployment": deployment.pk})  # fmt: skip
    assert page.status_code == 200
    assert b"Pick a deployment with a measured throughput or type one." in page.content
    assert b"gpt-4o-mini" in page.content and b"$52.5000" in page.content  # the window's traffic, unscaled
    api = client.get(reverse("deployments:api-break-even", kwargs={"slug": people.tenant.project.slug}))
    assert api.status_code == 400 and set(api.json()["error"]["fields"]) == {
        "hourly_cost_usd",
        "throughput_tokens_per_s",
    }


@pytest.mark.usefixtures("traffic")
def test_the_page_shows_the_table_and_the_verdict(client: Client, people: People) -> None:
    login(client, people.member)
    response = client.get(
        reverse("deployments:break-even", kwargs={"slug": people.tenant.project.slug}),
        {"days": 10, "hourly_cost_usd": "0.10", "throughput_tokens_per_s": "100", "utilisation_percent": "50"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "self-hosting saves $87.20 a month." in html
    # A replica at $0.10/h costs $73 a month: gpt-4o crosses over at $73 / ($52.50 / 3M) = 4,171,428.6 output
    # tokens a month, gpt-4o-mini at $73 / ($0.90 / 1M) = 81,111,111.1.
    assert "$157.50" in html and "$160.20" in html and "4,171,429" in html and "81,111,111" in html


def test_a_first_visit_compares_with_the_organisations_measured_deployment(client: Client, people: People) -> None:
    url = reverse("deployments:break-even", kwargs={"slug": people.tenant.project.slug})
    login(client, people.member)
    empty = client.get(url).content.decode()
    # Nothing to compare with yet: the empty form and the traffic, not two form errors.
    assert "Monthly cost" not in empty and "Pick a deployment" not in empty and "Traffic by model" in empty
    deployment_make(people.tenant.org, name="measured", hourly_cost_usd=Decimal("0.10"))
    html = client.get(url).content.decode()
    assert "Monthly cost" in html and "Pick a deployment" not in html
