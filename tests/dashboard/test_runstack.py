"""`runstack --no-simulator`: no simulated upstream among the children, and a command that creates the first
organisation (the demo seed is what creates one otherwise)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.models import AuditEvent
from apps.dashboard.management.commands.runstack import Command, child_commands
from apps.tenancy.models import Membership, Organization, Role
from tests.factories import user_make


def _options(*argv: str) -> dict[str, object]:
    return vars(Command().create_parser("manage.py", "runstack").parse_args(list(argv)))


def test_runstack_starts_the_simulator_by_default_and_not_with_no_simulator() -> None:
    assert _options()["simulator"] is True
    with_demo = child_commands(_options("--upstream-port", "9123"))
    assert with_demo["upstream"][-2:] == ["--port", "9123"]
    without = child_commands(_options("--no-simulator"))
    assert "upstream" not in without
    assert set(without) == set(with_demo) - {"upstream"}
    assert not any("apps.simulator" in argv for argv in without.values())


@pytest.mark.django_db
def test_create_organization_makes_the_user_its_owner_and_is_audited() -> None:
    owner = user_make()
    out = io.StringIO()
    call_command("create_organization", "Acme Corp", owner=owner.username, stdout=out)
    org = Organization.objects.get(slug="acme-corp")
    assert Membership.objects.get(organization=org, user=owner).role == Role.OWNER
    assert "acme-corp" in out.getvalue()
    assert AuditEvent.objects.filter(actor_label__contains="create_organization").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("Acme", {"owner": "nobody-by-that-name"}, "no user"),
        ("Acme", {"owner": "OWNER", "slug": "not a slug!"}, "slug"),
        ("x" * 500, {"owner": "OWNER"}, "characters"),
    ],
)
def test_create_organization_refuses_garbage_with_a_message(name: str, args: dict[str, str], message: str) -> None:
    owner = user_make()
    args = {key: owner.username if value == "OWNER" else value for key, value in args.items()}
    with pytest.raises(CommandError, match=message):
        call_command("create_organization", name, stdout=io.StringIO(), **args)
    assert not Organization.objects.exists()
