"""The pruning page: turn each feature's output cap and history window on or off, beside what use suggests.

Everyone who sees the project sees the page; saving needs ``prune.manage`` (owners, and leads of the
project's team). The form posts one feature at a time; the policy is saved through the routing app's
service, and gateways apply it within a second.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from apps.core.events import FEATURE_MAX
from apps.core.request import MAX_TOKENS_BOUND
from apps.opportunities.selectors import pruning_suggestions
from apps.routing.models import HISTORY_TURNS_MAX, HISTORY_TURNS_MIN, PrunePolicy
from apps.routing.services import prune_policy_save
from apps.tenancy.permissions import Action, can, require
from apps.tenancy.selectors import projects_for
from costcontrol.forms import add_service_errors


class PrunePolicyForm(forms.Form):
    feature = forms.CharField(max_length=FEATURE_MAX, required=False, label="Feature (empty: the whole project)")
    cap_enabled = forms.BooleanField(required=False, label="Cap max_tokens")
    max_tokens_cap = forms.IntegerField(min_value=1, max_value=MAX_TOKENS_BOUND, label="Output cap (tokens)")
    history_enabled = forms.BooleanField(required=False, label="Keep only the latest turns")
    history_turns = forms.IntegerField(
        min_value=HISTORY_TURNS_MIN, max_value=HISTORY_TURNS_MAX, label="Turns kept after the system prompt"
    )


@login_required
@require_http_methods(["GET", "POST"])
def pruning_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(projects_for(user=request.user), slug=slug)
    require(request.user, Action.OPPORTUNITY_VIEW, project)
    form = PrunePolicyForm()
    if request.method == "POST":
        require(request.user, Action.PRUNE_MANAGE, project)
        form = PrunePolicyForm(request.POST)
        if form.is_valid():
            changes = dict(form.cleaned_data)
            feature = changes.pop("feature")
            try:
                prune_policy_save(project=project, feature=feature, changes=changes)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Pruning for “{feature or 'the whole project'}” saved.")
                return redirect("opportunities:pruning", slug=project.slug)
    policies = {p.feature: p for p in PrunePolicy.objects.filter(project=project).order_by("feature")}
    suggestions = {s["feature"]: s for s in pruning_suggestions(project=project)}
    rows = [
        {"feature": feature, "policy": policies.get(feature), "suggestion": suggestions.get(feature)}
        for feature in sorted(policies.keys() | suggestions.keys())
    ]
    context = {
        "project": project,
        "rows": rows,
        "form": form,
        "can_manage": can(request.user, Action.PRUNE_MANAGE, project),
    }
    return render(request, "opportunities/pruning.html", context, status=400 if form.errors else 200)
