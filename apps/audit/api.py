"""``GET /api/audit/``: the audit log for scripts, filtered like the page. Read-only: no verb writes."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import PermissionDenied, ValidationError

from apps.audit.models import AuditAction, AuditEvent, ObjectType
from apps.audit.selectors import AuditFilters, audit_events_for
from apps.tenancy.permissions import Action, can_anywhere
from costcontrol.api import query_moment


class _Diff(serializers.Serializer):
    before = serializers.DictField(allow_null=True)
    after = serializers.DictField(allow_null=True)


class AuditEventSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    actor = serializers.CharField(source="actor_label", read_only=True)
    diff = _Diff(read_only=True)

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "organization", "actor", "surface", "action", "object_type", "object_id",
                  "object_repr", "diff"]  # fmt: skip
        read_only_fields = fields


def _choice(value: str, name: str, choices: list[str]) -> str:
    if value and value not in choices:
        raise ValidationError({name: f"One of: {', '.join(choices)}."})
    return value


@extend_schema(
    parameters=[
        OpenApiParameter("since", OpenApiTypes.DATETIME, description="ISO date or datetime (from)"),
        OpenApiParameter("until", OpenApiTypes.DATETIME, description="ISO date (inclusive) or datetime"),
        OpenApiParameter("actor", str, description="The actor's user name, exactly"),
        OpenApiParameter("object_type", str, enum=ObjectType.values),
        OpenApiParameter("action", str, enum=AuditAction.values),
        OpenApiParameter("organization", str, description="Organisation slug"),
    ]
)
class AuditList(generics.ListAPIView):
    """Owners and finance: the changes made in their organisations, newest first (others: 403)."""

    serializer_class = AuditEventSerializer

    def get_queryset(self) -> QuerySet[AuditEvent]:
        if not can_anywhere(self.request.user, Action.AUDIT_VIEW):
            raise PermissionDenied("Only owners and finance read the audit log.")
        params = self.request.query_params
        filters = AuditFilters(
            since=query_moment(params.get("since"), name="since"),
            until=query_moment(params.get("until"), name="until", end_of_day=True),
            actor=params.get("actor", "").strip(),
            object_type=_choice(params.get("object_type", ""), "object_type", ObjectType.values),
            action=_choice(params.get("action", ""), "action", AuditAction.values),
            organization=params.get("organization", ""),
        )
        return audit_events_for(user=self.request.user, filters=filters)
