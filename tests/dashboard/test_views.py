"""The control-plane pages, through the real HTTP surface."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.core.apikeys import hash_key
from apps.core.pricing import LongContext
from apps.keys.models import ApiKey
from apps.keys.services import key_issue
from apps.ledger.services import rollups_refresh
from apps.providers.models import ModelAlias, Price, Provider, ProviderKind
from apps.providers.services import provider_create
from apps.tenancy.models import Project
from tests.factories import People, entry_make, login

pytestmark = pytest.mark.django_db


def _pages(people: People) -> list[str]:
    org, project, provider = people.tenant.org, people.tenant.project, people.tenant.provider
    return [
        reverse("dashboard:home"),
        reverse("dashboard:project", kwargs={"slug": project.slug}),
        reverse("dashboard:providers", kwargs={"org_slug": org.slug}),
        reverse("dashboard:provider-edit", kwargs={"org_slug": org.slug, "pk": provider.pk}),
        reverse("dashboard:ledger"),
        reverse("dashboard:ledger-export"),
    ]


def test_every_page_requires_login(client: Client, people: People) -> None:
    for url in _pages(people):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_login_page_renders_and_logs_in(client: Client, people: People) -> None:
    assert b'name="password"' in client.get(reverse("login")).content
    response = client.post(
        reverse("login"), {"username": people.owner.username, "password": "correct horse battery staple"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:home")


def test_every_page_renders_for_owner(client: Client, people: People) -> None:
    login(client, people.owner)
    for url in _pages(people):
        response = client.get(url)
        assert response.status_code == 200, url
    home = client.get(reverse("dashboard:home")).content.decode()
    assert people.tenant.project.name in home and "New project" in home
    assert people.other.project.name not in home


def test_outsider_gets_404_on_project_provider_and_write_urls(client: Client, people: People) -> None:
    login(client, people.outsider)
    tenant = people.tenant
    slug, org_slug, provider_pk = tenant.project.slug, tenant.org.slug, tenant.provider.pk
    gets = [
        reverse("dashboard:project", kwargs={"slug": slug}),
        reverse("dashboard:providers", kwargs={"org_slug": org_slug}),
        reverse("dashboard:provider-edit", kwargs={"org_slug": org_slug, "pk": provider_pk}),
    ]
    for url in gets:
        assert client.get(url).status_code == 404, url
    # Not even another org's provider reached through the outsider's own org slug.
    url = reverse("dashboard:provider-edit", kwargs={"org_slug": people.other.org.slug, "pk": provider_pk})
    assert client.get(url).status_code == 404
    posts = [
        reverse("dashboard:key-new", kwargs={"slug": slug}),
        reverse("dashboard:key-revoke", kwargs={"slug": slug, "lookup_id": tenant.key.api_key.lookup_id}),
        reverse("dashboard:alias-new", kwargs={"slug": slug}),
        reverse("dashboard:default-provider", kwargs={"slug": slug}),
        reverse("dashboard:project-new", kwargs={"org_slug": org_slug}),
        reverse("dashboard:providers", kwargs={"org_slug": org_slug}),
        reverse("dashboard:price-new", kwargs={"org_slug": org_slug, "pk": provider_pk}),
    ]
    for url in posts:
        assert client.post(url, {"name": "x"}).status_code == 404, url
    assert ApiKey.objects.get(pk=tenant.key.api_key.pk).revoked_at is None


def test_home_shows_spend_from_rollups(client: Client, people: People) -> None:
    now = timezone.now()
    tenant = people.tenant
    entry_make(tenant, created_at=now, feature="a", cost=Decimal("1.50"))
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    earlier = month_start if month_start.date() != now.date() else None
    if earlier:
        entry_make(tenant, created_at=earlier, feature="b", cost=Decimal("2.00"))
    entry_make(tenant, created_at=month_start - dt.timedelta(hours=1), cost=Decimal("4.00"))  # last month
    rollups_refresh()
    login(client, people.owner)
    html = client.get(reverse("dashboard:home")).content.decode()
    assert "$1.50" in html
    assert ("$3.50" if earlier else "$1.50") in html
    assert "$7.50" not in html and "$5.50" not in html


def test_home_query_count_does_not_grow_with_projects(
    client: Client, people: People, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    from apps.tenancy.services import project_create

    login(client, people.owner)
    for n in range(3):
        project_create(organization=people.tenant.org, name=f"few {n}")
    with django_assert_max_num_queries(12):
        assert client.get(reverse("dashboard:home")).status_code == 200
    for n in range(30):
        project_create(organization=people.tenant.org, name=f"many {n}")
    with django_assert_max_num_queries(12):
        response = client.get(reverse("dashboard:home"))
    assert response.content.decode().count("/projects/") >= 34


def test_manager_creates_project_and_sees_field_errors(client: Client, people: People) -> None:
    login(client, people.owner)
    url = reverse("dashboard:project-new", kwargs={"org_slug": people.tenant.org.slug})
    response = client.post(url, {"name": "Search", "slug": "search-app", "team": people.tenant.team.pk})
    assert response.status_code == 302 and response["Location"] == "/projects/search-app/"
    assert Project.objects.get(slug="search-app").team == people.tenant.team
    duplicate = client.post(url, {"name": "Again", "slug": "search-app"})
    assert duplicate.status_code == 400
    assert "already exists" in duplicate.content.decode()


def test_key_issue_shows_plaintext_once_and_stores_only_a_hash(client: Client, people: People) -> None:
    login(client, people.member)
    project = people.tenant.project
    response = client.post(
        reverse("dashboard:key-new", kwargs={"slug": project.slug}),
        {"name": "search backend", "allowed_models": "gpt-4o-mini, gpt-5-nano", "default_feature": "search"},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    key = ApiKey.objects.get(project=project, name="search backend")
    html = response.content.decode()
    start = html.index("cc_live_" + key.lookup_id)
    plaintext = html[start : html.index('"', start)]
    assert len(plaintext) > 30
    assert key.key_hash == hash_key(plaintext) and key.key_hash != plaintext
    assert key.allowed_models == ["gpt-4o-mini", "gpt-5-nano"] and key.default_feature == "search"
    assert 'OpenAI(base_url="http://testserver/v1"' in html
    assert f'api_key="{plaintext}"' in html
    detail = client.get(reverse("dashboard:project", kwargs={"slug": project.slug})).content.decode()
    assert key.display_prefix in detail
    assert plaintext not in detail


def test_key_issue_form_errors(client: Client, people: People) -> None:
    login(client, people.owner)
    past = (timezone.now() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(
        reverse("dashboard:key-new", kwargs={"slug": people.tenant.project.slug}), {"name": "", "expires_at": past}
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "This field is required." in html and "The expiry must be in the future." in html
    assert ApiKey.objects.filter(project=people.tenant.project).count() == 1


def test_revoke_key_and_status_column(client: Client, people: People) -> None:
    login(client, people.member)
    project = people.tenant.project
    expired = key_issue(project=project, name="old", expires_at=timezone.now() + dt.timedelta(seconds=1))
    ApiKey.objects.filter(pk=expired.api_key.pk).update(expires_at=timezone.now() - dt.timedelta(hours=1))
    # A developer revokes the keys they issued, not their colleagues'.
    others = people.tenant.key.api_key
    url = reverse("dashboard:key-revoke", kwargs={"slug": project.slug, "lookup_id": others.lookup_id})
    assert client.post(url).status_code == 403
    api_key = key_issue(project=project, name="mine", created_by=people.member).api_key
    response = client.post(
        reverse("dashboard:key-revoke", kwargs={"slug": project.slug, "lookup_id": api_key.lookup_id})
    )
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None and not api_key.is_active
    html = client.get(reverse("dashboard:project", kwargs={"slug": project.slug})).content.decode()
    assert "status-revoked" in html and "status-expired" in html


def test_developers_project_page_shows_the_gateway_base_url_and_a_snippet_without_a_key(
    client: Client, people: People
) -> None:
    login(client, people.member)
    project = people.tenant.project
    issued = client.post(reverse("dashboard:key-new", kwargs={"slug": project.slug}), {"name": "later"})
    assert issued.status_code == 200
    html = client.get(reverse("dashboard:project", kwargs={"slug": project.slug})).content.decode()
    assert "Use the gateway" in html and "<code>http://testserver/v1</code>" in html
    assert 'OpenAI(base_url="http://testserver/v1", api_key=os.environ["COSTCONTROL_API_KEY"])' in html
    # Keys appear only as their display prefix: the snippet carries no secret, nor does the page.
    assert "api_key=&quot;cc_live_" not in html and 'api_key="cc_live_' not in html
    for key in ApiKey.objects.filter(project=project):
        assert key.display_prefix in html


def test_finance_reads_but_cannot_write(client: Client, people: People) -> None:
    login(client, people.finance)
    tenant = people.tenant
    slug, org_slug = tenant.project.slug, tenant.org.slug
    project_html = client.get(reverse("dashboard:project", kwargs={"slug": slug})).content.decode()
    assert tenant.key.api_key.display_prefix in project_html
    assert (
        "Issue key" not in project_html
        and "Revoke" not in project_html
        and '<form method="post" action="/projects' not in project_html
    )
    providers_html = client.get(reverse("dashboard:providers", kwargs={"org_slug": org_slug})).content.decode()
    assert "gpt-4o-mini" in providers_html and "Register provider" not in providers_html
    assert "New project" not in client.get(reverse("dashboard:home")).content.decode()
    provider_pk, lookup_id = tenant.provider.pk, tenant.key.api_key.lookup_id
    provider_data = {"name": "p", "kind": "openai", "base_url": "https://x.test/v1"}
    edit_url = reverse("dashboard:provider-edit", kwargs={"org_slug": org_slug, "pk": provider_pk})
    forbidden = [
        (reverse("dashboard:key-new", kwargs={"slug": slug}), {"name": "x"}),
        (reverse("dashboard:key-revoke", kwargs={"slug": slug, "lookup_id": lookup_id}), {}),
        (reverse("dashboard:alias-new", kwargs={"slug": slug}), {"alias": "a", "provider": provider_pk, "model": "m"}),
        (reverse("dashboard:default-provider", kwargs={"slug": slug}), {"default_provider": ""}),
        (reverse("dashboard:project-new", kwargs={"org_slug": org_slug}), {"name": "nope"}),
        (reverse("dashboard:providers", kwargs={"org_slug": org_slug}), provider_data),
        (edit_url, {**provider_data, "name": "renamed"}),
        (reverse("dashboard:price-new", kwargs={"org_slug": org_slug, "pk": provider_pk}), {}),
    ]  # fmt: skip
    for url, data in forbidden:
        assert client.post(url, data).status_code == 403, url
    assert ApiKey.objects.filter(project=tenant.project).count() == 1
    assert tenant.key.api_key.__class__.objects.get(pk=tenant.key.api_key.pk).revoked_at is None
    assert Provider.objects.get(pk=tenant.provider.pk).name == "sim"
    assert not ModelAlias.objects.filter(project=tenant.project).exists()


def test_developer_issues_keys_but_cannot_manage_aliases_or_providers(client: Client, people: People) -> None:
    login(client, people.member)
    tenant = people.tenant
    html = client.get(reverse("dashboard:project", kwargs={"slug": tenant.project.slug})).content.decode()
    assert "Issue key" in html and "Save alias" not in html
    url = reverse("dashboard:alias-new", kwargs={"slug": tenant.project.slug})
    assert client.post(url, {"alias": "a", "provider": tenant.provider.pk, "model": "m"}).status_code == 403
    assert client.get(reverse("dashboard:providers", kwargs={"org_slug": tenant.org.slug})).status_code == 200


def test_developer_does_not_see_other_teams_projects(client: Client, people: People) -> None:
    from apps.tenancy.services import project_create, team_create

    other_team = team_create(organization=people.tenant.org, name="Other team")
    hidden = project_create(organization=people.tenant.org, name="Hidden", team=other_team)
    login(client, people.member)
    assert client.get(reverse("dashboard:project", kwargs={"slug": hidden.slug})).status_code == 404
    assert "Hidden" not in client.get(reverse("dashboard:home")).content.decode()


def test_manager_sets_alias_and_default_provider(client: Client, people: People, settings: Any) -> None:
    settings.COSTCONTROL_EGRESS_ALLOW = [*settings.COSTCONTROL_EGRESS_ALLOW, "gpu.internal"]  # a private GPU host
    login(client, people.owner)
    tenant = people.tenant
    second = provider_create(
        organization=tenant.org,
        name="vllm",
        kind=ProviderKind.OPENAI_COMPATIBLE,
        base_url="http://gpu.internal:8000/v1",
    )
    slug = tenant.project.slug
    response = client.post(
        reverse("dashboard:alias-new", kwargs={"slug": slug}),
        {"alias": "default-chat", "provider": second.pk, "model": "llama"},
    )
    assert response.status_code == 302
    alias = ModelAlias.objects.get(project=tenant.project, alias="default-chat")
    assert (alias.provider, alias.model) == (second, "llama")
    # Another organisation's provider is not a valid choice.
    foreign = client.post(
        reverse("dashboard:alias-new", kwargs={"slug": slug}),
        {"alias": "x", "provider": people.other.provider.pk, "model": "m"},
    )
    assert foreign.status_code == 200 and "Select a valid choice" in foreign.content.decode()
    assert (
        client.post(
            reverse("dashboard:default-provider", kwargs={"slug": slug}), {"default_provider": second.pk}
        ).status_code
        == 302
    )
    assert Project.objects.get(pk=tenant.project.pk).default_provider == second
    html = client.get(reverse("dashboard:project", kwargs={"slug": slug})).content.decode()
    assert "default-chat" in html and "llama" in html


def test_provider_secret_is_write_only(client: Client, people: People, settings: Any) -> None:
    # No DNS in tests: the operator's allow-list names the host, so it is not resolved when saved.
    settings.COSTCONTROL_EGRESS_ALLOW = [*settings.COSTCONTROL_EGRESS_ALLOW, "api.openai.com"]
    login(client, people.owner)
    org = people.tenant.org
    secret = "sk-very-secret-value-123"
    response = client.post(
        reverse("dashboard:providers", kwargs={"org_slug": org.slug}),
        {"name": "openai", "kind": ProviderKind.OPENAI, "base_url": "https://api.openai.com/v1/", "secret": secret},
    )
    assert response.status_code == 302
    provider = Provider.objects.get(organization=org, name="openai")
    assert provider.secret == secret and secret not in provider.secret_encrypted
    assert provider.base_url == "https://api.openai.com/v1"
    edit_url = reverse("dashboard:provider-edit", kwargs={"org_slug": org.slug, "pk": provider.pk})
    html_urls = [url for url in _pages(people) if not url.endswith(".csv")] + [edit_url]
    pages = [client.get(url).content.decode() for url in html_urls]
    pages.append(client.get("/api/providers/").content.decode())
    for page in pages:
        assert secret not in page and provider.secret_encrypted not in page
    # Blank secret on edit keeps the stored one.
    assert (
        client.post(
            edit_url, {"name": "openai-prod", "base_url": "https://api.openai.com/v1", "secret": "", "is_active": "on"}
        ).status_code
        == 302
    )
    provider.refresh_from_db()
    assert (provider.name, provider.secret) == ("openai-prod", secret)
    assert (
        client.post(
            edit_url, {"name": "openai-prod", "base_url": "https://api.openai.com/v1", "secret": "sk-new"}
        ).status_code
        == 302
    )
    provider.refresh_from_db()
    assert provider.secret == "sk-new" and provider.is_active is False


def test_provider_form_errors(client: Client, people: People, settings: Any) -> None:
    login(client, people.owner)
    response = client.post(
        reverse("dashboard:providers", kwargs={"org_slug": people.tenant.org.slug}),
        {"name": "bad url", "kind": ProviderKind.OPENAI, "base_url": "not a url"},
    )
    html = response.content.decode()
    assert response.status_code == 200 and "Enter an http:// or https:// URL with a host" in html
    assert not Provider.objects.filter(name="bad url").exists()
    # A single-label host, as vLLM runs in a compose network, is a valid provider URL once the
    # operator allows it (it is not public): refused before, accepted after.
    data = {"name": "vllm", "kind": ProviderKind.OPENAI_COMPATIBLE, "base_url": "http://vllm:8000/v1"}
    refused = client.post(reverse("dashboard:providers", kwargs={"org_slug": people.tenant.org.slug}), data)
    assert refused.status_code == 200 and "This URL cannot be used" in refused.content.decode()
    settings.COSTCONTROL_EGRESS_ALLOW = [*settings.COSTCONTROL_EGRESS_ALLOW, "vllm:8000"]
    client.post(
        reverse("dashboard:providers", kwargs={"org_slug": people.tenant.org.slug}),
        {"name": "vllm", "kind": ProviderKind.OPENAI_COMPATIBLE, "base_url": "http://vllm:8000/v1"},
    )
    assert Provider.objects.get(name="vllm").base_url == "http://vllm:8000/v1"


def test_price_add_creates_a_new_effective_dated_row(client: Client, people: People) -> None:
    login(client, people.owner)
    provider = people.tenant.provider
    old = Price.objects.get(provider=provider, model="gpt-4o-mini")
    url = reverse("dashboard:price-new", kwargs={"org_slug": people.tenant.org.slug, "pk": provider.pk})
    prefix = f"p{provider.pk}-"
    fields = {"model": "gpt-4o-mini", "input_per_mtok": "0.2", "output_per_mtok": "0.8", "effective_from": "2030-01-01"}
    response = client.post(url, {prefix + name: value for name, value in fields.items()})
    assert response.status_code == 302
    rows = list(Price.objects.filter(provider=provider, model="gpt-4o-mini").order_by("effective_from"))
    assert len(rows) == 2 and rows[0].pk == old.pk and rows[0].input_per_mtok == old.input_per_mtok
    new = rows[1]
    assert new.effective_from == dt.date(2030, 1, 1)
    assert (new.input_per_mtok, new.cached_input_per_mtok, new.output_per_mtok) == (
        Decimal("0.2"),
        Decimal("0.2"),
        Decimal("0.8"),
    )
    assert (new.batch_input_per_mtok, new.batch_output_per_mtok) == (Decimal("0.2"), Decimal("0.8"))
    invalid = client.post(url, {prefix + "model": "x", prefix + "input_per_mtok": "-1", prefix + "output_per_mtok": "1",
                                prefix + "effective_from": "2030-01-01"})  # fmt: skip
    assert invalid.status_code == 200 and "greater than or equal to 0" in invalid.content.decode()


def test_the_price_form_sets_tier_and_reasoning_prices_all_of_a_tier_or_none(client: Client, people: People) -> None:
    login(client, people.owner)
    provider = people.tenant.provider
    url = reverse("dashboard:price-new", kwargs={"org_slug": people.tenant.org.slug, "pk": provider.pk})
    prefix = f"p{provider.pk}-"
    fields = {"model": "o4-mini", "input_per_mtok": "1.1", "output_per_mtok": "4.4", "effective_from": "2030-01-01"}
    half = {**fields, "priority_input_per_mtok": "2", "priority_output_per_mtok": "8"}
    refused = client.post(url, {prefix + name: value for name, value in half.items()})
    assert refused.status_code == 200 and "Give all three priority prices" in refused.content.decode()
    assert not Price.objects.filter(provider=provider, model="o4-mini", effective_from=dt.date(2030, 1, 1)).exists()
    full = {**half, "priority_cached_input_per_mtok": "0.5", "reasoning_per_mtok": "5"}
    assert client.post(url, {prefix + name: value for name, value in full.items()}).status_code == 302
    row = Price.objects.get(provider=provider, model="o4-mini", effective_from=dt.date(2030, 1, 1))
    priority = row.tier_rates()["priority"]
    assert (priority.input, priority.cached_input, priority.output) == (Decimal("2"), Decimal("0.5"), Decimal("8"))
    assert row.reasoning_per_mtok == Decimal("5") and "flex" not in row.tier_rates()


def test_the_price_form_keeps_sets_or_removes_a_models_long_context_rate(client: Client, people: People) -> None:
    login(client, people.owner)
    provider = people.tenant.provider
    url = reverse("dashboard:price-new", kwargs={"org_slug": people.tenant.org.slug, "pk": provider.pk})
    prefix = f"p{provider.pk}-"
    seeded = Price.objects.get(provider=provider, model="gpt-5.4").long_context()
    assert seeded is not None

    def post(day: str, **extra: str) -> HttpResponse:
        fields = {"model": "gpt-5.4", "input_per_mtok": "3", "output_per_mtok": "16", "effective_from": day, **extra}
        return client.post(url, {prefix + name: value for name, value in fields.items()})

    def rate(day: str) -> LongContext | None:
        when = dt.date.fromisoformat(day)
        return Price.objects.get(provider=provider, model="gpt-5.4", effective_from=when).long_context()

    assert post("2030-01-01").status_code == 302 and rate("2030-01-01") == seeded  # left blank: kept
    rule = {
        "long_context_above_tokens": "300000", "long_context_input_factor": "2.5", "long_context_output_factor": "1.25"
    }  # fmt: skip
    assert post("2030-02-01", **rule).status_code == 302
    assert rate("2030-02-01") == LongContext(300_000, Decimal("2.5"), Decimal("1.25"))
    assert post("2030-03-01", no_long_context="on").status_code == 302 and rate("2030-03-01") is None
    page = client.get(reverse("dashboard:providers", kwargs={"org_slug": people.tenant.org.slug})).content.decode()
    assert "over 300,000 input tokens: input ×2.5, output ×1.25" in page
    for garbage, message in (
        ({"long_context_above_tokens": "300000"}, "Give all three long-context values"),
        ({**rule, "long_context_input_factor": "0.5"}, "greater than or equal to 1"),
        ({**rule, "long_context_above_tokens": "lots"}, "Enter a whole number"),
        ({**rule, "no_long_context": "on"}, "not both"),
    ):
        refused = post("2030-04-01", **garbage)
        assert refused.status_code == 200 and message in refused.content.decode(), garbage
    assert not Price.objects.filter(provider=provider, model="gpt-5.4", effective_from=dt.date(2030, 4, 1)).exists()


def test_providers_page_query_count_bounded(client: Client, people: People, django_assert_max_num_queries) -> None:  # type: ignore[no-untyped-def]
    login(client, people.owner)
    url = reverse("dashboard:providers", kwargs={"org_slug": people.tenant.org.slug})
    with django_assert_max_num_queries(12):
        client.get(url)
    for n in range(5):
        provider_create(
            organization=people.tenant.org,
            name=f"extra {n}",
            kind=ProviderKind.SIMULATED,
            base_url=f"http://127.0.0.1:{9000 + n}/v1",
        )
    with django_assert_max_num_queries(12):
        assert client.get(url).status_code == 200


# Ledger -------------------------------------------------------------------------------------------


def test_ledger_shows_visible_rows_newest_first_with_columns(client: Client, people: People) -> None:
    now = timezone.now()
    entry_make(people.tenant, request_id="older", created_at=now - dt.timedelta(hours=2), feature="summaries")
    entry_make(people.tenant, request_id="newer", created_at=now, feature="search-feature", end_user="alice",
               requested_model="default-chat", served_model="gpt-5-nano", cost=Decimal("0.000123"),
               counterfactual_cost=Decimal("0.001123"), ttft_ms=45, route="alias default-chat")  # fmt: skip
    entry_make(people.other, request_id="foreign", feature="other-org-feature")
    login(client, people.owner)
    html = client.get(reverse("dashboard:ledger")).content.decode()
    assert html.index("search-feature") < html.index("summaries")
    assert "other-org-feature" not in html
    assert "$0.000123" in html and "$0.001000" in html  # cost, and saved = counterfactual - cost
    assert "default-chat</code> → <code>gpt-5-nano" in html
    assert people.tenant.key.api_key.display_prefix in html and "45&nbsp;ms" in html


def test_outsider_filtering_by_another_orgs_project_sees_nothing(client: Client, people: People) -> None:
    entry_make(people.tenant, feature="secret-feature")
    login(client, people.outsider)
    response = client.get(reverse("dashboard:ledger"), {"project": people.tenant.project.slug})
    html = response.content.decode()
    assert response.status_code == 200
    assert "secret-feature" not in html and "No requests match." in html
    assert response.context["totals"].totals.requests == 0
    export = client.get(reverse("dashboard:ledger-export"), {"project": people.tenant.project.slug})
    assert len(list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))) == 1


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"a", "b", "c", "d"}),
        ({"feature": "search"}, {"a", "b"}),
        ({"model": "gpt-5-nano"}, {"b"}),  # served model
        ({"model": "default-chat"}, {"b"}),  # requested model
        ({"end_user": "bob"}, {"c"}),
        ({"status": "error"}, {"d"}),
        ({"status": "ok", "feature": "search"}, {"a", "b"}),
        ({"date_from": "2031-03-02"}, {"b", "c", "d"}),
        ({"date_to": "2031-03-02"}, {"a", "b"}),
        ({"date_from": "2031-03-02", "date_to": "2031-03-02"}, {"b"}),
        ({"key": "__other_key__"}, {"c"}),
        ({"project": "__second_project__"}, {"d"}),
    ],
)
def test_ledger_filters_narrow_results(
    client: Client, people: People, params: dict[str, str], expected: set[str]
) -> None:
    from apps.tenancy.services import project_create

    tenant = people.tenant
    second = project_create(organization=tenant.org, name="second", slug="second-project", team=tenant.team)
    other_key = key_issue(project=tenant.project, name="other").api_key
    day = dt.datetime(2031, 3, 1, 12, tzinfo=dt.UTC)
    entry_make(tenant, request_id="a", created_at=day, feature="search")
    entry_make(tenant, request_id="b", created_at=day + dt.timedelta(days=1), feature="search",
               requested_model="default-chat", served_model="gpt-5-nano")  # fmt: skip
    entry_make(tenant, request_id="c", created_at=day + dt.timedelta(days=2), end_user="bob", api_key=other_key)
    entry_make(tenant, request_id="d", created_at=day + dt.timedelta(days=3), project=second, status_code=502)
    params = {
        k: {"__other_key__": other_key.lookup_id, "__second_project__": second.slug}.get(v, v)
        for k, v in params.items()
    }
    login(client, people.member)
    response = client.get(reverse("dashboard:ledger"), params)
    assert {entry.request_id for entry in response.context["page"].rows} == expected
    assert response.context["totals"].totals.requests == len(expected)


def test_ledger_totals_and_pagination(client: Client, people: People) -> None:
    base = timezone.now()
    for n in range(55):
        entry_make(people.tenant, created_at=base - dt.timedelta(seconds=n), prompt_tokens=10, cached_tokens=2,
                   completion_tokens=5, cost=Decimal("0.000100"), counterfactual_cost=Decimal("0.000300"))  # fmt: skip
    login(client, people.owner)
    first = client.get(reverse("dashboard:ledger"))
    totals = first.context["totals"].totals
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (55, 550, 275)
    assert totals.cost == Decimal("0.0055") and totals.saved == Decimal("0.011")
    page = first.context["page"]
    assert len(page.rows) == 50 and page.newer is None and "Older →" in first.content.decode()
    second = client.get(reverse("dashboard:ledger"), {"cursor": page.older.token()})
    assert len(second.context["page"].rows) == 5 and second.context["page"].older is None


@pytest.mark.parametrize("rows", [3, 30])
def test_ledger_query_count_independent_of_rows(
    client: Client, people: People, rows: int, django_assert_max_num_queries
) -> None:  # type: ignore[no-untyped-def]
    for _ in range(rows):
        entry_make(people.tenant)
    login(client, people.owner)
    with django_assert_max_num_queries(10):
        response = client.get(reverse("dashboard:ledger"), {"feature": ""})
    assert len(response.context["page"].rows) == rows


def test_csv_export_streams_header_and_filtered_rows(client: Client, people: People) -> None:
    entry_make(people.tenant, request_id="keep-1", feature="search", cost=Decimal("0.000111"))
    entry_make(people.tenant, request_id="keep-2", feature="search")
    entry_make(people.tenant, request_id="drop", feature="chat")
    entry_make(people.other, request_id="foreign", feature="search")
    login(client, people.finance)
    response = client.get(reverse("dashboard:ledger-export"), {"feature": "search"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header, body = rows[0], rows[1:]
    # One column list for every ledger export (the reports' order: source and provider included).
    assert header[:5] == ["request_id", "created_at", "source", "project", "key"] and "cost_usd" in header
    assert sorted(row[0] for row in body) == ["keep-1", "keep-2"]
    by_id = {row[0]: dict(zip(header, row, strict=True)) for row in body}
    assert Decimal(by_id["keep-1"]["cost_usd"]) == Decimal("0.000111")
    assert by_id["keep-1"]["project"] == people.tenant.project.slug


def test_usd_puts_the_sign_before_the_dollar() -> None:
    from decimal import Decimal

    from apps.dashboard.templatetags.dashboard import usd

    assert (usd(Decimal("-0.00621"), 4), usd(Decimal("1234.5"), 2), usd(None, 2)) == ("-$0.0062", "$1,234.50", "$0.00")


def test_the_provider_form_sets_whether_it_speaks_the_responses_api(client: Client, people: People) -> None:
    login(client, people.owner)
    tenant = people.tenant
    url = reverse("dashboard:provider-edit", kwargs={"org_slug": tenant.org.slug, "pk": tenant.provider.pk})
    assert 'name="responses_api"' in client.get(url).content.decode()
    form = {"name": tenant.provider.name, "base_url": tenant.provider.base_url, "is_active": "on"}
    assert client.post(url, form).status_code == 302  # an unticked box: it does not
    assert Provider.objects.get(pk=tenant.provider.pk).responses_api is False
    assert client.post(url, {**form, "responses_api": "on"}).status_code == 302
    assert Provider.objects.get(pk=tenant.provider.pk).responses_api is True
