"""DRF API for a project's keys: list, issue (the key is in that one answer), read, revoke, rotate."""

from __future__ import annotations

import datetime as dt

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.keys.models import ApiKey
from apps.keys.services import MAX_ROTATION_GRACE, IssuedKey, key_issue, key_revoke, key_rotate
from apps.tenancy.drf import request_user
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, require
from apps.tenancy.selectors import projects_for


def key_status(api_key: ApiKey) -> str:
    if api_key.revoked_at is not None:
        return "revoked"
    return "active" if api_key.is_active else "expired"


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


class IssuedKeySerializer(KeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself: shown in this answer only, never again")

    class Meta(KeySerializer.Meta):
        fields = [*KeySerializer.Meta.fields, "key"]
        read_only_fields = fields


def issued_body(issued: IssuedKey) -> Response:
    body = {**KeySerializer(issued.api_key).data, "key": issued.plaintext}
    return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})


class KeyIssueSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list, max_length=1000
    )
    default_feature = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires_at(self, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


class KeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=int(MAX_ROTATION_GRACE.total_seconds()),
        required=False,
        default=0,
        help_text="0 (default): the old key is revoked now; else it keeps working this long, then expires",
    )


class ProjectKeys(generics.ListAPIView):
    """List a project's keys; POST issues one and returns its plaintext, this once."""

    serializer_class = KeySerializer

    def project(self) -> Project:
        return generics.get_object_or_404(projects_for(user=self.request.user), slug=self.kwargs["slug"])

    def get_queryset(self) -> QuerySet[ApiKey]:
        return self.project().api_keys.select_related("project").order_by("-created_at")

    @extend_schema(request=KeyIssueSerializer, responses={201: IssuedKeySerializer})
    def post(self, request: Request, slug: str) -> Response:
        project = self.project()
        require(request.user, Action.KEY_ISSUE, project)
        payload = KeyIssueSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return issued_body(key_issue(project=project, created_by=request_user(request), **payload.validated_data))


def _visible_key(request: Request, lookup_id: str) -> ApiKey:
    keys = ApiKey.objects.filter(project__in=projects_for(user=request.user).values("pk")).select_related("project")
    return generics.get_object_or_404(keys, lookup_id=lookup_id)


class KeyDetail(APIView):
    @extend_schema(responses=KeySerializer)
    def get(self, request: Request, lookup_id: str) -> Response:
        return Response(KeySerializer(_visible_key(request, lookup_id)).data)


class KeyRevoke(APIView):
    @extend_schema(request=None, responses=KeySerializer)
    def post(self, request: Request, lookup_id: str) -> Response:
        api_key = _visible_key(request, lookup_id)
        require(request.user, Action.KEY_REVOKE, api_key)
        key_revoke(api_key=api_key)
        return Response(KeySerializer(api_key).data)


class KeyRotate(APIView):
    """A new key with the same settings (shown once); the old one is revoked or expires after the grace."""

    @extend_schema(request=KeyRotateSerializer, responses={201: IssuedKeySerializer})
    def post(self, request: Request, lookup_id: str) -> Response:
        api_key = _visible_key(request, lookup_id)
        require(request.user, Action.KEY_REVOKE, api_key)
        require(request.user, Action.KEY_ISSUE, api_key.project)
        payload = KeyRotateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        grace = dt.timedelta(seconds=payload.validated_data["grace_seconds"])
        issued = key_rotate(api_key=api_key, created_by=request_user(request), grace=grace)
        return issued_body(issued)
