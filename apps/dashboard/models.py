"""What an API token may do: DRF's token (one per user) gains a scope and, optionally, an earlier expiry."""

from __future__ import annotations

from django.db import models


class TokenScope(models.TextChoices):
    READ = "read", "Read only"
    WRITE = "write", "Read and write"


class TokenGrant(models.Model):
    """A token's scope (a read token gets 403 on every write) and an expiry earlier than the default lifetime.

    A token without a grant (one made in Django's admin) is read-only.
    """

    token = models.OneToOneField("authtoken.Token", on_delete=models.CASCADE, primary_key=True, related_name="grant")
    scope = models.CharField(max_length=5, choices=TokenScope.choices, default=TokenScope.WRITE)
    # None: API_TOKEN_LIFETIME_DAYS after the token was made (the limit for every token).
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(scope__in=TokenScope.values), name="token_scope_valid")
        ]

    def __str__(self) -> str:
        return f"{self.scope} token"
