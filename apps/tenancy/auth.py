"""The signed-in user of a request, typed as a ``User``."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest


def signed_in_user(request: HttpRequest) -> User:
    """``request.user`` in a view behind ``@login_required``; raises ``TypeError`` for an anonymous one.

    The decorator redirects anonymous visitors before the view runs, so reaching the raise means a
    view lost its decorator; failing loudly beats writing a row owned by nobody.
    """
    user = request.user
    if not isinstance(user, User):
        raise TypeError(f"{request.path} needs a signed-in user; is the view missing @login_required?")
    return user
