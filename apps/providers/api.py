"""DRF API for providers, prices and a project's model aliases.

Providers and prices are organisation-wide: every member reads them, only owners change them. The
secret is write-only: answers say whether one is stored, never what it is, and the base URL is
masked for all but owners. Aliases are project settings (owners, and leads of the project's team).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.catalog import MAX_TOKEN_COUNT
from apps.core.pricing import LongContext
from apps.providers.models import (
    FACTOR,
    FACTOR_BOUNDS,
    MONEY,
    ModelAlias,
    Price,
    Provider,
    ProviderKind,
    validate_base_url,
)
from apps.providers.selectors import aliases_for, prices_for, providers_for
from apps.providers.services import alias_delete, alias_set, price_set, provider_create, provider_update
from apps.tenancy.drf import VisibleRelated, writes_need
from apps.tenancy.models import Organization, Project
from apps.tenancy.permissions import Action, require, shown
from apps.tenancy.selectors import projects_for


class ProviderSerializer(serializers.ModelSerializer):
    """Never the secret: only whether one is stored. The base URL is masked for all but owners."""

    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    base_url = serializers.SerializerMethodField()

    class Meta:
        model = Provider
        fields = [
            "id", "organization", "name", "kind", "base_url", "is_active", "responses_api", "has_secret", "created_at",
        ]  # fmt: skip

    def get_base_url(self, obj: Provider) -> str:
        return shown(self.context["request"].user, obj.base_url, obj)


class ProviderCreateSerializer(serializers.Serializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    name = serializers.CharField(max_length=200)
    kind = serializers.ChoiceField(choices=ProviderKind.choices)
    base_url = serializers.CharField(max_length=500, validators=[validate_base_url], help_text="Including /v1")
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True, default="", max_length=2000)
    responses_api = serializers.BooleanField(required=False, default=True)


class ProviderUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    base_url = serializers.CharField(max_length=500, validators=[validate_base_url], required=False)
    secret = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=2000, help_text="Blank or absent: keep it"
    )
    is_active = serializers.BooleanField(required=False)
    responses_api = serializers.BooleanField(required=False)


class ProviderList(generics.ListAPIView):
    serializer_class = ProviderSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[Provider]:
        return providers_for(user=self.request.user)

    @extend_schema(request=ProviderCreateSerializer, responses={201: ProviderSerializer})
    def post(self, request: Request) -> Response:
        """Register a provider; OpenAI and the simulator start from the public price catalogue."""
        payload = ProviderCreateSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        require(request.user, Action.ORG_MANAGE, data["organization"])
        provider = provider_create(**data)
        return Response(ProviderSerializer(provider, context=self.get_serializer_context()).data, status=201)


class ProviderDetail(generics.RetrieveAPIView):
    serializer_class = ProviderSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[Provider]:
        return providers_for(user=self.request.user)

    @extend_schema(request=ProviderUpdateSerializer, responses=ProviderSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        """Rename, re-point (another host needs the secret again), re-key or pause a provider."""
        provider = self.get_object()
        payload = ProviderUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        provider_update(
            provider=provider,
            name=data.get("name", provider.name),
            base_url=data.get("base_url", provider.base_url),
            secret=data.get("secret") or None,
            is_active=data.get("is_active", provider.is_active),
            responses_api=data.get("responses_api"),
        )
        return Response(ProviderSerializer(provider, context=self.get_serializer_context()).data)


def _money() -> serializers.DecimalField:
    return serializers.DecimalField(**MONEY, min_value=Decimal(0))


def _optional_money(help_text: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        **MONEY, min_value=Decimal(0), required=False, allow_null=True, default=None, help_text=help_text
    )


class PriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Price
        fields = [
            "id", "provider", "model", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok",
            "cache_write_per_mtok", "batch_input_per_mtok", "batch_output_per_mtok",
            "flex_input_per_mtok", "flex_cached_input_per_mtok", "flex_output_per_mtok",
            "priority_input_per_mtok", "priority_cached_input_per_mtok", "priority_output_per_mtok",
            "reasoning_per_mtok", "long_context_above_tokens", "long_context_input_factor",
            "long_context_output_factor", "effective_from", "created_at",
        ]  # fmt: skip


def _tier_money(tier: str) -> serializers.DecimalField:
    return _optional_money(f"All three {tier} prices or none; none: the {tier} tier bills at the standard prices")


class LongContextSerializer(serializers.Serializer):
    above_input_tokens = serializers.IntegerField(min_value=1, max_value=MAX_TOKEN_COUNT)
    input_factor = serializers.DecimalField(**FACTOR, **FACTOR_BOUNDS)
    output_factor = serializers.DecimalField(**FACTOR, **FACTOR_BOUNDS)

    def to_internal_value(self, data: Any) -> LongContext:
        checked = super().to_internal_value(data)
        return LongContext(checked["above_input_tokens"], checked["input_factor"], checked["output_factor"])


class PriceSetSerializer(serializers.Serializer):
    provider = serializers.IntegerField(min_value=1, help_text="Provider id")
    model = serializers.CharField(max_length=200)
    input_per_mtok = _money()
    output_per_mtok = _money()
    cached_input_per_mtok = _optional_money("Default: the input price")
    batch_input_per_mtok = _optional_money("Default: the input price")
    batch_output_per_mtok = _optional_money("Default: the output price")
    cache_write_per_mtok = _optional_money("Default: the input price")
    flex_input_per_mtok = _tier_money("flex")
    flex_cached_input_per_mtok = _tier_money("flex")
    flex_output_per_mtok = _tier_money("flex")
    priority_input_per_mtok = _tier_money("priority")
    priority_cached_input_per_mtok = _tier_money("priority")
    priority_output_per_mtok = _tier_money("priority")
    reasoning_per_mtok = _optional_money("Where reasoning is priced apart from output; default: billed as output")
    long_context = LongContextSerializer(
        required=False, allow_null=True,
        help_text="A request whose prompt passes above_input_tokens is billed whole at input x input_factor and "
        "output x output_factor. Null: none. Omitted: the model keeps its current long-context rate",
    )  # fmt: skip
    effective_from = serializers.DateField()


class PriceList(generics.ListAPIView):
    """Prices per 1M tokens; ``POST`` sets a model's price from a date on (owners)."""

    serializer_class = PriceSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[Price]:
        prices = prices_for(user=self.request.user)
        provider = self.request.query_params.get("provider")
        if provider:
            if not provider.isdigit() or len(provider) > 18:
                raise ValidationError({"provider": "Give the provider's numeric id."})
            prices = prices.filter(provider_id=int(provider))
        return prices

    @extend_schema(request=PriceSetSerializer, responses={201: PriceSerializer})
    def post(self, request: Request) -> Response:
        payload = PriceSetSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        data["provider"] = providers_for(user=request.user).filter(pk=data["provider"]).first()
        if data["provider"] is None:
            raise ValidationError({"provider": "No such provider among those you see."})
        require(request.user, Action.ORG_MANAGE, data["provider"])
        price = price_set(**data)
        return Response(PriceSerializer(price).data, status=status.HTTP_201_CREATED)


class AliasSerializer(serializers.ModelSerializer):
    provider = serializers.IntegerField(source="provider_id", min_value=1, help_text="Provider id")

    class Meta:
        model = ModelAlias
        fields = ["id", "alias", "provider", "model"]
        read_only_fields = ["id"]
        validators: list[Any] = []  # setting an existing alias again re-points it

    def create(self, validated: dict[str, Any]) -> ModelAlias:
        project: Project = self.context["project"]
        provider = Provider.objects.filter(organization_id=project.organization_id, pk=validated["provider_id"]).first()
        if provider is None:
            raise ValidationError({"provider": "No such provider in this project's organisation."})
        return alias_set(project=project, alias=validated["alias"], provider=provider, model=validated["model"])


class _ProjectAliases:
    """The project in the URL (404 unless visible); writes need ``project.manage`` on it."""

    kwargs: dict[str, Any]
    request: Request

    def project(self) -> Project:
        return generics.get_object_or_404(projects_for(user=self.request.user), slug=self.kwargs["slug"])

    def get_queryset(self) -> QuerySet[ModelAlias]:
        project = self.project()
        if self.request.method not in permissions.SAFE_METHODS:
            require(self.request.user, Action.PROJECT_MANAGE, project)
        return aliases_for(project=project)


class AliasList(_ProjectAliases, generics.ListCreateAPIView):
    """A project's aliases; ``POST`` sets one (an existing alias is re-pointed)."""

    serializer_class = AliasSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        if self.request.method == "POST":
            project = self.project()
            require(self.request.user, Action.PROJECT_MANAGE, project)
            context["project"] = project
        return context


class AliasDetail(_ProjectAliases, generics.RetrieveDestroyAPIView):
    serializer_class = AliasSerializer

    def perform_destroy(self, instance: ModelAlias) -> None:
        alias_delete(alias=instance)
