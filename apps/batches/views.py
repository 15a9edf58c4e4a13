"""The batches page per project: every batch with its progress, spend and files."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from apps.batches.models import Batch
from apps.tenancy.selectors import projects_for


@login_required
@require_GET
def batches_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(projects_for(user=request.user), slug=slug)
    batches = list(
        Batch.objects.filter(project=project).select_related("api_key", "provider").order_by("-created_at")[:100]
    )
    for batch in batches:
        batch.percent = 100 * (batch.completed + batch.failed) // batch.total if batch.total else 0  # type: ignore[attr-defined]
    return render(request, "batches/batches.html", {"project": project, "batches": batches})
