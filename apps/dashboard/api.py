"""DRF API for projects, keys, the ledger, providers and prices.

Querysets are scoped by ``projects_for`` / organisation membership, so another
tenant's row is a 404. Finance may read everything of its organisation but
never write (403). Writes go through services.
"""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.keys.models import ApiKey
from apps.keys.services import key_issue, key_revoke
from apps.ledger.models import LedgerEntry
from apps.ledger.selectors import LedgerFilters, ledger_entries
from apps.providers.models import Price, Provider
from apps.providers.selectors import prices_for, providers_for
from apps.tenancy.models import Project
from apps.tenancy.selectors import can_issue_keys, projects_for


def key_status(api_key: ApiKey) -> str:
    if api_key.revoked_at is not None:
        return "revoked"
    return "active" if api_key.is_active else "expired"


class ProjectSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    default_provider = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Project
        fields = ["slug", "name", "organization", "team", "default_provider", "created_at"]


class KeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    status = serializers.SerializerMethodField()
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "lookup_id", "prefix", "name", "project", "allowed_models", "default_feature",
            "expires_at", "revoked_at", "created_at", "status",
        ]  # fmt: skip
        read_only_fields = fields

    def get_status(self, obj: ApiKey) -> str:
        return key_status(obj)


class KeyIssueSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    allowed_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)
    default_feature = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


class LedgerEntrySerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    key = serializers.CharField(source="api_key.lookup_id", default=None, read_only=True)
    savings = serializers.DecimalField(max_digits=18, decimal_places=8, read_only=True)

    class Meta:
        model = LedgerEntry
        fields = [
            "request_id", "created_at", "project", "key", "endpoint", "feature", "end_user",
            "requested_model", "served_model", "prompt_tokens", "cached_tokens", "completion_tokens",
            "usage_estimated", "cost", "counterfactual_cost", "savings", "latency_ms", "ttft_ms",
            "status_code", "error_code", "streamed", "cache_hit", "route",
        ]  # fmt: skip


class ProviderSerializer(serializers.ModelSerializer):
    """Never the secret: only whether one is stored."""

    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Provider
        fields = ["id", "organization", "name", "kind", "base_url", "is_active", "has_secret", "created_at"]


class PriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Price
        fields = [
            "id", "provider", "model", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok",
            "batch_input_per_mtok", "batch_output_per_mtok", "effective_from", "created_at",
        ]  # fmt: skip


class ProjectList(generics.ListAPIView):
    serializer_class = ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for(user=self.request.user)


class ProjectDetail(generics.RetrieveAPIView):
    serializer_class = ProjectSerializer
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for(user=self.request.user)


class ProjectKeys(generics.ListAPIView):
    """List a project's keys; POST issues one and returns its plaintext, this once."""

    serializer_class = KeySerializer

    def project(self) -> Project:
        return generics.get_object_or_404(projects_for(user=self.request.user), slug=self.kwargs["slug"])

    def get_queryset(self) -> QuerySet[ApiKey]:
        return self.project().api_keys.select_related("project").order_by("-created_at")

    def post(self, request: Request, slug: str) -> Response:
        project = self.project()
        if not can_issue_keys(user=request.user, project=project):
            raise PermissionDenied("You cannot issue keys for this project.")
        payload = KeyIssueSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            issued = key_issue(project=project, created_by=request.user, **payload.validated_data)
        except DjangoValidationError as exc:
            raise ApiValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from None
        body = {**KeySerializer(issued.api_key).data, "key": issued.plaintext}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


class KeyRevoke(APIView):
    def post(self, request: Request, lookup_id: str) -> Response:
        api_key = generics.get_object_or_404(
            ApiKey.objects.filter(project__in=projects_for(user=request.user).values("pk")).select_related("project"),
            lookup_id=lookup_id,
        )
        if not can_issue_keys(user=request.user, project=api_key.project):
            raise PermissionDenied("You cannot revoke keys of this project.")
        key_revoke(api_key=api_key)
        return Response(KeySerializer(api_key).data)


def _moment(value: str | None, *, name: str, end_of_day: bool = False) -> dt.datetime | None:
    """An ISO datetime, or a date meaning its midnight (the next one for ``until``)."""
    if not value:
        return None
    try:
        # parse_datetime would read a bare date as its midnight, losing "until the end of that day".
        day = parse_date(value)
        moment = None if day is not None else parse_datetime(value)
    except ValueError:
        day = moment = None
    if day is not None:
        moment = dt.datetime.combine(day + dt.timedelta(days=1 if end_of_day else 0), dt.time.min)
    if moment is None:
        raise ApiValidationError({name: "Use an ISO date or datetime."})
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class LedgerList(generics.ListAPIView):
    serializer_class = LedgerEntrySerializer

    def get_queryset(self) -> QuerySet[LedgerEntry]:
        params = self.request.query_params
        filters = LedgerFilters(
            project=params.get("project", ""),
            model=params.get("model", ""),
            feature=params.get("feature", ""),
            end_user=params.get("user", ""),
            since=_moment(params.get("since"), name="since"),
            until=_moment(params.get("until"), name="until", end_of_day=True),
        )
        return ledger_entries(user=self.request.user, filters=filters).select_related("project", "api_key")


class ProviderList(generics.ListAPIView):
    serializer_class = ProviderSerializer

    def get_queryset(self) -> QuerySet[Provider]:
        return providers_for(user=self.request.user)


class PriceList(generics.ListAPIView):
    serializer_class = PriceSerializer

    def get_queryset(self) -> QuerySet[Price]:
        prices = prices_for(user=self.request.user)
        provider = self.request.query_params.get("provider")
        if provider:
            if not provider.isdigit():
                raise ApiValidationError({"provider": "Give the provider's numeric id."})
            prices = prices.filter(provider_id=int(provider))
        return prices
