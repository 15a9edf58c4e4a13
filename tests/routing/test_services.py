"""Rule writes: target lines, validation, ordering."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from apps.providers.models import ProviderKind
from apps.providers.services import price_set, provider_create
from apps.routing.models import RoutingRule, TargetRole
from apps.routing.services import rule_move, targets_parse
from apps.tenancy.services import project_set_default_provider
from tests.factories import tenant_make
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.django_db


def test_target_lines_name_a_model_an_optional_provider_and_a_weight() -> None:
    tenant = tenant_make()
    backup = provider_create(
        organization=tenant.org, name="backup sim", kind=ProviderKind.SIMULATED, base_url="http://127.0.0.1:9/v1"
    )
    specs = targets_parse(project=tenant.project, text="gpt-4o-mini 90\n\ngpt-4o @ backup sim 10%\n")
    assert [(s.model, s.provider, s.weight) for s in specs] == [
        ("gpt-4o-mini", tenant.provider, 90),  # the project's default provider
        ("gpt-4o", backup, 10),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no-such-model", "Line 1: no provider of this organisation prices 'no-such-model'."),
        ("gpt-4o\ngpt-4o @ nowhere", "Line 2: no provider named 'nowhere' in this organisation."),
        ("@@", "Line 1: write 'model', 'model @ provider' or 'model @ provider 90'."),
    ],
)
def test_bad_target_lines_say_which_line(text: str, message: str) -> None:
    tenant = tenant_make()
    with pytest.raises(ValidationError) as caught:
        targets_parse(project=tenant.project, text=text)
    assert caught.value.messages == [message]


def test_a_plain_target_prefers_the_projects_default_provider_never_the_first_by_id() -> None:
    tenant = tenant_make()
    backup = provider_create(
        organization=tenant.org, name="backup sim", kind=ProviderKind.SIMULATED, base_url="http://127.0.0.1:9/v1"
    )
    project_set_default_provider(project=tenant.project, provider=backup)  # the later provider by id
    assert [s.provider for s in targets_parse(project=tenant.project, text="gpt-4o")] == [backup]
    # A model only one provider prices goes to it, whatever the default.
    price_set(provider=tenant.provider, model="house-model", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2),
              effective_from=dt.date(2024, 1, 1))  # fmt: skip
    assert [s.provider for s in targets_parse(project=tenant.project, text="house-model")] == [tenant.provider]


def test_a_plain_target_that_several_providers_price_must_name_one_without_a_default() -> None:
    tenant, other = tenant_make(), tenant_make()
    provider_create(
        organization=tenant.org, name="backup sim", kind=ProviderKind.SIMULATED, base_url="http://127.0.0.1:9/v1"
    )
    project_set_default_provider(project=tenant.project, provider=None)
    with pytest.raises(ValidationError) as caught:
        targets_parse(project=tenant.project, text="gpt-4o-mini @ sim\ngpt-4o")
    assert caught.value.messages == [
        "Line 2: several providers price 'gpt-4o' and this project's default provider does not;"
        " write which one, e.g. 'gpt-4o @ backup sim', 'gpt-4o @ sim'."
    ]
    # Another organisation's providers price it too, but are not counted: one of ours is enough.
    project_set_default_provider(project=other.project, provider=None)
    assert [s.provider for s in targets_parse(project=other.project, text="gpt-4o")] == [other.provider]


def test_another_organisations_provider_cannot_be_named() -> None:
    tenant, other = tenant_make(), tenant_make()
    provider_create(
        organization=other.org, name="theirs", kind=ProviderKind.SIMULATED, base_url="http://127.0.0.1:9/v1"
    )
    with pytest.raises(ValidationError, match="no provider named 'theirs'"):
        targets_parse(project=tenant.project, text="gpt-4o @ theirs")


@pytest.mark.parametrize(
    ("fields", "primaries", "field"),
    [
        ({"action": "split"}, "gpt-4o", "primaries"),
        ({"action": "cascade"}, "gpt-4o-mini", "primaries"),
        ({"action": "route"}, "gpt-4o\ngpt-4o-mini", "primaries"),
        ({"shadow_percent": 10}, "gpt-4o", "shadow"),
        ({"match_regex": "(unclosed"}, "gpt-4o", "match_regex"),
        ({"cascade_threshold": 2}, "gpt-4o", "cascade_threshold"),
        ({"min_prompt_tokens": 10, "max_prompt_tokens": 5}, "gpt-4o", "__all__"),
    ],
)
def test_inconsistent_rules_are_refused_with_the_field_at_fault(fields: dict, primaries: str, field: str) -> None:
    tenant = tenant_make()
    with pytest.raises(ValidationError) as caught:
        rule_make(tenant, primaries=primaries, **fields)
    assert field in caught.value.message_dict
    assert not RoutingRule.objects.exists()


def test_rules_are_appended_then_reordered() -> None:
    tenant = tenant_make()
    a, b, c = (rule_make(tenant, name=n, primaries="gpt-4o-mini") for n in "abc")
    assert [r.position for r in (a, b, c)] == [0, 1, 2]
    rule_move(rule=c, offset=-1)
    rule_move(rule=a, offset=-1)  # already first: stays
    assert list(RoutingRule.objects.filter(project=tenant.project).values_list("name", flat=True)) == ["a", "c", "b"]


def test_saving_a_rule_replaces_its_targets() -> None:
    tenant = tenant_make()
    rule = rule_make(tenant, primaries="gpt-4o", fallbacks="gpt-4o-mini\ngpt-4.1-mini")
    assert rule.targets.filter(role=TargetRole.FALLBACK).count() == 2
    from apps.routing.services import rule_save

    rule_save(
        project=tenant.project,
        rule=rule,
        fields={"name": "renamed"},
        primaries=targets_parse(project=tenant.project, text="gpt-4.1"),
        fallbacks=[],
        shadow=[],
    )
    rule.refresh_from_db()
    assert rule.name == "renamed"
    assert list(rule.targets.values_list("role", "model")) == [("primary", "gpt-4.1")]
