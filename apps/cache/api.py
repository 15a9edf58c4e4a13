"""DRF API for a project's cache: policies, entries (for those who may read what users typed), purge.

Policies and purges are project settings (owners, and leads of the project's team); entries hold
prompts and answers, so listing or reading them needs ``cache.content.view`` (the same people).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.cache.models import CacheEntry, CachePolicy
from apps.cache.selectors import cache_entries
from apps.cache.services import cache_entry_delete, cache_policy_save, cache_purge
from apps.ledger.services import redis_client
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, require
from apps.tenancy.selectors import projects_for


def _project(request: Request, slug: str) -> Project:
    return generics.get_object_or_404(projects_for(user=request.user), slug=slug)


class CachePolicySerializer(serializers.ModelSerializer):
    deny_patterns = serializers.ListField(
        child=serializers.CharField(max_length=500),
        required=False,
        max_length=50,
        help_text="Prompt prefixes (case-insensitive) or 're:REGEX' (RE2) that bypass the cache",
    )

    class Meta:
        model = CachePolicy
        fields = ["id", "feature", "exact_enabled", "semantic_enabled", "similarity_threshold", "ttl_seconds",
                  "max_entries", "eviction", "share_across_users", "deny_patterns"]  # fmt: skip
        read_only_fields = ["id"]
        validators: list[Any] = []  # one policy per (project, feature): the service's full_clean says so

    def create(self, validated: dict[str, Any]) -> CachePolicy:
        return cache_policy_save(policy=CachePolicy(project=self.context["project"], **validated))

    def update(self, instance: CachePolicy, validated: dict[str, Any]) -> CachePolicy:
        for field, value in validated.items():
            setattr(instance, field, value)
        return cache_policy_save(policy=instance)


class _ProjectCache:
    """The project in the URL (404 unless visible); writes need ``project.manage`` on it."""

    kwargs: dict[str, Any]
    request: Request

    def project(self) -> Project:
        project = _project(self.request, self.kwargs["slug"])
        if self.request.method not in permissions.SAFE_METHODS:
            require(self.request.user, Action.PROJECT_MANAGE, project)
        return project

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "project": self.project()}  # type: ignore[misc]


class PolicyList(_ProjectCache, generics.ListCreateAPIView):
    """The project's cache policies (one per feature, blank: the whole project); ``POST`` adds one."""

    serializer_class = CachePolicySerializer

    def get_queryset(self) -> QuerySet[CachePolicy]:
        return CachePolicy.objects.filter(project=self.project()).order_by("feature")


class PolicyDetail(_ProjectCache, generics.RetrieveUpdateAPIView):
    serializer_class = CachePolicySerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[CachePolicy]:
        return CachePolicy.objects.filter(project=self.project())


class CacheEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = CacheEntry
        fields = ["id", "namespace", "model", "prompt_text", "prompt_tokens", "completion_tokens", "cost",
                  "created_at", "expires_at", "last_hit_at", "hit_count"]  # fmt: skip
        read_only_fields = fields


class CacheEntryDetailSerializer(CacheEntrySerializer):
    class Meta(CacheEntrySerializer.Meta):
        fields = [*CacheEntrySerializer.Meta.fields, "response"]
        read_only_fields = fields


class _ProjectEntries(_ProjectCache):
    def get_queryset(self) -> QuerySet[CacheEntry]:
        project = self.project()
        require(self.request.user, Action.CACHE_CONTENT_VIEW, project)
        return CacheEntry.objects.filter(project=project).defer("embedding")


@extend_schema(
    parameters=[
        OpenApiParameter("q", str, description="Text in the prompt or the model"),
        OpenApiParameter("namespace", str),
    ]
)
class EntryList(_ProjectEntries, generics.ListAPIView):
    serializer_class = CacheEntrySerializer

    def get_queryset(self) -> QuerySet[CacheEntry]:
        project = self.project()
        require(self.request.user, Action.CACHE_CONTENT_VIEW, project)
        params = self.request.query_params
        return cache_entries(project=project, search=params.get("q", "").strip(), namespace=params.get("namespace"))


class EntryDetail(_ProjectEntries, generics.RetrieveDestroyAPIView):
    """One cached answer; ``DELETE`` drops it (a miss from then on)."""

    serializer_class = CacheEntryDetailSerializer

    def perform_destroy(self, instance: CacheEntry) -> None:
        cache_entry_delete(client=redis_client(), entry=instance)


class PurgeSerializer(serializers.Serializer):
    namespace = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Only this namespace; absent: every namespace"
    )


class PurgeResultSerializer(serializers.Serializer):
    removed = serializers.IntegerField()


class Purge(APIView):
    @extend_schema(request=PurgeSerializer, responses=PurgeResultSerializer)
    def post(self, request: Request, slug: str) -> Response:
        """Delete the project's cached answers (in one namespace, or all); they are misses from then on."""
        project = _project(request, slug)
        require(request.user, Action.PROJECT_MANAGE, project)
        payload = PurgeSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        removed = cache_purge(client=redis_client(), project=project, namespace=payload.validated_data.get("namespace"))
        return Response({"removed": removed})
