"""API keys issued to apps. Only a lookup id and a hash are stored."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from apps.core.apikeys import KEY_PREFIX
from apps.tenancy.permissions import Placement, placement, with_creator


class ApiKey(models.Model):
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    # The public part of the key (after the prefix); shown in lists and logs.
    lookup_id = models.CharField(max_length=16, unique=True)
    # SHA-256 of the full key, hex. The secret itself is never stored.
    key_hash = models.CharField(max_length=64)
    allowed_models = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    default_feature = models.CharField(max_length=100, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey("auth.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"{KEY_PREFIX}{self.lookup_id}…"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def placement(self) -> Placement:
        """Where the key sits in the organisation chart: its project's place, and who issued it."""
        return with_creator(placement(self.project), self.created_by_id)

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
