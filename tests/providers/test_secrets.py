"""Provider and channel secrets: bound to their host, rotatable, and an undecryptable one is loud, not fatal."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from apps.budgets.models import Alert, AlertKind, ChannelKind, NotificationChannel
from apps.budgets.secrets import secrets_alert_unreadable
from apps.budgets.services import channel_create
from apps.dashboard.services import api_token_rotate
from apps.policy.build import build_snapshot
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import provider_create
from apps.tenancy.models import Role
from tests.factories import People, login, member_make, tenant_make

pytestmark = pytest.mark.django_db

KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def _token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_rotate(user=user).key}")
    return client


def _edit(client: Client, provider: Provider, **data: str) -> Any:
    url = reverse("dashboard:provider-edit", kwargs={"org_slug": provider.organization.slug, "pk": provider.pk})
    return client.post(url, {"name": provider.name, "is_active": "on", "secret": "", **data})


def test_moving_a_provider_to_another_host_needs_the_secret_again(client: Client, people: People) -> None:
    provider = provider_create(
        organization=people.tenant.org,
        name="openai",
        kind=ProviderKind.OPENAI,
        base_url="http://127.0.0.1:9/v1",
        secret="sk-org-key",
    )
    login(client, people.owner)
    for elsewhere in ("http://127.0.0.2:9/v1", "http://127.0.0.1:10/v1", "https://127.0.0.1:9/v1"):
        response = _edit(client, provider, base_url=elsewhere)
        assert response.status_code == 200 and "enter the secret again" in response.content.decode(), elsewhere
        provider.refresh_from_db()
        assert provider.base_url == "http://127.0.0.1:9/v1" and provider.secret == "sk-org-key"
    # Same host, other path: the secret stays bound and is kept.
    assert _edit(client, provider, base_url="http://127.0.0.1:9/openai/v1").status_code == 302
    # Another host with the secret entered again is fine.
    assert _edit(client, provider, base_url="http://127.0.0.2:9/v1", secret="sk-for-the-new-host").status_code == 302
    provider.refresh_from_db()
    assert (provider.base_url, provider.secret) == ("http://127.0.0.2:9/v1", "sk-for-the-new-host")


def test_provider_urls_pass_the_egress_policy_when_saved(client: Client, people: People, settings: Any) -> None:
    login(client, people.owner)
    url = reverse("dashboard:providers", kwargs={"org_slug": people.tenant.org.slug})
    base = {"name": "x", "kind": ProviderKind.OPENAI_COMPATIBLE, "secret": "sk"}
    for inward in (
        "http://169.254.169.254/v1",
        "http://10.0.0.5:8000/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://2130706433/v1",
        "http://0x7f.1/v1",
        "http://[fe80::1]/v1",
    ):
        response = client.post(url, {**base, "base_url": inward})
        assert response.status_code == 200 and "This URL cannot be used" in response.content.decode(), inward
    settings.COSTCONTROL_EGRESS_ALLOW = []  # production's default: loopback is refused too
    assert "loopback" in client.post(url, {**base, "base_url": "http://localhost:9/v1"}).content.decode()
    assert not Provider.objects.filter(name="x").exists()
    # Editing an existing provider to point inward is refused the same way.
    provider = people.tenant.provider
    response = _edit(client, provider, base_url="http://169.254.169.254/v1", secret="sk-new")
    assert response.status_code == 200 and "link-local" in response.content.decode()


def test_channel_urls_pass_the_egress_policy_and_bind_their_secret(people: People, settings: Any) -> None:
    owner = _token_client(people.owner)
    org = people.tenant.org.slug
    refused = owner.post(
        "/api/channels/",
        {"organization": org, "name": "meta", "kind": "webhook", "target": "http://169.254.169.254/latest/meta-data/"},
        format="json",
    )
    assert refused.status_code == 400 and "link-local" in str(refused.json()["error"]["fields"]["target"])
    for garbage in ("javascript:alert(1)", "http://", "http://x:port/", "ftp://example.com/h", "\x00"):
        response = owner.post(
            "/api/channels/", {"organization": org, "name": "g", "kind": "webhook", "target": garbage}, format="json"
        )
        assert response.status_code == 400, garbage
    created = owner.post(
        "/api/channels/",
        {
            "organization": org,
            "name": "hook",
            "kind": "webhook",
            "target": "http://127.0.0.1:9/hook",
            "secret": "whsec",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    channel_id = created.json()["id"]
    moved = owner.patch(f"/api/channels/{channel_id}/", {"target": "http://127.0.0.2:9/hook"}, format="json")
    assert moved.status_code == 400 and "signing secret again" in str(moved.json())
    assert (
        owner.patch(f"/api/channels/{channel_id}/", {"target": "http://127.0.0.1:9/other"}, format="json").status_code
        == 200
    )
    again = owner.patch(
        f"/api/channels/{channel_id}/", {"target": "http://127.0.0.2:9/hook", "secret": "whsec2"}, format="json"
    )
    assert again.status_code == 200 and again.json()["has_secret"] is True
    channel = NotificationChannel.objects.get(pk=channel_id)
    assert (channel.target, channel.secret) == ("http://127.0.0.2:9/hook", "whsec2")
    for garbage in ({"target": 123}, {"is_active": "maybe"}, {"name": "x" * 201}, {"target": "not a url"},
                    {"target": ["http://127.0.0.1:9/h"]}, {"secret": {"a": 1}}):  # fmt: skip
        response = owner.patch(f"/api/channels/{channel_id}/", garbage, format="json")
        assert response.status_code == 400, garbage
    assert (
        owner.put(f"/api/channels/{channel_id}/", {"target": "http://127.0.0.1:9/h"}, format="json").status_code == 405
    )
    settings.COSTCONTROL_EGRESS_ALLOW = []
    inward = owner.patch(f"/api/channels/{channel_id}/", {"target": "http://127.0.0.2:9/x"}, format="json")
    assert inward.status_code == 400 and "loopback" in str(inward.json())


def test_slack_channel_urls_pass_the_same_egress_policy_on_the_api(people: People, settings: Any) -> None:
    owner = _token_client(people.owner)
    org = people.tenant.org.slug
    slack = {"organization": org, "name": "ops", "kind": "slack"}
    refused = owner.post("/api/channels/", {**slack, "target": "http://169.254.169.254/hooks"}, format="json")
    assert refused.status_code == 400 and "link-local" in str(refused.json()["error"]["fields"]["target"])
    created = owner.post("/api/channels/", {**slack, "target": "http://127.0.0.1:9/services/T/B/x"}, format="json")
    assert created.status_code == 201, created.content
    settings.COSTCONTROL_EGRESS_ALLOW = []
    inward = owner.patch(f"/api/channels/{created.json()['id']}/", {"target": "http://127.0.0.1:9/y"}, format="json")
    assert inward.status_code == 400 and "loopback" in str(inward.json())
    assert NotificationChannel.objects.get(pk=created.json()["id"]).target == "http://127.0.0.1:9/services/T/B/x"


def test_lesser_roles_and_outsiders_cannot_retarget_a_channel(people: People) -> None:
    channel = channel_create(
        organization=people.tenant.org,
        name="hook",
        kind=ChannelKind.WEBHOOK,
        target="http://127.0.0.1:9/hook",
        secret="whsec",
    )
    url = f"/api/channels/{channel.pk}/"
    # A lead elsewhere may manage no organisation at all: refused before the lookup (the matrix).
    lead_elsewhere = member_make(people.other, Role.TEAM_LEAD, team=people.other.team)
    for user, expected in ((people.member, 403), (people.finance, 403), (people.outsider, 404), (lead_elsewhere, 403)):
        response = _token_client(user).patch(url, {"target": "http://127.0.0.1:9/hook", "secret": "x"}, format="json")
        assert response.status_code == expected, user
    assert APIClient().patch(url, {"target": "http://127.0.0.1:9/x"}, format="json").status_code in (401, 403)
    channel.refresh_from_db()
    assert (channel.target, channel.secret) == ("http://127.0.0.1:9/hook", "whsec")


def test_key_rotation_reencrypts_every_secret_with_the_first_key(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    tenant = tenant_make()
    provider = provider_create(
        organization=tenant.org,
        name="p",
        kind=ProviderKind.OPENAI,
        base_url="http://127.0.0.1:9/v1",
        secret="sk-provider",
    )
    channel = channel_create(
        organization=tenant.org, name="c", kind=ChannelKind.WEBHOOK, target="http://127.0.0.1:9/hook", secret="whsec"
    )
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B, KEY_A]  # new key first; the old one still reads
    assert Provider.objects.get(pk=provider.pk).secret == "sk-provider"
    call_command("reencrypt_secrets")
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B]  # the old key dropped: everything still decrypts
    assert Provider.objects.get(pk=provider.pk).secret == "sk-provider"
    assert NotificationChannel.objects.get(pk=channel.pk).secret == "whsec"


def test_an_undecryptable_secret_is_reported_not_fatal(settings: Any) -> None:
    settings.FIELD_ENCRYPTION_KEYS = [KEY_A]
    tenant = tenant_make()
    lost = provider_create(
        organization=tenant.org,
        name="lost",
        kind=ProviderKind.OPENAI,
        base_url="http://127.0.0.1:9/v1",
        secret="sk-lost",
    )
    settings.FIELD_ENCRYPTION_KEYS = [KEY_B]  # KEY_A dropped too early; lost's secret no longer decrypts
    tenant.provider.secret = "sk-simulated"  # re-entered under the new key
    tenant.provider.save()
    with pytest.raises(CommandError, match=f"provider {lost.pk} \\(lost\\)"):
        call_command("reencrypt_secrets")

    # The snapshot still builds: the provider is left out, everything else is there.
    snapshot = build_snapshot(1)
    assert lost.pk in snapshot.unusable_providers and lost.pk not in snapshot.providers
    assert tenant.provider.pk in snapshot.providers and tenant.key.api_key.lookup_id in snapshot.keys

    # The organisation is told once per stored value.
    assert secrets_alert_unreadable() == 1 and secrets_alert_unreadable() == 0
    alert = Alert.objects.get(kind=AlertKind.SECRET_UNREADABLE)
    assert alert.organization_id == tenant.org.pk and "lost" in alert.title
