"""Budget, alert and limit pages. Objects the user may not see are 404s; writes follow the role matrix."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.budgets import services
from apps.budgets.forms import BudgetForm, ChannelForm, RateLimitForm
from apps.budgets.models import Budget, RateLimit
from apps.budgets.selectors import alerts_visible, budget_statuses, budgets_visible, channels_visible
from apps.tenancy.auth import signed_in_user
from apps.tenancy.permissions import Action, can, can_anywhere, require, shown
from apps.tenancy.selectors import projects_for
from costcontrol.forms import add_service_errors


def _page(request: HttpRequest, *, budget_form: BudgetForm | None = None, limit_form: RateLimitForm | None = None,
          channel_form: ChannelForm | None = None, status: int = 200) -> HttpResponse:  # fmt: skip
    user = signed_in_user(request)
    budgets = list(budgets_visible(user=user).order_by("organization__name", "name"))
    channels = channels_visible(user=user).order_by("name")
    context = {
        "statuses": budget_statuses(budgets=budgets),
        "limits": RateLimit.objects.filter(project__in=projects_for(user=user))
        .select_related("project", "api_key")
        .order_by("project__name"),
        "channels": [{"channel": c, "target": shown(user, c.target, c)} for c in channels],
        "alerts": alerts_visible(user=user).select_related("project").order_by("-created_at")[:10],
        "budget_form": budget_form or (BudgetForm(user=user) if can_anywhere(user, Action.BUDGET_MANAGE) else None),
        "limit_form": limit_form or (RateLimitForm(user=user) if can_anywhere(user, Action.PROJECT_MANAGE) else None),
        "channel_form": channel_form or (ChannelForm(user=user) if can_anywhere(user, Action.ORG_MANAGE) else None),
    }
    return render(request, "budgets/budgets.html", context, status=status)


@login_required
@require_GET
def budgets(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _require_somewhere(request: HttpRequest, action: Action) -> None:
    """403 at once for a role that may do ``action`` nowhere (the form would have no choices anyway)."""
    if not can_anywhere(request.user, action):
        raise PermissionDenied(f"Your role does not allow {action.value}.")


@login_required
@require_POST
def budget_new(request: HttpRequest) -> HttpResponse:
    _require_somewhere(request, Action.BUDGET_MANAGE)
    form = BudgetForm(request.POST, user=signed_in_user(request))
    if not form.is_valid():
        return _page(request, budget_form=form, status=400)
    data = dict(form.cleaned_data)
    # Organisation and team budgets are the owner's even where the project choices are a lead's.
    require(request.user, Action.BUDGET_MANAGE, Budget(**data))
    try:
        budget = services.budget_create(timezone_name=data.pop("timezone"), **data)
    except DjangoValidationError as exc:
        add_service_errors(form, exc)
        return _page(request, budget_form=form, status=400)
    messages.success(request, f"Budget '{budget.name}' created; gateways enforce it within a second.")
    return redirect("budgets:detail", pk=budget.pk)


@login_required
@require_GET
def budget_detail(request: HttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(budgets_visible(user=request.user), pk=pk)
    [status] = budget_statuses(budgets=[budget])
    return render(
        request,
        "budgets/budget_detail.html",
        {
            "status": status,
            "budget": budget,
            "history": budget.periods.order_by("-period_start")[:24],
            "alerts": budget.alerts.order_by("-created_at")[:20],
            "can_edit": can(request.user, Action.BUDGET_MANAGE, budget),
        },
    )


@login_required
@require_POST
def budget_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(budgets_visible(user=request.user), pk=pk)
    require(request.user, Action.BUDGET_MANAGE, budget)
    services.budget_update(budget=budget, is_active=not budget.is_active)
    messages.success(request, f"Budget '{budget.name}' {'enabled' if budget.is_active else 'paused'}.")
    return redirect("budgets:detail", pk=budget.pk)


@login_required
@require_POST
def rate_limit_new(request: HttpRequest) -> HttpResponse:
    _require_somewhere(request, Action.PROJECT_MANAGE)
    form = RateLimitForm(request.POST, user=signed_in_user(request))
    if not form.is_valid():
        return _page(request, limit_form=form, status=400)
    try:
        services.rate_limit_set(**form.cleaned_data)
    except DjangoValidationError as exc:
        add_service_errors(form, exc)
        return _page(request, limit_form=form, status=400)
    messages.success(request, "Rate limit saved.")
    return redirect("budgets:list")


@login_required
@require_POST
def channel_new(request: HttpRequest) -> HttpResponse:
    _require_somewhere(request, Action.ORG_MANAGE)
    form = ChannelForm(request.POST, user=signed_in_user(request))
    if not form.is_valid():
        return _page(request, channel_form=form, status=400)
    try:
        services.channel_create(**form.cleaned_data)
    except DjangoValidationError as exc:
        add_service_errors(form, exc)
        return _page(request, channel_form=form, status=400)
    messages.success(request, "Channel added; new alerts are delivered to it.")
    return redirect("budgets:list")


@login_required
@require_GET
def alerts(request: HttpRequest) -> HttpResponse:
    rows = (
        alerts_visible(user=request.user)
        .select_related("project", "budget")
        .prefetch_related("deliveries__channel")
        .order_by("-created_at")[:200]
    )
    return render(request, "budgets/alerts.html", {"alerts": rows})
