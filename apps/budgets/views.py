"""Budget, alert and limit pages. Objects outside the user's organisations are 404s."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.budgets import services
from apps.budgets.forms import BudgetForm, ChannelForm, RateLimitForm, managed_organizations
from apps.budgets.models import Alert, Budget, NotificationChannel, RateLimit
from apps.budgets.selectors import budget_statuses
from apps.tenancy.auth import signed_in_user
from apps.tenancy.models import MANAGER_ROLES
from apps.tenancy.selectors import organizations_for, projects_for
from costcontrol.forms import add_service_errors


def _visible_budgets(request: HttpRequest) -> QuerySet[Budget]:
    return Budget.objects.filter(organization__in=organizations_for(user=request.user)).select_related(
        "organization", "team", "project", "api_key"
    )


def _is_manager(request: HttpRequest) -> bool:
    return managed_organizations(signed_in_user(request)).exists()


def _page(request: HttpRequest, *, budget_form: BudgetForm | None = None, limit_form: RateLimitForm | None = None,
          channel_form: ChannelForm | None = None, status: int = 200) -> HttpResponse:  # fmt: skip
    user = signed_in_user(request)
    budgets = list(_visible_budgets(request).order_by("organization__name", "name"))
    manager = _is_manager(request)
    context = {
        "statuses": budget_statuses(budgets=budgets),
        "limits": RateLimit.objects.filter(project__in=projects_for(user=user))
        .select_related("project", "api_key")
        .order_by("project__name"),
        "channels": NotificationChannel.objects.filter(organization__in=organizations_for(user=user))
        .select_related("organization")
        .order_by("name"),
        "alerts": Alert.objects.filter(organization__in=organizations_for(user=user))
        .select_related("project")
        .order_by("-created_at")[:10],
        "manager": manager,
        "budget_form": budget_form or (BudgetForm(user=user) if manager else None),
        "limit_form": limit_form or (RateLimitForm(user=user) if manager else None),
        "channel_form": channel_form or (ChannelForm(user=user) if manager else None),
    }
    return render(request, "budgets/budgets.html", context, status=status)


@login_required
@require_GET
def budgets(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _require_manager(request: HttpRequest) -> None:
    if not _is_manager(request):
        raise PermissionDenied("Only owners and team leads change budgets, limits and channels.")


@login_required
@require_POST
def budget_new(request: HttpRequest) -> HttpResponse:
    _require_manager(request)
    form = BudgetForm(request.POST, user=signed_in_user(request))
    if not form.is_valid():
        return _page(request, budget_form=form, status=400)
    data = dict(form.cleaned_data)
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
    budget = get_object_or_404(_visible_budgets(request), pk=pk)
    [status] = budget_statuses(budgets=[budget])
    can_edit = budget.organization.memberships.filter(user=signed_in_user(request), role__in=MANAGER_ROLES).exists()
    return render(
        request,
        "budgets/budget_detail.html",
        {
            "status": status,
            "budget": budget,
            "history": budget.periods.order_by("-period_start")[:24],
            "alerts": budget.alerts.order_by("-created_at")[:20],
            "can_edit": can_edit,
        },
    )


@login_required
@require_POST
def budget_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    budget = get_object_or_404(_visible_budgets(request), pk=pk)
    if not budget.organization.memberships.filter(user=signed_in_user(request), role__in=MANAGER_ROLES).exists():
        raise PermissionDenied("Only owners and team leads change budgets.")
    budget.is_active = not budget.is_active
    budget.save(update_fields=["is_active"])
    messages.success(request, f"Budget '{budget.name}' {'enabled' if budget.is_active else 'paused'}.")
    return redirect("budgets:detail", pk=budget.pk)


@login_required
@require_POST
def rate_limit_new(request: HttpRequest) -> HttpResponse:
    _require_manager(request)
    form = RateLimitForm(request.POST, user=signed_in_user(request))
    if not form.is_valid():
        return _page(request, limit_form=form, status=400)
    services.rate_limit_set(**form.cleaned_data)
    messages.success(request, "Rate limit saved.")
    return redirect("budgets:list")


@login_required
@require_POST
def channel_new(request: HttpRequest) -> HttpResponse:
    _require_manager(request)
    form = ChannelForm(request.POST, user=signed_in_user(request))
    if not form.is_valid():
        return _page(request, channel_form=form, status=400)
    services.channel_create(**form.cleaned_data)
    messages.success(request, "Channel added; new alerts are delivered to it.")
    return redirect("budgets:list")


@login_required
@require_GET
def alerts(request: HttpRequest) -> HttpResponse:
    rows = (
        Alert.objects.filter(organization__in=organizations_for(user=request.user))
        .select_related("project", "budget")
        .prefetch_related("deliveries__channel")
        .order_by("-created_at")[:200]
    )
    return render(request, "budgets/alerts.html", {"alerts": rows})
