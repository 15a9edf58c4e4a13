"""Finance pages: the monthly report, CSV exports (streamed, or written by a worker), usage imports.

Scoping follows the dashboard: an organisation is looked up among the user's,
so outsiders get a 404; inside it every read is narrowed to the projects the
user sees (``projects_for``), so developers get their team's projects and
finance and owners the whole organisation. An import books spend to a
project, so it is a write: owners anywhere in their organisation, team leads
on their team's projects (the role matrix, apps/tenancy/permissions.py);
finance and developers get a 403.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.money import usd
from apps.reports import services
from apps.reports.forms import ExportQueryForm, ReportForm, UsageImportForm, import_organizations
from apps.reports.models import ExportJob, ExportKind, ExportStatus
from apps.reports.selectors import ExportQuery, export_rows, recent_export_jobs, spend_report, visible_projects
from apps.tenancy.auth import signed_in_user
from apps.tenancy.models import Organization
from apps.tenancy.permissions import Action, can_anywhere, require
from apps.tenancy.selectors import organizations_for
from costcontrol.forms import date_presets
from costcontrol.spreadsheet import csv_lines
from costcontrol.streaming import streaming_response

# Above this many ledger rows in the range, the report offers a background export first.
DIRECT_EXPORT_MAX_ROWS = 50_000


def _direct_export_max_rows() -> int:
    return int(getattr(settings, "REPORTS_DIRECT_EXPORT_MAX_ROWS", DIRECT_EXPORT_MAX_ROWS))


def _visible_org(request: HttpRequest, slug: str) -> Organization:
    return get_object_or_404(organizations_for(user=request.user), slug=slug)


# Monthly report -----------------------------------------------------------------------------------


@login_required
@require_GET
def report(request: HttpRequest) -> HttpResponse:
    organizations = list(organizations_for(user=request.user))
    if not organizations:
        return render(request, "reports/report.html", {"form": None})
    data = request.GET.copy()
    data.setdefault("org", organizations[0].slug)
    form = shown = ReportForm(data, organizations=organizations)
    status = 200
    if not form.is_valid():
        if "org" in form.errors:
            raise Http404
        # The errors stay on the form that is shown; the figures are the organisation's current month.
        form, status = ReportForm({"org": data["org"]}, organizations=organizations), 400
        form.is_valid()
    org = next(o for o in organizations if o.slug == form.cleaned_data["org"])
    month = form.cleaned_data["month"]
    since, until = form.date_range()
    projects = visible_projects(user=request.user, organization=org)
    summary = spend_report(organization=org, projects=projects, since=since, until=until)
    last_day = (until - dt.timedelta(days=1)).date()
    query = {"org": org.slug, "since": summary.since.date().isoformat(), "until": summary.until.date().isoformat()}
    exports = [
        _export_link(ExportKind.LEDGER, "Ledger rows", "reports:export-ledger", query),
        _export_link(
            ExportKind.ROLLUPS,
            "Daily spend by project and model",
            "reports:export-rollups",
            {**query, "group_by": "project,model", "bucket": "day"},
        ),
        _export_link(
            ExportKind.ROLLUPS,
            "Monthly spend by project, feature and key",
            "reports:export-rollups",
            {**query, "group_by": "project,feature,key", "bucket": "month"},
        ),
        _export_link(ExportKind.FOCUS, "FOCUS 1.2 cost and usage", "reports:export-focus", query),
    ]
    context = {
        "form": shown,
        "org": org,
        "month": month,
        "custom_range": form.custom_range,
        "first_day": since.date(),
        "last_day": last_day,
        "presets": [
            {
                "label": label,
                "query": urlencode({"org": org.slug, "date_from": a.isoformat(), "date_to": b.isoformat()}),
            }
            for label, (a, b) in date_presets(today=timezone.now().astimezone(dt.UTC).date()).items()
        ],
        "report": summary,
        "exports": exports,
        # Roll-up requests count ledger rows, so this sizes the ledger export without another query.
        "big": summary.totals.requests > _direct_export_max_rows(),
        "jobs": recent_export_jobs(user=request.user, organization=org),
        "may_import": any(o.pk == org.pk for o in import_organizations(request.user)),
    }
    return render(request, "reports/report.html", context, status=status)


# Exports ------------------------------------------------------------------------------------------


class ExportLink(TypedDict):
    """One row of the report's export table: a direct download and the fields of a background job."""

    kind: str
    label: str
    params: dict[str, str]
    href: str


def _export_link(kind: str, label: str, url_name: str, params: dict[str, str]) -> ExportLink:
    return {"kind": kind, "label": label, "params": params, "href": f"{reverse(url_name)}?{urlencode(params)}"}


def _export_query(request: HttpRequest, data: QueryDict) -> tuple[Organization, ExportQuery] | HttpResponse:
    form = ExportQueryForm(data)
    if not form.is_valid():
        if "org" in form.errors:
            raise Http404
        errors = "; ".join(f"{field}: {' '.join(map(str, msgs))}" for field, msgs in form.errors.items())
        return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
    org = _visible_org(request, form.cleaned_data["org"])
    query = form.to_query()
    if query.project:
        get_object_or_404(visible_projects(user=request.user, organization=org, project_slug=query.project))
    return org, query


def _stream(request: HttpRequest, kind: str) -> HttpResponse | StreamingHttpResponse:
    parsed = _export_query(request, request.GET)
    if isinstance(parsed, HttpResponse):
        return parsed
    org, query = parsed
    rows, _sized = export_rows(kind=kind, user=request.user, organization=org, query=query)
    name = query.file_name(kind=kind, organization_slug=org.slug)
    response = streaming_response(request, csv_lines(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@login_required
@require_GET
def export_ledger(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return _stream(request, ExportKind.LEDGER)


@login_required
@require_GET
def export_rollups(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return _stream(request, ExportKind.ROLLUPS)


@login_required
@require_GET
def export_focus(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return _stream(request, ExportKind.FOCUS)


@login_required
@require_POST
def export_job_new(request: HttpRequest) -> HttpResponse:
    kind = request.POST.get("kind", "")
    if kind not in ExportKind.values:
        return HttpResponse("Unknown export kind.", status=400, content_type="text/plain; charset=utf-8")
    parsed = _export_query(request, request.POST)
    if isinstance(parsed, HttpResponse):
        return parsed
    org, query = parsed
    job = services.export_job_create(user=signed_in_user(request), organization=org, kind=kind, query=query)
    return redirect("reports:job", pk=job.pk)


def _own_job(request: HttpRequest, pk: int) -> ExportJob:
    return get_object_or_404(ExportJob.objects.select_related("organization"), pk=pk, requested_by=request.user)


def _job_state(job: ExportJob) -> dict[str, Any]:
    return {
        "status": job.status,
        "rows_written": job.rows_written,
        "rows_total": job.rows_total,
        "percent": job.percent,
        "error": job.error,
        "download_url": reverse("reports:job-download", kwargs={"pk": job.pk})
        if job.status == ExportStatus.DONE
        else None,
    }


@login_required
@require_GET
def export_job(request: HttpRequest, pk: int) -> HttpResponse:
    job = _own_job(request, pk)
    context = {"job": job, "state": _job_state(job), "keep_days": services.export_keep().days}
    return render(request, "reports/export_job.html", context)


@login_required
@require_GET
def export_job_status(request: HttpRequest, pk: int) -> JsonResponse:
    response = JsonResponse(_job_state(_own_job(request, pk)))
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def export_job_download(request: HttpRequest, pk: int) -> FileResponse:
    job = _own_job(request, pk)
    path = services.export_job_path(job) if job.status == ExportStatus.DONE else None
    if path is None or not path.is_file():
        raise Http404
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name, content_type="text/csv")


# Import -------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def usage_import(request: HttpRequest) -> HttpResponse:
    if request.method == "POST" and request.POST.get("organization", "").isdigit():
        org = get_object_or_404(organizations_for(user=request.user), pk=int(request.POST["organization"]))
        if not can_anywhere(request.user, Action.USAGE_IMPORT, org):
            raise PermissionDenied
    elif not import_organizations(request.user).exists():
        raise PermissionDenied
    form = UsageImportForm(request.POST or None, request.FILES or None, user=signed_in_user(request))
    problems: list[services.ImportProblem] = []
    status = 200
    if request.method == "POST" and form.is_valid():
        require(request.user, Action.USAGE_IMPORT, form.cleaned_data["project"])
        upload = form.cleaned_data["file"]
        try:
            result = services.usage_import(
                organization=form.cleaned_data["organization"],
                project=form.cleaned_data["project"],
                content=upload.read(),
                file_name=upload.name,
            )
        except services.ImportRejected as exc:
            problems, status = exc.errors, 400
        else:
            messages.success(
                request,
                f"Imported {result.created} row(s) ({result.format} format, {usd(result.cost, 2)})"
                + (
                    f"; {result.replaced} replaced the rows of an earlier import for the same buckets."
                    if result.replaced
                    else "."
                ),
            )
            params = urlencode({"org": form.cleaned_data["organization"].slug, "month": f"{result.earliest:%Y-%m}"})
            return redirect(f"{reverse('reports:report')}?{params}")
    elif request.method == "POST":
        status = 400
    return render(request, "reports/import.html", {"form": form, "problems": problems}, status=status)
