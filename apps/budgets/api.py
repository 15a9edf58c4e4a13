"""DRF API for budgets, rate limits, notification channels and alerts.

Every queryset is scoped to the organisations the caller belongs to, so a row
of another tenant is a 404. Writes need an owner or team-lead role.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from rest_framework import generics, permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.budgets import services
from apps.budgets.models import Alert, Budget, NotificationChannel, RateLimit
from apps.budgets.selectors import budget_status
from apps.keys.models import ApiKey
from apps.tenancy.models import MANAGER_ROLES, Organization, Project, Team
from apps.tenancy.selectors import organizations_for, projects_for
from costcontrol.forms import service_error_detail

MICRO = Decimal("0.000001")


class IsManagerForWrites(permissions.BasePermission):
    """Reads for any member; writes for owners and team leads of the object's organisation."""

    message = "Only owners and team leads can change budgets, limits and channels."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return request.user.memberships.filter(role__in=MANAGER_ROLES).exists()

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return request.user.memberships.filter(organization_id=obj.organization_id, role__in=MANAGER_ROLES).exists()


def _manager_org(user: Any, organization: Organization) -> None:
    if not user.memberships.filter(organization=organization, role__in=MANAGER_ROLES).exists():
        raise serializers.ValidationError({"organization": "You cannot manage this organisation."})


class _ScopedRelated(serializers.SlugRelatedField):
    """A related field whose choices are limited to what the caller may see."""

    def get_queryset(self) -> QuerySet[Any]:
        user = self.context["request"].user
        model = self.queryset.model
        if model is Organization:
            return organizations_for(user=user)
        if model is Project:
            return projects_for(user=user)
        if model is Team:
            return Team.objects.filter(organization__in=organizations_for(user=user))
        return ApiKey.objects.filter(project__in=projects_for(user=user))


class BudgetSerializer(serializers.ModelSerializer):
    organization = _ScopedRelated(slug_field="slug", queryset=Organization.objects.all())
    team = _ScopedRelated(slug_field="slug", queryset=Team.objects.all(), required=False, allow_null=True)
    project = _ScopedRelated(slug_field="slug", queryset=Project.objects.all(), required=False, allow_null=True)
    api_key = _ScopedRelated(slug_field="lookup_id", queryset=ApiKey.objects.all(), required=False, allow_null=True)

    class Meta:
        model = Budget
        fields = [
            "id", "organization", "name", "scope", "team", "project", "api_key", "feature", "end_user",
            "amount_usd", "period", "timezone", "starts_at", "mode", "alert_thresholds", "is_active", "created_at",
        ]  # fmt: skip
        read_only_fields = ["id", "created_at"]

    def create(self, validated: dict[str, Any]) -> Budget:
        _manager_org(self.context["request"].user, validated["organization"])
        is_active = validated.pop("is_active", True)
        try:
            budget = services.budget_create(timezone_name=validated.pop("timezone", "UTC"), **validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None
        if not is_active:
            budget.is_active = False
            budget.save(update_fields=["is_active"])
        return budget

    def update(self, instance: Budget, validated: dict[str, Any]) -> Budget:
        validated.pop("organization", None)  # a budget never moves between organisations
        for field, value in validated.items():
            setattr(instance, field, value)
        try:
            instance.full_clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None
        instance.save()
        return instance


class BudgetList(generics.ListCreateAPIView):
    serializer_class = BudgetSerializer
    permission_classes = [permissions.IsAuthenticated, IsManagerForWrites]

    def get_queryset(self) -> QuerySet[Budget]:
        return (
            Budget.objects.filter(organization__in=organizations_for(user=self.request.user))
            .select_related("organization", "team", "project", "api_key")
            .order_by("id")
        )


class BudgetDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = BudgetSerializer
    permission_classes = [permissions.IsAuthenticated, IsManagerForWrites]

    def get_queryset(self) -> QuerySet[Budget]:
        return BudgetList.get_queryset(self)


class BudgetStatusView(APIView):
    def get(self, request: Request, pk: int) -> Response:
        budget = generics.get_object_or_404(
            Budget.objects.filter(organization__in=organizations_for(user=request.user)), pk=pk
        )
        status = budget_status(budget=budget)
        return Response(
            {
                "budget": budget.id,
                "period_start": status.period_start,
                "period_end": status.period_end,
                "amount_usd": str(budget.amount_usd),
                "spent_usd": str(status.spent_usd),
                "percent_used": round(float(status.percent_used), 2),
                "burn_usd_per_day": str(status.burn_usd_per_day.quantize(MICRO)),
                "projected_usd": None if status.projected_usd is None else str(status.projected_usd.quantize(MICRO)),
            }
        )


class RateLimitSerializer(serializers.ModelSerializer):
    project = _ScopedRelated(slug_field="slug", queryset=Project.objects.all())
    api_key = _ScopedRelated(slug_field="lookup_id", queryset=ApiKey.objects.all(), required=False, allow_null=True)

    class Meta:
        model = RateLimit
        fields = ["id", "project", "api_key", "requests_per_minute", "tokens_per_minute", "max_concurrent"]
        read_only_fields = ["id"]
        validators: list[Any] = []  # the service upserts one row per (project, key)

    def create(self, validated: dict[str, Any]) -> RateLimit:
        _manager_org(self.context["request"].user, validated["project"].organization)
        try:
            return services.rate_limit_set(**validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None


class RateLimitList(generics.ListCreateAPIView):
    serializer_class = RateLimitSerializer
    permission_classes = [permissions.IsAuthenticated, IsManagerForWrites]

    def get_queryset(self) -> QuerySet[RateLimit]:
        return (
            RateLimit.objects.filter(project__in=projects_for(user=self.request.user))
            .select_related("project", "api_key")
            .order_by("id")
        )


class ChannelSerializer(serializers.ModelSerializer):
    organization = _ScopedRelated(slug_field="slug", queryset=Organization.objects.all())
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True)
    has_secret = serializers.SerializerMethodField()

    class Meta:
        model = NotificationChannel
        fields = ["id", "organization", "name", "kind", "target", "secret", "has_secret", "is_active"]
        read_only_fields = ["id", "has_secret"]

    def get_has_secret(self, obj: NotificationChannel) -> bool:
        return bool(obj.secret_encrypted)

    def create(self, validated: dict[str, Any]) -> NotificationChannel:
        _manager_org(self.context["request"].user, validated["organization"])
        validated.pop("is_active", None)
        try:
            return services.channel_create(**validated)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(service_error_detail(exc)) from None


class ChannelList(generics.ListCreateAPIView):
    serializer_class = ChannelSerializer
    permission_classes = [permissions.IsAuthenticated, IsManagerForWrites]

    def get_queryset(self) -> QuerySet[NotificationChannel]:
        return (
            NotificationChannel.objects.filter(organization__in=organizations_for(user=self.request.user))
            .select_related("organization")
            .order_by("id")
        )


class AlertSerializer(serializers.ModelSerializer):
    deliveries = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = ["id", "kind", "title", "message", "link", "project", "budget", "data", "created_at", "deliveries"]

    def get_deliveries(self, obj: Alert) -> list[dict[str, Any]]:
        return [{"channel": d.channel.name, "status": d.status, "attempts": d.attempts} for d in obj.deliveries.all()]


class AlertList(generics.ListAPIView):
    serializer_class = AlertSerializer

    def get_queryset(self) -> QuerySet[Alert]:
        return (
            Alert.objects.filter(organization__in=organizations_for(user=self.request.user))
            .prefetch_related("deliveries__channel")
            .order_by("-created_at")
        )
