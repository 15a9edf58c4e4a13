"""Telling every gateway process that the policy changed, once the change is committed.

One registry: ``POLICY_MODELS`` lists every model the snapshot is built from
(``apps.policy.build``). A save or delete of any of them announces a change on
commit (``post_save``/``post_delete``, connected when the app is ready); each
gateway then rebuilds its snapshot. A write that sends no signal (``bulk_create``,
``QuerySet.update``) is announced by a registered row saved in the same
transaction (a rule's targets by the rule), or by ``policy_changed()`` where
the writer may import this app.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save

from apps.budgets.models import Budget, RateLimit
from apps.cache.models import CachePolicy
from apps.core import names
from apps.enforcement.redis_clients import sync_client
from apps.keys.models import ApiKey
from apps.opportunities.models import Trial
from apps.providers.models import ModelAlias, Price, Provider
from apps.routing.models import PrunePolicy, RoutingRule, RuleTarget
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)

POLICY_MODELS: tuple[type[models.Model], ...] = (
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
    Trial,  # a semantic-cache trial in shadow marks the cache policy it measures
    PrunePolicy,
)


def publish_policy_change() -> None:
    """Tell every gateway process to rebuild its snapshot now (call after commit)."""
    client = sync_client(settings.REDIS_URL)
    try:
        # Two round trips, not a pipeline: a Redis Cluster's pipeline refuses PUBLISH (announcements are rare).
        client.incr(names.policy_version(settings.REDIS_PREFIX))
        client.publish(names.policy_channel(settings.REDIS_PREFIX), b"changed")
    finally:
        client.close()


def policy_changed() -> None:
    """Announce a policy change when the current transaction commits (at once outside one)."""
    transaction.on_commit(_publish_quietly)


def _publish_quietly() -> None:
    try:
        publish_policy_change()
    except Exception:
        # The change is committed; gateways rebuild on their periodic full refresh.
        logger.exception("could not announce a policy change")


def _announce(**_: Any) -> None:
    policy_changed()


def connect() -> None:
    for model in POLICY_MODELS:
        post_save.connect(_announce, sender=model, dispatch_uid=f"policy-save-{model.__name__}")
        post_delete.connect(_announce, sender=model, dispatch_uid=f"policy-delete-{model.__name__}")
