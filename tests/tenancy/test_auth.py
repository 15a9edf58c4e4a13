"""signed_in_user: the User behind @login_required, and a loud failure where the decorator is missing."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory

from apps.tenancy.auth import signed_in_user
from tests.factories import user_make


@pytest.mark.django_db
def test_returns_the_signed_in_user() -> None:
    user = user_make()
    request = RequestFactory().get("/budgets/")
    request.user = user
    assert signed_in_user(request) is user


def test_an_anonymous_visitor_is_a_wiring_error() -> None:
    request = RequestFactory().get("/budgets/")
    request.user = AnonymousUser()
    with pytest.raises(TypeError, match="login_required"):
        signed_in_user(request)
