"""Routing pages per project: the ordered rules with what each did, one rule's form and shadow report."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from apps.routing.forms import RuleForm, target_rows
from apps.routing.models import RoutingRule
from apps.routing.overlap import SHADOWED, rule_overlaps
from apps.routing.selectors import rule_stats, rules_for_project, shadow_samples, shadow_summary_by_day, stats_window
from apps.routing.services import rule_delete, rule_move, rule_save
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, can, require
from apps.tenancy.selectors import projects_for
from costcontrol.forms import add_service_errors


def _project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(projects_for(user=request.user), slug=slug)


def _managed_rule(request: HttpRequest, slug: str, pk: int) -> RoutingRule:
    """A rule of a project the user sees (else 404) and may change (else 403)."""
    project = _project(request, slug)
    require(request.user, Action.PROJECT_MANAGE, project)
    return get_object_or_404(RoutingRule, project=project, pk=pk)


def _warn_overlaps(request: HttpRequest, project: Project, rule: RoutingRule) -> None:
    """Tell the person who saved ``rule`` at once when an earlier rule takes its traffic."""
    for overlap in rule_overlaps(list(rules_for_project(project=project))).get(rule.pk, []):
        level = messages.WARNING if overlap.kind == SHADOWED else messages.INFO
        messages.add_message(request, level, f"Rule “{rule.name}”: {overlap.message}")


def _save(request: HttpRequest, project: Project, form: RuleForm, rule: RoutingRule | None) -> RoutingRule | None:
    """Save a valid form through the service; errors the service finds land on the form."""
    if not form.is_valid():
        return None
    try:
        return rule_save(
            project=project,
            rule=rule,
            fields=form.rule_fields(),
            primaries=form.targets["primaries"],
            fallbacks=form.targets["fallbacks"],
            shadow=form.targets["shadow"],
        )
    except DjangoValidationError as exc:
        add_service_errors(form, exc)
        return None


@login_required
@require_http_methods(["GET", "POST"])
def rules_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    may_manage = can(request.user, Action.PROJECT_MANAGE, project)
    form = RuleForm(project=project) if may_manage else None
    status = 200
    if request.method == "POST":
        require(request.user, Action.PROJECT_MANAGE, project)
        form = RuleForm(request.POST, project=project)
        rule = _save(request, project, form, None)
        if rule is not None:
            messages.success(request, f"Rule “{rule.name}” added (id {rule.pk}); gateways use it within a second.")
            _warn_overlaps(request, project, rule)
            return redirect("routing:rules", slug=project.slug)
        status = 400
    rules = list(rules_for_project(project=project))
    stats = rule_stats(project=project, since=stats_window())
    overlaps = rule_overlaps(rules)
    rows = [
        {"rule": r, "targets": target_rows(r), "stats": stats.get(r.id), "overlaps": overlaps.get(r.id, [])}
        for r in rules
    ]
    context = {"project": project, "rows": rows, "form": form, "may_manage": may_manage}
    return render(request, "routing/rules.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def rule_page(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _project(request, slug)
    rule = get_object_or_404(rules_for_project(project=project), pk=pk)
    may_manage = can(request.user, Action.PROJECT_MANAGE, project)
    form = RuleForm(instance=rule, project=project) if may_manage else None
    status = 200
    if request.method == "POST":
        require(request.user, Action.PROJECT_MANAGE, project)
        form = RuleForm(request.POST, instance=rule, project=project)
        if _save(request, project, form, rule) is not None:
            messages.success(request, "Rule saved; gateways use it within a second.")
            _warn_overlaps(request, project, rule)
            return redirect("routing:rule", slug=project.slug, pk=rule.pk)
        status = 400
    since = stats_window()
    context = {
        "project": project,
        "rule": rule,
        "targets": target_rows(rule),
        "stats": rule_stats(project=project, since=since).get(rule.id),
        "shadow_days": shadow_summary_by_day(rule=rule, since=since),
        "disagreements": shadow_samples(rule=rule),
        "form": form,
        "may_manage": may_manage,
    }
    return render(request, "routing/rule.html", context, status=status)


@login_required
@require_POST
def rule_move_view(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    rule = _managed_rule(request, slug, pk)
    rule_move(rule=rule, offset=-1 if request.POST.get("direction") == "up" else 1)
    _warn_overlaps(request, rule.project, rule)
    return redirect("routing:rules", slug=slug)


@login_required
@require_POST
def rule_delete_view(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    rule = _managed_rule(request, slug, pk)
    rule_delete(rule=rule)
    messages.success(request, f"Rule “{rule.name}” deleted.")
    return redirect("routing:rules", slug=slug)
