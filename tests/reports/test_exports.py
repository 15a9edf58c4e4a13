"""CSV exports: ledger rows, aggregated roll-ups and FOCUS, through the HTTP surface."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from apps.ledger.models import LedgerEntry
from apps.ledger.services import rollups_refresh
from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from apps.reports.selectors import FOCUS_COLUMNS, allocate
from tests.factories import People, entry_make, login
from tests.reports.helpers import SINCE, UNTIL, at, ledger_mix, other_team_project, read_csv, total

pytestmark = pytest.mark.django_db

REQUIRED_FOCUS = {
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency", "BillingPeriodStart",
    "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeDescription", "ServiceName",
    "ServiceCategory", "ProviderName", "PublisherName", "InvoiceIssuerName", "ResourceId", "ResourceName", "SkuId",
    "SkuPriceId", "PricingUnit", "PricingQuantity", "ConsumedQuantity", "ConsumedUnit", "RegionId", "RegionName",
    "SubAccountId", "SubAccountName", "Tags",
}  # fmt: skip


def _url(name: str, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"{reverse(name)}?{query}"


def _ledger_sums(people: People) -> dict[str, Decimal]:
    return LedgerEntry.objects.filter(
        organization=people.tenant.org, created_at__gte=dt.datetime(2025, 9, 1, tzinfo=dt.UTC),
        created_at__lt=dt.datetime(2025, 10, 1, tzinfo=dt.UTC),
    ).aggregate(cost=Sum("cost"), counterfactual=Sum("counterfactual_cost"))  # fmt: skip


def test_focus_export_has_the_columns_and_reconciles_with_the_ledger(client: Client, people: People) -> None:
    ledger_mix(people)
    entry_make(
        people.tenant, created_at=at(30, 23, 59), cost=Decimal("1.23456789"), prompt_tokens=7, completion_tokens=3
    )
    entry_make(people.tenant, created_at=dt.datetime(2025, 10, 1, tzinfo=dt.UTC), cost=Decimal(5))  # outside: until
    login(client, people.finance)

    response = client.get(_url("reports:export-focus", org=people.tenant.org.slug, since=SINCE, until=UNTIL))

    assert response.status_code == 200 and isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    rows = read_csv(response)
    assert REQUIRED_FOCUS <= set(rows[0].keys()) and tuple(rows[0].keys()) == FOCUS_COLUMNS
    sums = _ledger_sums(people)
    assert total(rows, "BilledCost") == sums["cost"] == total(rows, "EffectiveCost")
    assert total(rows, "ListCost") == sums["counterfactual"]
    assert {row["ChargeCategory"] for row in rows} == {"Usage"}
    assert {row["ServiceCategory"] for row in rows} == {"AI and Machine Learning"}
    assert {row["ConsumedUnit"] for row in rows} == {"Tokens"} and {row["BillingCurrency"] for row in rows} == {"USD"}
    assert {row["SubAccountId"] for row in rows} == {people.tenant.project.slug}
    assert {row["BillingPeriodStart"] for row in rows} == {"2025-09-01T00:00:00+00:00"}
    # Token types are separate rows; their quantities add up to the ledger's tokens.
    ledger_tokens = LedgerEntry.objects.filter(created_at__lt=dt.datetime(2025, 10, 1, tzinfo=dt.UTC)).aggregate(
        prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"), completion=Sum("completion_tokens")
    )
    by_meter: dict[str, int] = {}
    for row in rows:
        by_meter[row["SkuMeter"]] = by_meter.get(row["SkuMeter"], 0) + int(row["ConsumedQuantity"])
        assert Decimal(row["PricingQuantity"]) * 1_000_000 == int(row["ConsumedQuantity"])
    assert by_meter["Cached input tokens"] == ledger_tokens["cached"]
    assert by_meter["Input tokens"] == ledger_tokens["prompt"] - ledger_tokens["cached"]
    assert by_meter["Output tokens"] == ledger_tokens["completion"]
    # Tags carry the slice's attributes; the hour is the charge period.
    downgrade = [row for row in rows if "downgrade" in row["Tags"]]
    tags = json.loads(downgrade[0]["Tags"])
    assert tags == {
        "feature": "summaries", "key": f"cc_live_{people.tenant.key.api_key.lookup_id}",
        "requested_model": "gpt-4o", "route": "downgrade:long-context", "source": "gateway",
        "endpoint": "chat.completions", "service_tier": "standard",
    }  # fmt: skip
    assert downgrade[0]["ChargePeriodStart"] == "2025-09-04T23:00:00+00:00"
    assert downgrade[0]["ChargePeriodEnd"] == "2025-09-05T00:00:00+00:00"
    assert downgrade[0]["SkuPriceId"].startswith("gpt-4o-mini:")
    assert Decimal(downgrade[0]["ListCost"]) > Decimal(downgrade[0]["BilledCost"])


def test_focus_export_carries_the_endpoint_and_the_tier(client: Client, people: People) -> None:
    entry_make(people.tenant, created_at=at(3, 10, 5), endpoint="responses", service_tier="flex",
               served_model="o4-mini", requested_model="o4-mini", cost=Decimal("0.0005"),
               counterfactual_cost=Decimal("0.0005"))  # fmt: skip
    login(client, people.finance)
    rows = read_csv(client.get(_url("reports:export-focus", org=people.tenant.org.slug, since=SINCE, until=UNTIL)))
    flex = [row for row in rows if json.loads(row["Tags"]).get("endpoint") == "responses"]
    assert flex and all(json.loads(row["Tags"])["service_tier"] == "flex" for row in flex)
    assert total(flex, "BilledCost") == Decimal("0.0005")
    # Our price book lists standard rates: a flex slice shows no list unit price rather than a wrong one.
    assert {row["ListUnitPrice"] for row in flex} == {""} and {row["ContractedUnitPrice"] for row in flex} == {""}


def test_allocation_is_exact_and_proportional() -> None:
    parts = allocate(Decimal("0.00000010"), [Decimal(1), Decimal(1), Decimal(1)])
    assert sum(parts) == Decimal("0.00000010") and parts[0] == parts[1] == Decimal("0.00000003")
    assert allocate(Decimal(6), [Decimal(0), Decimal(0)]) == [Decimal(3), Decimal(3)]
    assert allocate(Decimal(6), [Decimal(1), Decimal(2)]) == [Decimal(2), Decimal(4)]


@pytest.mark.parametrize(
    ("group_by", "bucket"),
    [("project,model", "day"), ("project,model,feature,key", "hour"), ("feature,end_user", "month"), ("", "day")],
)
def test_rollup_export_totals_equal_the_ledger(client: Client, people: People, group_by: str, bucket: str) -> None:
    ledger_mix(people)
    rollups_refresh()
    login(client, people.finance)

    response = client.get(
        _url("reports:export-rollups", org=people.tenant.org.slug, since=SINCE, until=UNTIL, group_by=group_by,
             bucket=bucket)
    )  # fmt: skip

    assert response.status_code == 200 and isinstance(response, StreamingHttpResponse)
    rows = read_csv(response)
    sums = _ledger_sums(people)
    assert total(rows, "cost_usd") == sums["cost"]
    assert total(rows, "counterfactual_cost_usd") == sums["counterfactual"]
    assert total(rows, "savings_usd") == sums["counterfactual"] - sums["cost"]
    assert sum(int(row["requests"]) for row in rows) == 5 and sum(int(row["errors"]) for row in rows) == 1
    expected_columns = [name for name in (group_by or "project,model").split(",") if name]
    assert list(rows[0].keys())[1 : 1 + len(expected_columns)] == expected_columns


def test_rollup_export_buckets_and_groups(client: Client, people: People) -> None:
    ledger_mix(people)
    rollups_refresh()
    login(client, people.finance)
    rows = read_csv(
        client.get(_url("reports:export-rollups", org=people.tenant.org.slug, since=SINCE, until=UNTIL,
                        group_by="feature", bucket="day"))
    )  # fmt: skip
    assert [(row["bucket_start"][:10], row["feature"]) for row in rows] == [
        ("2025-09-02", "chat"), ("2025-09-03", ""), ("2025-09-03", "search"), ("2025-09-04", "summaries"),
    ]  # fmt: skip
    chat = rows[0]
    assert int(chat["requests"]) == 2 and int(chat["prompt_tokens"]) == 2100 and int(chat["cached_tokens"]) == 1500


def test_rollup_export_rejects_unknown_grouping(client: Client, people: People) -> None:
    login(client, people.finance)
    url = _url("reports:export-rollups", org=people.tenant.org.slug, group_by="project,colour")
    response = client.get(url)
    assert response.status_code == 400 and b"colour" in response.content
    assert client.get(_url("reports:export-ledger", org=people.tenant.org.slug, since="2025-09-02",
                           until="2025-09-01")).status_code == 400  # fmt: skip


def test_ledger_export_streams_many_rows(client: Client, people: People) -> None:
    tenant = people.tenant
    LedgerEntry.objects.bulk_create(
        LedgerEntry(
            request_id=f"bulk-{i}", created_at=at(1 + i % 28, i % 24), organization=tenant.org, project=tenant.project,
            api_key=tenant.key.api_key, provider=tenant.provider, endpoint="chat.completions",
            requested_model="gpt-4o-mini", served_model="gpt-4o-mini", prompt_tokens=10, completion_tokens=5,
            cost=Decimal("0.00000100"), counterfactual_cost=Decimal("0.00000200"), status_code=200,
        )
        for i in range(6000)
    )  # fmt: skip
    login(client, people.finance)

    response = client.get(_url("reports:export-ledger", org=tenant.org.slug, since=SINCE, until=UNTIL))

    assert isinstance(response, StreamingHttpResponse)
    rows = read_csv(response)
    assert len(rows) == 6000 and total(rows, "cost_usd") == Decimal("0.006")
    assert {row["source"] for row in rows} == {"gateway"}
    times = [row["created_at"] for row in rows]
    assert times == sorted(times)


def test_developer_exports_only_their_teams_projects(client: Client, people: People) -> None:
    hidden = other_team_project(people)
    entry_make(people.tenant, created_at=at(5), cost=Decimal("1"))
    entry_make(people.tenant, created_at=at(5), project=hidden, cost=Decimal("10"))
    org = people.tenant.org.slug
    login(client, people.member)
    for name in ("reports:export-ledger", "reports:export-focus"):
        rows = read_csv(client.get(_url(name, org=org, since=SINCE, until=UNTIL)))
        cost_column = "cost_usd" if name.endswith("ledger") else "BilledCost"
        assert total(rows, cost_column) == Decimal(1), name
    assert client.get(_url("reports:export-ledger", org=org, project=hidden.slug)).status_code == 404

    client.logout()
    login(client, people.finance)
    rows = read_csv(client.get(_url("reports:export-ledger", org=org, since=SINCE, until=UNTIL)))
    assert total(rows, "cost_usd") == Decimal(11)
    rows = read_csv(client.get(_url("reports:export-ledger", org=org, since=SINCE, until=UNTIL, project=hidden.slug)))
    assert total(rows, "cost_usd") == Decimal(10)


def test_outsider_gets_404_on_every_export(client: Client, people: People) -> None:
    entry_make(people.tenant, created_at=at(5))
    login(client, people.outsider)
    for name in ("reports:export-ledger", "reports:export-rollups", "reports:export-focus"):
        assert client.get(_url(name, org=people.tenant.org.slug)).status_code == 404, name
    response = client.post(reverse("reports:job-new"), {"kind": "focus", "org": people.tenant.org.slug})
    assert response.status_code == 404


def test_exports_require_login(client: Client, people: People) -> None:
    response = client.get(_url("reports:export-focus", org=people.tenant.org.slug))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_focus_export_names_the_vendor_and_prices_cache_writes(client: Client, people: People) -> None:
    """One feature's spend across vendors: each row says its vendor; Anthropic's cache writes are their own rows."""
    claude = provider_create(
        organization=people.tenant.org, name="claude", kind=ProviderKind.SIMULATED_ANTHROPIC,
        base_url="http://127.0.0.1:9/v1",
    )  # fmt: skip
    entry_make(people.tenant, created_at=at(3, 10), feature="triage", cost=Decimal("0.0001"))
    entry_make(
        people.tenant, created_at=at(3, 10), feature="triage", provider=claude, requested_model="claude-haiku-4-5",
        served_model="claude-haiku-4-5", prompt_tokens=1_160, cached_tokens=50, cache_write_tokens=1_000,
        completion_tokens=7, cost=Decimal("0.001295"), counterfactual_cost=Decimal("0.001295"),
    )  # fmt: skip
    login(client, people.finance)
    response = client.get(_url("reports:export-focus", org=people.tenant.org.slug, since=SINCE, until=UNTIL))
    rows = read_csv(response)
    assert {(row["ProviderName"], row["PublisherName"], row["InvoiceIssuerName"]) for row in rows} == {
        ("OpenAI", "OpenAI", "sim"), ("Anthropic", "Anthropic", "claude")}  # fmt: skip
    anthropic = {row["SkuMeter"]: row for row in rows if row["ProviderName"] == "Anthropic"}
    assert int(anthropic["Cache write input tokens"]["ConsumedQuantity"]) == 1_000
    assert int(anthropic["Input tokens"]["ConsumedQuantity"]) == 110
    assert Decimal(anthropic["Cache write input tokens"]["ContractedUnitPrice"]) == Decimal("1.25")
    assert sum(Decimal(row["BilledCost"]) for row in anthropic.values()) == Decimal("0.001295")
    triage = [row for row in rows if json.loads(row["Tags"]).get("feature") == "triage"]
    assert sum(Decimal(row["BilledCost"]) for row in triage) == Decimal("0.001395")
