"""DRF API for projects, teams and memberships (who is in an organisation, with which role and team).

Projects follow the role matrix like the pages (owners anywhere, team leads in their team). Every
member reads their organisations' teams and members; only owners change them (``org.manage``).
Writes go through the same services as the pages, so each change is audited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.tenancy.drf import VisibleRelated, team_in, writes_need
from apps.tenancy.models import Membership, Organization, Project, Role, Team
from apps.tenancy.permissions import Action, can, can_anywhere, require
from apps.tenancy.selectors import organizations_for, projects_for
from apps.tenancy.services import (
    membership_remove,
    membership_set,
    project_create,
    project_set_default_provider,
    project_update,
    team_create,
    team_update,
)

if TYPE_CHECKING:
    from apps.providers.models import Provider


def _require_owner(request: Any, organization: Organization) -> None:
    if not can(request.user, Action.ORG_MANAGE, organization):
        raise PermissionDenied("Only the organisation's owners manage its teams and members.")


class TeamSerializer(serializers.ModelSerializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    slug = serializers.SlugField(max_length=80, required=False, allow_blank=True, help_text="Default: from the name")

    class Meta:
        model = Team
        fields = ["id", "organization", "name", "slug"]
        read_only_fields = ["id"]
        validators: list[Any] = []  # the service checks the slug is unique in the organisation

    def create(self, validated: dict[str, Any]) -> Team:
        _require_owner(self.context["request"], validated["organization"])
        return team_create(**validated)


class TeamUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)


def _teams(request: Any) -> QuerySet[Team]:
    return (
        Team.objects.filter(organization__in=organizations_for(user=request.user))
        .select_related("organization")
        .order_by("organization__name", "name")
    )


class TeamList(generics.ListCreateAPIView):
    serializer_class = TeamSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[Team]:
        return _teams(self.request)


class TeamDetail(generics.RetrieveUpdateAPIView):
    """``PATCH``: rename a team (its slug stays)."""

    serializer_class = TeamSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[Team]:
        return _teams(self.request)

    @extend_schema(request=TeamUpdateSerializer, responses=TeamSerializer)
    def patch(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        team = self.get_object()
        payload = TeamUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        team_update(team=team, name=payload.validated_data["name"])
        return Response(TeamSerializer(team, context=self.get_serializer_context()).data)


class MemberSerializer(serializers.ModelSerializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.filter(is_active=True), help_text="An existing user's name"
    )
    role = serializers.ChoiceField(choices=Role.choices)
    team = serializers.CharField(
        source="team.slug", required=False, allow_null=True, allow_blank=True, help_text="Team slug; empty: none"
    )

    class Meta:
        model = Membership
        fields = ["id", "organization", "user", "role", "team"]
        read_only_fields = ["id"]
        validators: list[Any] = []  # one membership per user and organisation: checked below

    def create(self, validated: dict[str, Any]) -> Membership:
        organization = validated["organization"]
        _require_owner(self.context["request"], organization)
        if Membership.objects.filter(organization=organization, user=validated["user"]).exists():
            raise ValidationError({"user": "Already a member: change the membership instead."})
        team = team_in(organization, (validated.get("team") or {}).get("slug"))
        return membership_set(organization=organization, user=validated["user"], role=validated["role"], team=team)


class MemberUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    team = serializers.SlugField(required=False, allow_null=True, allow_blank=True, help_text="Team slug; empty: none")


def _members(request: Any) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization__in=organizations_for(user=request.user))
        .select_related("organization", "user", "team")
        .order_by("organization__name", "user__username")
    )


class MemberList(generics.ListCreateAPIView):
    """Members of the caller's organisations; ``POST`` (owners) adds an existing user with a role."""

    serializer_class = MemberSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]

    def get_queryset(self) -> QuerySet[Membership]:
        return _members(self.request)


class MemberDetail(generics.RetrieveUpdateDestroyAPIView):
    """``PATCH`` changes the role or team; ``DELETE`` removes the user from the organisation.

    The organisation's last owner can be neither demoted nor removed (400).
    """

    serializer_class = MemberSerializer
    permission_classes = [permissions.IsAuthenticated, writes_need(Action.ORG_MANAGE)]
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Membership]:
        return _members(self.request)

    @extend_schema(request=MemberUpdateSerializer, responses=MemberSerializer)
    def patch(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        membership = self.get_object()
        payload = MemberUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        team = team_in(membership.organization, data["team"]) if "team" in data else membership.team
        membership = membership_set(
            organization=membership.organization,
            user=membership.user,
            role=data.get("role", membership.role),
            team=team,
        )
        return Response(MemberSerializer(membership, context=self.get_serializer_context()).data)

    def perform_destroy(self, instance: Membership) -> None:
        membership_remove(membership=instance)


# Projects -------------------------------------------------------------------------------------------


class ProjectSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    default_provider = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = Project
        fields = ["slug", "name", "organization", "team", "default_provider", "created_at"]


class ProjectCreateSerializer(serializers.Serializer):
    organization = VisibleRelated(slug_field="slug", queryset=Organization.objects.all())
    name = serializers.CharField(max_length=200)
    slug = serializers.SlugField(max_length=80, required=False, allow_blank=True, help_text="Default: from the name")
    team = serializers.SlugField(required=False, allow_null=True, allow_blank=True, help_text="Team slug; empty: none")
    default_provider = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Provider id: required when the organisation has several providers; its only one otherwise",
    )


class ProjectUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    team = serializers.SlugField(
        required=False, allow_null=True, allow_blank=True, help_text="Move to this team (slug); empty: no team"
    )
    default_provider = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Provider id; null: none"
    )


def _new_project_provider(organization: Organization, provider_id: int | None) -> Provider | None:
    """The new project's default provider, by the new-project form's rule: the organisation's only provider is
    chosen for it; among several the caller must choose, so a plain model name never falls to whichever provider
    happens to price it first."""
    providers = organization.providers.order_by("pk")
    if provider_id is not None:
        provider = providers.filter(pk=provider_id).first()
        if provider is None:
            raise ValidationError({"default_provider": "No such provider in this organisation."})
        return provider
    candidates = list(providers[:2])
    if len(candidates) > 1:
        raise ValidationError(
            {"default_provider": "This organisation has several providers: choose the project's default (its id)."}
        )
    return candidates[0] if candidates else None


class ProjectList(generics.ListAPIView):
    """The projects the caller sees; ``POST`` creates one (owners anywhere, team leads in their team)."""

    serializer_class = ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for(user=self.request.user)

    @extend_schema(request=ProjectCreateSerializer, responses={201: ProjectSerializer})
    def post(self, request: Request) -> Response:
        if not can_anywhere(request.user, Action.PROJECT_CREATE):
            raise PermissionDenied("Your role does not allow project.create.")
        payload = ProjectCreateSerializer(data=request.data, context=self.get_serializer_context())
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        organization = data["organization"]
        team = team_in(organization, data.get("team"))
        # A project without a team is organisation-wide: only who may create there may leave it out.
        require(request.user, Action.PROJECT_CREATE, team or organization)
        provider = _new_project_provider(organization, data.get("default_provider"))
        with transaction.atomic():
            project = project_create(organization=organization, name=data["name"], slug=data.get("slug", ""), team=team)
            if provider is not None:
                project_set_default_provider(project=project, provider=provider)
        return Response(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectDetail(generics.RetrieveAPIView):
    serializer_class = ProjectSerializer
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Project]:
        return projects_for(user=self.request.user)

    @extend_schema(request=ProjectUpdateSerializer, responses=ProjectSerializer)
    def patch(self, request: Request, slug: str) -> Response:
        """Rename, set the default provider, or move to another team (where the caller may create projects)."""
        project = self.get_object()
        require(request.user, Action.PROJECT_MANAGE, project)
        payload = ProjectUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        with transaction.atomic():
            if "name" in data or "team" in data:
                team = team_in(project.organization, data["team"]) if "team" in data else project.team
                if team != project.team:
                    require(request.user, Action.PROJECT_CREATE, team or project.organization)
                project_update(project=project, name=data.get("name", project.name), team=team)
            if "default_provider" in data:
                provider = None
                if data["default_provider"] is not None:
                    provider = project.organization.providers.filter(pk=data["default_provider"]).first()
                    if provider is None:
                        raise ValidationError({"default_provider": "No such provider in this organisation."})
                project_set_default_provider(project=project, provider=provider)
        return Response(ProjectSerializer(project).data)
