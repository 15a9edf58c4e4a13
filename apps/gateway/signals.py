"""Announce policy changes to every gateway process once they are committed."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from apps.gateway.policy import publish_policy_change

logger = logging.getLogger(__name__)


def _announce(**_: Any) -> None:
    transaction.on_commit(_publish_quietly)


def _publish_quietly() -> None:
    try:
        publish_policy_change()
    except Exception:
        # The change is committed; gateways rebuild on their periodic full refresh.
        logger.exception("could not announce a policy change")


def connect() -> None:
    from apps.budgets.models import Budget, RateLimit
    from apps.cache.models import CachePolicy
    from apps.keys.models import ApiKey
    from apps.providers.models import ModelAlias, Price, Provider
    from apps.routing.models import RoutingRule, RuleTarget
    from apps.tenancy.models import Project

    for model in (
        ApiKey,
        Project,
        Provider,
        Price,
        ModelAlias,
        Budget,
        RateLimit,
        CachePolicy,
        RoutingRule,
        RuleTarget,
    ):
        post_save.connect(_announce, sender=model, dispatch_uid=f"policy-save-{model.__name__}")
        post_delete.connect(_announce, sender=model, dispatch_uid=f"policy-delete-{model.__name__}")
