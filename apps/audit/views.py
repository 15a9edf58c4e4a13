"""The audit log page and its CSV export: owners and finance (the role matrix's ``audit.view``)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.audit.forms import AuditFilterForm
from apps.audit.selectors import audit_events_for, audit_export_rows
from apps.tenancy.permissions import Action, can_anywhere
from costcontrol.spreadsheet import csv_lines
from costcontrol.streaming import streaming_response

PAGE_SIZE = 50


def _form(request: HttpRequest) -> AuditFilterForm:
    if not can_anywhere(request.user, Action.AUDIT_VIEW):
        raise PermissionDenied("Only owners and finance read the audit log.")
    form = AuditFilterForm(request.GET or None)
    form.is_valid()
    return form


@login_required
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    form = _form(request)
    events = audit_events_for(user=request.user, filters=form.to_filters())
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "audit/log.html", {"form": form, "page": page})


@login_required
@require_GET
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    form = _form(request)
    events = audit_events_for(user=request.user, filters=form.to_filters())
    response = streaming_response(
        request, csv_lines(audit_export_rows(events=events)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = 'attachment; filename="audit-log.csv"'
    return response
