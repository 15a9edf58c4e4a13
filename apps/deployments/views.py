"""Deployment pages (list, create, start/stop, runs) and the break-even page, per project.

Deployments belong to the project's organisation: anyone who sees the project reads them;
they are organisation-wide objects, so only owners create, start and stop them (others get a 403,
outsiders a 404).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.deployments import conf, vllm
from apps.deployments.breakeven import BreakEven, break_even
from apps.deployments.forms import DEPLOYMENT_FIELDS, BreakEvenForm, DeploymentForm
from apps.deployments.models import Deployment
from apps.deployments.selectors import deployment_runs, deployments_for, model_usage
from apps.deployments.services import (
    DeploymentStateError,
    deployment_create,
    deployment_request_start,
    deployment_request_stop,
    price_per_mtok,
)
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, can, require
from apps.tenancy.selectors import projects_for


def _project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(projects_for(user=request.user), slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def deployments_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    may_manage = can(request.user, Action.ORG_MANAGE, project.organization)
    form = DeploymentForm() if may_manage else None
    status = 200
    if request.method == "POST":
        require(request.user, Action.ORG_MANAGE, project.organization)
        form = DeploymentForm(request.POST)
        if form.is_valid():
            try:
                deployment = deployment_create(
                    organization=project.organization, **{f: form.cleaned_data[f] for f in DEPLOYMENT_FIELDS}
                )
            except DjangoValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, f"Deployment “{deployment.name}” registered; start it when you need it.")
                return redirect("deployments:list", slug=project.slug)
        status = 400
    context = {
        "project": project,
        "deployments": list(deployments_for(organization=project.organization)),
        "form": form,
        "may_manage": may_manage,
    }
    return render(request, "deployments/deployments.html", context, status=status)


def _deployment(project: Project, pk: int) -> Deployment:
    return get_object_or_404(Deployment.objects.select_related("provider"), organization=project.organization, pk=pk)


@login_required
@require_GET
def deployment_page(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _project(request, slug)
    deployment = _deployment(project, pk)
    command = vllm.serve_command(deployment=deployment, executable=["vllm"], host=conf.vllm_bind_host())
    context = {
        "project": project,
        "deployment": deployment,
        "runs": deployment_runs(deployment=deployment),
        "command": " ".join(command),
        "price_per_mtok": price_per_mtok(
            hourly_cost_usd=deployment.hourly_cost_usd, throughput_tokens_per_s=deployment.throughput_tokens_per_s
        ),
        "may_manage": can(request.user, Action.ORG_MANAGE, deployment),
    }
    return render(request, "deployments/deployment.html", context)


_ACTIONS = {
    "start": (deployment_request_start, "Starting {name}: a GPU worker launches it and waits for /health."),
    "stop": (deployment_request_stop, "Stopping {name}; its run's GPU-hours and cost are recorded."),
}


@login_required
@require_POST
def deployment_action_view(request: HttpRequest, slug: str, pk: int, action: str) -> HttpResponse:
    """Start or stop: the row changes at once, a gpu worker does the rest."""
    project = _project(request, slug)
    deployment = _deployment(project, pk)
    require(request.user, Action.ORG_MANAGE, deployment)
    service, done = _ACTIONS[action]
    try:
        service(deployment=deployment)
    except DeploymentStateError as exc:
        messages.error(request, f"Cannot {action}: {exc}.")
    else:
        messages.success(request, done.format(name=deployment.name))
    return redirect("deployments:detail", slug=project.slug, pk=deployment.pk)


def break_even_for(
    *, project: Project, params: QueryDict, blank_first_visit: bool = False
) -> tuple[BreakEvenForm, BreakEven | None, dict[str, Any]]:
    """The assumptions form, the comparison when the assumptions are complete, and the window's usage.

    ``blank_first_visit`` (the page): no parameters and no measured deployment give an empty form
    instead of one in error; the API still answers which assumptions are missing.
    """
    deployments = deployments_for(organization=project.organization)
    data: Any = params
    if not params:  # a first visit compares with the organisation's first deployment that has a throughput
        measured = deployments.filter(throughput_tokens_per_s__isnull=False).first()
        if measured is not None:
            data = {"deployment": str(measured.pk)}
        elif blank_first_visit:
            data = None
    form = BreakEvenForm(data, deployments=deployments)
    valid = form.is_valid()  # an unbound form is not valid and has no cleaned_data
    days = (form.cleaned_data.get("days") if form.is_bound else None) or 30
    until = timezone.now().replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    since = until - dt.timedelta(days=days)
    usage = model_usage(project=project, since=since, until=until)
    result = break_even(usage=usage, assumptions=form.assumptions()) if valid else None
    return form, result, {"since": since, "until": until, "days": days, "usage": usage}


@login_required
@require_GET
def break_even_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    form, result, window = break_even_for(project=project, params=request.GET, blank_first_visit=True)
    context = {"project": project, "form": form, "result": result, **window}
    return render(request, "deployments/break_even.html", context)
