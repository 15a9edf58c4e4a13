"""DRF API for trials: apply a recommendation (start its shadow trial, or enable it), list trials, stop one.

``POST /api/projects/<slug>/opportunities/<id>/apply`` with ``{"mode": "shadow"|"enable", "quality_target": 0.99,
"daily_cap_usd": 5, "min_samples": 30}``. ``enable`` is refused (400, with the measured numbers) until the
trial clears its target. ``GET /api/projects/<slug>/trials/`` lists trials with what each measured;
``POST /api/projects/<slug>/trials/<pk>/stop`` stops one.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.opportunities.api import MAX_DAYS
from apps.opportunities.models import Trial, TrialState
from apps.opportunities.selectors import Opportunity, project_opportunities
from apps.opportunities.services import TrialNotReady, trial_enable, trial_start, trial_stop
from apps.opportunities.trial_selectors import Measured, trial_measured
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, require
from apps.tenancy.selectors import projects_for

# What ``selectors._id`` makes: the lever, then 16 hex digits. Anything else names no recommendation.
RECOMMENDATION_ID = re.compile(r"[a-z_]{1,30}-[0-9a-f]{16}")


class ApplySerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=["shadow", "enable"])
    quality_target = serializers.DecimalField(
        max_digits=5, decimal_places=4, min_value=Decimal("0.5"), max_value=Decimal("1"), default=Decimal("0.99")
    )
    daily_cap_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=Decimal("0"), allow_null=True, default=None
    )
    min_samples = serializers.IntegerField(min_value=5, max_value=100_000, default=30)
    days = serializers.IntegerField(min_value=1, max_value=MAX_DAYS, default=7, help_text="The report's window")


def trial_json(trial: Trial, measured: Measured) -> dict[str, Any]:
    return {
        "id": trial.pk,
        "recommendation_id": trial.recommendation_id,
        "lever": trial.lever,
        "feature": trial.feature,
        "parameters": trial.parameters,
        "state": trial.state,
        "quality_target": str(trial.quality_target),
        "min_samples": trial.min_samples,
        "daily_cap_usd": None if trial.daily_cap_usd is None else str(trial.daily_cap_usd),
        "predicted_savings_usd": str(trial.predicted_savings_usd),
        "predicted_window_days": trial.predicted_window_days,
        "stopped_reason": trial.stopped_reason,
        "created_at": trial.created_at.isoformat(),
        "enabled_at": trial.enabled_at.isoformat() if trial.enabled_at else None,
        "measured": measured.as_json(),
    }


def _project(request: Request, slug: str) -> Project:
    project = generics.get_object_or_404(projects_for(user=request.user), slug=slug)
    require(request.user, Action.OPPORTUNITY_VIEW, project)
    return project


def _find(project: Project, opportunity_id: str, days: int) -> Opportunity:
    for item in project_opportunities(project=project, days=days).opportunities:
        if item.id == opportunity_id:
            return item
    raise NotFound("No such recommendation in this project's report for that window.")


def apply_recommendation(*, project: Project, opportunity_id: str, data: dict[str, Any]) -> tuple[Trial, bool]:
    """What the API and the page's button share: start (or update) the trial, or enable it. Returns the
    trial and whether it is new; raises NotFound, DjangoValidationError or TrialNotReady."""
    if not RECOMMENDATION_ID.fullmatch(opportunity_id):
        raise NotFound("No such recommendation.")
    live = Trial.objects.filter(project=project, recommendation_id=opportunity_id).exclude(state=TrialState.STOPPED)
    trial = live.first()
    if data["mode"] == "enable":
        if trial is None:
            raise DjangoValidationError("Start this recommendation's trial in shadow first.")
        return trial_enable(trial=trial), False
    opportunity = _find(project, opportunity_id, data["days"])
    started = trial_start(
        project=project, opportunity=opportunity, quality_target=data["quality_target"],
        daily_cap_usd=data["daily_cap_usd"], min_samples=data["min_samples"], window_days=data["days"],
    )  # fmt: skip
    return started, trial is None


class OpportunityApply(APIView):
    @extend_schema(request=ApplySerializer, responses={200: dict, 201: dict})
    def post(self, request: Request, slug: str, opportunity_id: str) -> Response:
        project = _project(request, slug)
        require(request.user, Action.OPPORTUNITY_APPLY, project)
        body = ApplySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            trial, created = apply_recommendation(
                project=project, opportunity_id=opportunity_id, data=body.validated_data
            )
        except TrialNotReady as exc:
            # The API's error shape, with what the trial measured beside it.
            message = "The trial has not cleared its quality target yet; see trial.measured."
            return Response(
                {
                    "error": {"type": "trial_not_ready", "message": message, "fields": {}},
                    "trial": trial_json(exc.trial, exc.measured),
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(
            trial_json(trial, trial_measured(trial=trial)), status=status.HTTP_201_CREATED if created else 200
        )


class TrialList(APIView):
    @extend_schema(responses=dict)
    def get(self, request: Request, slug: str) -> Response:
        project = _project(request, slug)
        trials = Trial.objects.filter(project=project)
        return Response({"project": project.slug, "trials": [trial_json(t, trial_measured(trial=t)) for t in trials]})


class TrialStop(APIView):
    @extend_schema(request=None, responses=dict)
    def post(self, request: Request, slug: str, pk: int) -> Response:
        project = _project(request, slug)
        trial = generics.get_object_or_404(Trial.objects.filter(project=project), pk=pk)
        require(request.user, Action.OPPORTUNITY_APPLY, project)
        trial = trial_stop(trial=trial)
        return Response(trial_json(trial, trial_measured(trial=trial)))
