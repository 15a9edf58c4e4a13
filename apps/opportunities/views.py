"""The opportunities page: what each lever would have saved on the project's ledger, per feature."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from apps.opportunities.api import MAX_DAYS
from apps.opportunities.selectors import project_opportunities
from apps.tenancy.permissions import Action, require
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
    context = {"project": project, "report": report, "days": days, "day_choices": DAY_CHOICES}
    return render(request, "opportunities/opportunities.html", context)
