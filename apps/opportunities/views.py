"""The opportunities page: what each lever would have saved on the project's ledger, per feature, and the
trials started from it (apply in shadow, enable once the target is cleared, stop)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from rest_framework.exceptions import NotFound

from apps.opportunities.api import MAX_DAYS
from apps.opportunities.models import Trial
from apps.opportunities.selectors import project_opportunities
from apps.opportunities.services import TrialNotReady, trial_stop
from apps.opportunities.trial_api import ApplySerializer, apply_recommendation
from apps.opportunities.trial_selectors import project_trials
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, can, require
from apps.tenancy.selectors import projects_for

DAY_CHOICES = (1, 7, 30, MAX_DAYS)


@login_required
@require_GET
def opportunities_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(projects_for(user=request.user), slug=slug)
    require(request.user, Action.OPPORTUNITY_VIEW, project)
    # A window the page does not offer (garbage included) is the default week, not an error page.
    days = int(request.GET["days"]) if request.GET.get("days", "") in {str(d) for d in DAY_CHOICES} else 7
    report = project_opportunities(project=project, days=days)
    trials = project_trials(project=project)
    context = {
        "project": project, "report": report, "days": days, "day_choices": DAY_CHOICES, "trials": trials,
        "may_apply": can(request.user, Action.OPPORTUNITY_APPLY, project),
        "trialled": {t.recommendation_id for t, _m in trials if t.state != "stopped"},
    }  # fmt: skip
    return render(request, "opportunities/opportunities.html", context)


def _managed(request: HttpRequest, slug: str) -> Project:
    project = get_object_or_404(projects_for(user=request.user), slug=slug)
    require(request.user, Action.OPPORTUNITY_APPLY, project)
    return project


@login_required
@require_POST
def opportunity_apply(request: HttpRequest, slug: str, opportunity_id: str) -> HttpResponse:
    project = _managed(request, slug)
    form = ApplySerializer(data={k: v for k, v in request.POST.items() if v != "" and k != "csrfmiddlewaretoken"})
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items()))
    else:
        try:
            trial, _new = apply_recommendation(project=project, opportunity_id=opportunity_id, data=form.validated_data)
        except NotFound:
            raise Http404("No such recommendation") from None
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        except TrialNotReady as exc:
            m = exc.measured
            agreement = "—" if m.agreement is None else f"{m.agreement:.1%}"
            messages.error(request, f"Not enabled: {m.samples} comparisons, agreement {agreement}, "
                           f"target {exc.trial.quality_target:.2%} on at least {exc.trial.min_samples}.")  # fmt: skip
        else:
            messages.success(request, f"Trial {trial.pk}: {trial.get_state_display()}.")
    return HttpResponseRedirect(reverse("opportunities:project", kwargs={"slug": project.slug}))


@login_required
@require_POST
def trial_stop_view(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _managed(request, slug)
    trial = trial_stop(trial=get_object_or_404(Trial.objects.filter(project=project), pk=pk))
    messages.success(request, f"Trial {trial.pk}: {trial.get_state_display()}.")
    return HttpResponseRedirect(reverse("opportunities:project", kwargs={"slug": project.slug}))
