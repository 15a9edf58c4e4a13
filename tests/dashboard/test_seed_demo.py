"""The demo seed: an OpenAI-kind and an Anthropic-kind simulated provider, and a fallback across vendors."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from apps.providers.models import Provider, ProviderKind
from apps.routing.models import RoutingRule


@pytest.mark.django_db
def test_the_demo_seeds_an_anthropic_provider_and_falls_back_to_it_twice_over() -> None:
    for _ in range(2):  # seeding again changes nothing but the key
        call_command("seed_demo", upstream="http://127.0.0.1:9/v1", stdout=io.StringIO(), stderr=io.StringIO())
    claude = Provider.objects.get(name="Simulated Anthropic")
    assert claude.kind == ProviderKind.SIMULATED_ANTHROPIC and claude.has_secret
    assert claude.prices.filter(model="claude-haiku-4-5", cache_write_per_mtok__isnull=False).exists()
    rule = RoutingRule.objects.get(name="Try gpt-4.1 beside gpt-4o")
    fallbacks = [(t.model, t.provider_id) for t in rule.targets.filter(role="fallback").order_by("position")]
    assert fallbacks[-1] == ("claude-haiku-4-5", claude.id)
