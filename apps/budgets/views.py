"""Budget, alert and limit pages. Objects the user may not see are 404s; writes follow the role matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.budgets import services
from apps.budgets.forms import (
    AlertFilterForm,
    BudgetEditForm,
    BudgetForm,
    ChannelEditForm,
    ChannelForm,
    RateLimitForm,
    RateLimitValuesForm,
)
from apps.budgets.models import Budget, NotificationChannel, RateLimit
from apps.budgets.selectors import alerts_visible, budget_statuses, budgets_visible, channels_visible
from apps.tenancy.auth import signed_in_user
from apps.tenancy.permissions import Action, can, can_anywhere, require, shown
from apps.tenancy.selectors import projects_for
from costcontrol.forms import add_service_errors

# The budgets page holds three forms with fields of the same names: each gets its own element ids.
LIMIT_IDS, CHANNEL_IDS = "limit_%s", "channel_%s"


def _page(request: HttpRequest, *, budget_form: BudgetForm | None = None, limit_form: RateLimitForm | None = None,
          channel_form: ChannelForm | None = None, status: int = 200) -> HttpResponse:  # fmt: skip
    user = signed_in_user(request)
    budgets = list(budgets_visible(user=user).order_by("organization__name", "name"))
    channels = channels_visible(user=user).order_by("name")
    limits = list(
        RateLimit.objects.filter(project__in=projects_for(user=user))
        .select_related("project", "api_key")
        .order_by("project__name")
    )
    context = {
        "statuses": budget_statuses(budgets=budgets),
        "limits": limits,
        "limits_managed": {limit.pk for limit in limits if can(user, Action.PROJECT_MANAGE, limit)},
        "channels": [
            {"channel": c, "target": shown(user, c.target, c), "may_manage": can(user, Action.ORG_MANAGE, c)}
            for c in channels
        ],
        "alerts": alerts_visible(user=user).select_related("project").order_by("-created_at")[:10],
        "budget_form": budget_form or (BudgetForm(user=user) if can_anywhere(user, Action.BUDGET_MANAGE) else None),
        "limit_form": limit_form
        or (RateLimitForm(user=user, auto_id=LIMIT_IDS) if can_anywhere(user, Action.PROJECT_MANAGE) else None),
        "channel_form": channel_form
        or (ChannelForm(user=user, auto_id=CHANNEL_IDS) if can_anywhere(user, Action.ORG_MANAGE) else None),
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
@require_http_methods(["GET", "POST"])
def budget_new(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":  # the form's URL reloaded after an error: back to the page that has the form
        return redirect("budgets:list")
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
@require_http_methods(["GET", "POST"])
def budget_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a budget's slice, amount, period, mode or thresholds; the service audits the change."""
    budget = get_object_or_404(budgets_visible(user=request.user), pk=pk)
    require(request.user, Action.BUDGET_MANAGE, budget)
    user = signed_in_user(request)
    if request.method == "GET":
        form = BudgetEditForm(user=user, instance=budget)
        return render(request, "budgets/budget_edit.html", {"budget": budget, "form": form})
    original = Budget.objects.get(pk=budget.pk)  # the form writes its values onto the instance it was given
    form = BudgetEditForm(request.POST, user=user, instance=budget)
    if form.is_valid():
        changes = {name: form.cleaned_data[name] for name in BudgetEditForm.Meta.fields}
        # The budget as it would be must be the user's to manage too (a lead cannot widen it to the org).
        require(request.user, Action.BUDGET_MANAGE, Budget(organization=original.organization, **changes))
        try:
            services.budget_update(budget=original, **changes)
        except DjangoValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Budget '{original.name}' saved; gateways enforce the change within a second.")
            return redirect("budgets:detail", pk=original.pk)
    return render(request, "budgets/budget_edit.html", {"budget": original, "form": form}, status=400)


@login_required
@require_POST
def budget_delete(request: HttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(budgets_visible(user=request.user), pk=pk)
    require(request.user, Action.BUDGET_MANAGE, budget)
    name = budget.name
    services.budget_delete(budget=budget)
    messages.success(request, f"Budget '{name}' deleted; gateways stop enforcing it within a second.")
    return redirect("budgets:list")


@login_required
@require_POST
def budget_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(budgets_visible(user=request.user), pk=pk)
    require(request.user, Action.BUDGET_MANAGE, budget)
    services.budget_update(budget=budget, is_active=not budget.is_active)
    messages.success(request, f"Budget '{budget.name}' {'enabled' if budget.is_active else 'paused'}.")
    return redirect("budgets:detail", pk=budget.pk)


@login_required
@require_http_methods(["GET", "POST"])
def rate_limit_new(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":  # the form's URL reloaded after an error: back to the page that has the form
        return redirect("budgets:list")
    _require_somewhere(request, Action.PROJECT_MANAGE)
    form = RateLimitForm(request.POST, user=signed_in_user(request), auto_id=LIMIT_IDS)
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
@require_http_methods(["GET", "POST"])
def channel_new(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":  # the form's URL reloaded after an error: back to the page that has the form
        return redirect("budgets:list")
    _require_somewhere(request, Action.ORG_MANAGE)
    form = ChannelForm(request.POST, user=signed_in_user(request), auto_id=CHANNEL_IDS)
    if not form.is_valid():
        return _page(request, channel_form=form, status=400)
    try:
        services.channel_create(**form.cleaned_data)
    except DjangoValidationError as exc:
        add_service_errors(form, exc)
        return _page(request, channel_form=form, status=400)
    messages.success(request, "Channel added; new alerts are delivered to it.")
    return redirect("budgets:list")


def _edit_page(
    request: HttpRequest, form: Any, template: str, context: dict[str, Any], save: Callable[[], str]
) -> HttpResponse:
    """GET: the form. POST: ``save()`` (the service call; it returns the success message) and back to the
    budgets page, or the form again with its errors (the service's too) and a 400."""
    if request.method == "POST":
        if form.is_valid():
            try:
                done = save()
            except DjangoValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, done)
                return redirect("budgets:list")
        return render(request, template, {**context, "form": form}, status=400)
    return render(request, template, {**context, "form": form})


def _limit_of(request: HttpRequest, pk: int) -> RateLimit:
    """A rate limit of a project the user sees (else 404) and may manage (else 403)."""
    limit = get_object_or_404(
        RateLimit.objects.filter(project__in=projects_for(user=request.user)).select_related("project", "api_key"),
        pk=pk,
    )
    require(request.user, Action.PROJECT_MANAGE, limit)
    return limit


@login_required
@require_http_methods(["GET", "POST"])
def rate_limit_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a rate limit's numbers (its project and key are what it is: delete it and set another)."""
    limit = _limit_of(request, pk)
    form = RateLimitValuesForm(request.POST or None, instance=limit)

    def save() -> str:
        services.rate_limit_set(project=limit.project, api_key=limit.api_key, **form.cleaned_data)
        return "Rate limit saved; gateways enforce it within a second."

    return _edit_page(request, form, "budgets/limit_edit.html", {"limit": limit}, save)


@login_required
@require_POST
def rate_limit_delete(request: HttpRequest, pk: int) -> HttpResponse:
    limit = _limit_of(request, pk)
    services.rate_limit_delete(limit=limit)
    messages.success(request, f"Rate limit for {limit.api_key or limit.project.slug} deleted.")
    return redirect("budgets:list")


def _channel_of(request: HttpRequest, pk: int) -> NotificationChannel:
    channel = get_object_or_404(channels_visible(user=request.user), pk=pk)
    require(request.user, Action.ORG_MANAGE, channel)
    return channel


@login_required
@require_http_methods(["GET", "POST"])
def channel_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename, re-target, re-key or pause a channel; a blank secret keeps the stored one."""
    channel = _channel_of(request, pk)
    user = signed_in_user(request)
    initial = {"name": channel.name, "target": shown(user, channel.target, channel), "is_active": channel.is_active}
    form = ChannelEditForm(request.POST or None, initial=initial, kind=channel.kind)

    def save() -> str:
        data = form.cleaned_data
        services.channel_update(channel=channel, name=data["name"], target=data["target"],
                                secret=data["secret"] or None, is_active=data["is_active"])  # fmt: skip
        return f"Channel '{channel.name}' saved."

    return _edit_page(request, form, "budgets/channel_edit.html", {"channel": channel}, save)


@login_required
@require_POST
def channel_delete(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _channel_of(request, pk)
    name = channel.name
    services.channel_delete(channel=channel)
    messages.success(request, f"Channel '{name}' deleted; new alerts are no longer sent to it.")
    return redirect("budgets:list")


@login_required
@require_GET
def alerts(request: HttpRequest) -> HttpResponse:
    """The alert feed, newest first, narrowed by kind and by whether someone acknowledged it."""
    form = AlertFilterForm(request.GET or None)
    rows = alerts_visible(user=request.user)
    if form.is_valid():
        if form.cleaned_data["kind"]:
            rows = rows.filter(kind=form.cleaned_data["kind"])
        if form.cleaned_data["state"] == "open":
            rows = rows.filter(acknowledged_at__isnull=True)
        elif form.cleaned_data["state"] == "acknowledged":
            rows = rows.filter(acknowledged_at__isnull=False)
    rows = (
        rows.select_related("project", "budget", "acknowledged_by")
        .prefetch_related("deliveries__channel")
        .order_by("-created_at")[:200]
    )
    user = signed_in_user(request)
    may_ack = {alert.pk for alert in rows if can(user, Action.BUDGET_MANAGE, alert)}
    read_only = any(alert.acknowledged_at is None and alert.pk not in may_ack for alert in rows)
    context = {"alerts": rows, "form": form, "may_ack": may_ack, "read_only": read_only}
    return render(request, "budgets/alerts.html", context)


@login_required
@require_POST
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(alerts_visible(user=request.user), pk=pk)
    require(request.user, Action.BUDGET_MANAGE, alert)
    services.alert_acknowledge(alert=alert, user=signed_in_user(request))
    messages.success(request, f"Acknowledged: {alert.title}")
    return redirect("budgets:alerts")
