"""The audit log: who changed what, when, through which surface. Append-only.

Rows are written by the services (``apps.audit.services.audit_record``) in the same transaction as
the change they describe, so a change that rolls back leaves no row and no write path skips one.
The table refuses UPDATE and DELETE in Postgres itself (a trigger, migration 0001): neither the ORM,
nor raw SQL, nor the admin can edit or remove an event. The organisation and actor columns keep
their ids without foreign-key constraints, so deleting a user or an organisation never needs to
touch (and cannot be blocked by) the events that name them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class Surface(models.TextChoices):
    UI = "ui", "Dashboard"
    API = "api", "API"
    COMMAND = "command", "Command"
    SYSTEM = "system", "System"


class AuditAction(models.TextChoices):
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
    REVOKE = "revoke", "Revoke"
    ROTATE = "rotate", "Rotate"
    MOVE = "move", "Move"
    PURGE = "purge", "Purge"
    START = "start", "Start"
    STOP = "stop", "Stop"
    REENCRYPT = "reencrypt", "Re-encrypt"


class ObjectType(models.TextChoices):
    ORGANIZATION = "organization", "Organisation"
    TEAM = "team", "Team"
    MEMBERSHIP = "membership", "Membership"
    PROJECT = "project", "Project"
    KEY = "key", "API key"
    PROVIDER = "provider", "Provider"
    PRICE = "price", "Price"
    ALIAS = "alias", "Alias"
    BUDGET = "budget", "Budget"
    RATE_LIMIT = "rate_limit", "Rate limit"
    CHANNEL = "channel", "Channel"
    ROUTING_RULE = "routing_rule", "Routing rule"
    CACHE_POLICY = "cache_policy", "Cache policy"
    CACHE_ENTRY = "cache_entry", "Cache entries"
    PRUNE_POLICY = "prune_policy", "Pruning policy"
    DEPLOYMENT = "deployment", "Deployment"
    API_TOKEN = "api_token", "API token"


class AppendOnlyError(Exception):
    """An audit event was about to be changed or deleted."""


class AuditEvent(models.Model):
    at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    # The actor's name when it happened (users get renamed or deleted), or the command that ran.
    actor_label = models.CharField(max_length=200, blank=True)
    surface = models.CharField(max_length=10, choices=Surface.choices)
    organization = models.ForeignKey(
        "tenancy.Organization",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    action = models.CharField(max_length=20, choices=AuditAction.choices)
    object_type = models.CharField(max_length=30, choices=ObjectType.choices)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    # {"before": {field: value} | null, "after": {field: value} | null}: only changed fields on an
    # update, every field on a create or delete; secrets and secret-bearing URLs masked.
    diff = models.JSONField(default=dict)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "-at"], name="audit_org_at"),
            models.Index(fields=["organization", "object_type", "-at"], name="audit_org_type_at"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(surface__in=Surface.values), name="audit_surface_valid"),
            models.CheckConstraint(condition=models.Q(action__in=AuditAction.values), name="audit_action_valid"),
            models.CheckConstraint(condition=models.Q(object_type__in=ObjectType.values), name="audit_type_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label or self.surface} {self.action} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit events are append-only")
