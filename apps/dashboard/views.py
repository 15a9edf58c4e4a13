"""Control-plane pages.

Every object is looked up through what the user may see, so someone outside a
project or organisation gets a 404 and learns nothing. Someone who may see a
thing but not change it (finance, developers on manager-only settings) gets a
403 when they try.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework.authtoken.models import Token

from apps.dashboard.auth import token_expires_at, token_scope
from apps.dashboard.forms import (
    AliasForm,
    ApiTokenForm,
    DefaultProviderForm,
    KeyIssueForm,
    LedgerFilterForm,
    OverviewForm,
    PriceForm,
    ProjectCreateForm,
    ProviderCreateForm,
    ProviderUpdateForm,
)
from apps.dashboard.selectors import Overview, OverviewScope, overview_for, overview_scopes
from apps.dashboard.services import api_token_revoke, api_token_rotate
from apps.keys.models import ApiKey
from apps.keys.services import key_issue, key_revoke
from apps.ledger.browse import InvalidCursor, LedgerCursor, ledger_page, ledger_page_totals
from apps.ledger.selectors import (
    GROUP_BY_LABELS,
    OTHER,
    ledger_entries,
    ledger_export_rows,
    spend_by_project,
    with_readback,
)
from apps.providers.models import Provider
from apps.providers.selectors import aliases_for, providers_with_prices
from apps.providers.services import alias_set, price_set, provider_create, provider_update
from apps.tenancy.auth import signed_in_user
from apps.tenancy.models import Organization, Project, Team
from apps.tenancy.permissions import Action, can, can_anywhere, require, shown
from apps.tenancy.selectors import memberships_for, organizations_for, projects_for
from apps.tenancy.services import project_create, project_set_default_provider
from costcontrol.forms import add_service_errors, date_presets
from costcontrol.spreadsheet import csv_lines
from costcontrol.streaming import streaming_response

LEDGER_PAGE_SIZE = 50


def _visible_project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(projects_for(user=request.user), slug=slug)


def _visible_org(request: HttpRequest, slug: str) -> Organization:
    return get_object_or_404(organizations_for(user=request.user), slug=slug)


def _gateway_base_url(request: HttpRequest) -> str:
    """The OpenAI-compatible base URL apps use: the gateway answers on the dashboard's own host."""
    return f"{request.scheme}://{request.get_host()}/v1"


# Home ---------------------------------------------------------------------------------------------


def _home(
    request: HttpRequest,
    *,
    bound_form: ProjectCreateForm | None = None,
    bound_org_id: int | None = None,
    status: int = 200,
) -> HttpResponse:
    memberships = list(memberships_for(user=request.user).order_by("organization__name"))
    projects = list(projects_for(user=request.user))
    spend = spend_by_project(project_ids=[p.pk for p in projects])
    orgs = []
    for membership in memberships:
        org = membership.organization
        org_projects = [{"project": p, "spend": spend.get(p.pk)} for p in projects if p.organization_id == org.pk]
        form = None
        if can_anywhere(request.user, Action.PROJECT_CREATE, org):
            form = bound_form if bound_org_id == org.pk else _project_form(request, org)
        orgs.append({"org": org, "membership": membership, "projects": org_projects, "form": form})
    return render(request, "dashboard/home.html", {"orgs": orgs}, status=status)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return _home(request)


def _project_form(request: HttpRequest, org: Organization, data: Any = None) -> ProjectCreateForm:
    """The new-project form, its teams narrowed to those the user may create projects in."""
    teams = [t for t in org.teams.order_by("name") if can(request.user, Action.PROJECT_CREATE, t)]
    return ProjectCreateForm(
        data,
        teams=Team.objects.filter(pk__in=[t.pk for t in teams]).order_by("name"),
        providers=Provider.objects.filter(organization=org).order_by("name"),
    )


@login_required
@require_POST
def project_new(request: HttpRequest, org_slug: str) -> HttpResponse:
    org = _visible_org(request, org_slug)
    if not can_anywhere(request.user, Action.PROJECT_CREATE, org):
        raise PermissionDenied
    form = _project_form(request, org, request.POST)
    if form.is_valid():
        # A project without a team is organisation-wide: only who may create there may leave it out.
        require(request.user, Action.PROJECT_CREATE, form.cleaned_data["team"] or org)
        try:
            with transaction.atomic():
                project = project_create(
                    organization=org,
                    name=form.cleaned_data["name"],
                    slug=form.cleaned_data["slug"],
                    team=form.cleaned_data["team"],
                )
                if form.cleaned_data.get("default_provider") is not None:
                    project_set_default_provider(project=project, provider=form.cleaned_data["default_provider"])
        except DjangoValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Project “{project.name}” created.")
            return redirect("dashboard:project", slug=project.slug)
    return _home(request, bound_form=form, bound_org_id=org.pk, status=400)


# Project ------------------------------------------------------------------------------------------


def _project_page(
    request: HttpRequest,
    project: Project,
    *,
    key_form: KeyIssueForm | None = None,
    alias_form: AliasForm | None = None,
    default_form: DefaultProviderForm | None = None,
) -> HttpResponse:
    may_issue = can(request.user, Action.KEY_ISSUE, project)
    may_manage = can(request.user, Action.PROJECT_MANAGE, project)
    providers = Provider.objects.filter(organization_id=project.organization_id).order_by("name")
    keys = list(project.api_keys.order_by("-created_at"))
    context = {
        "project": project,
        "base_url": _gateway_base_url(request),
        "keys": [{"key": key, "may_revoke": can(request.user, Action.KEY_REVOKE, key)} for key in keys],
        "may_revoke_any": any(can(request.user, Action.KEY_REVOKE, key) for key in keys),
        "aliases": aliases_for(project=project),
        "spend": spend_by_project(project_ids=[project.pk]).get(project.pk),
        "may_issue": may_issue,
        "may_manage": may_manage,
        "key_form": (key_form or KeyIssueForm()) if may_issue else None,
        "alias_form": (alias_form or AliasForm(providers=providers)) if may_manage else None,
        "default_form": (
            default_form
            or DefaultProviderForm(providers=providers, initial={"default_provider": project.default_provider_id})
        )
        if may_manage
        else None,
    }
    return render(request, "dashboard/project_detail.html", context)


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    return _project_page(request, _visible_project(request, slug))


@login_required
@require_POST
def key_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = _visible_project(request, slug)
    require(request.user, Action.KEY_ISSUE, project)
    form = KeyIssueForm(request.POST)
    if not form.is_valid():
        return _project_page(request, project, key_form=form)
    try:
        issued = key_issue(
            project=project,
            name=form.cleaned_data["name"],
            created_by=signed_in_user(request),
            allowed_models=form.cleaned_data["allowed_models"],
            default_feature=form.cleaned_data["default_feature"],
            expires_at=form.cleaned_data["expires_at"],
        )
    except DjangoValidationError as exc:
        add_service_errors(form, exc)
        return _project_page(request, project, key_form=form)
    # Rendered in the POST response, not after a redirect: the plaintext is never stored anywhere to redirect to.
    response = render(
        request,
        "dashboard/key_issued.html",
        {
            "project": project,
            "issued": issued,
            "base_url": _gateway_base_url(request),
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def key_revoke_view(request: HttpRequest, slug: str, lookup_id: str) -> HttpResponse:
    project = _visible_project(request, slug)
    api_key = get_object_or_404(ApiKey, project=project, lookup_id=lookup_id)
    require(request.user, Action.KEY_REVOKE, api_key)
    key_revoke(api_key=api_key)
    messages.success(request, f"Key {api_key.display_prefix} revoked.")
    return redirect("dashboard:project", slug=project.slug)


@login_required
@require_POST
def alias_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = _visible_project(request, slug)
    require(request.user, Action.PROJECT_MANAGE, project)
    providers = Provider.objects.filter(organization_id=project.organization_id).order_by("name")
    form = AliasForm(request.POST, providers=providers)
    if form.is_valid():
        try:
            alias_set(project=project, **form.cleaned_data)
        except DjangoValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Alias “{form.cleaned_data['alias']}” saved.")
            return redirect("dashboard:project", slug=project.slug)
    return _project_page(request, project, alias_form=form)


@login_required
@require_POST
def default_provider_set(request: HttpRequest, slug: str) -> HttpResponse:
    project = _visible_project(request, slug)
    require(request.user, Action.PROJECT_MANAGE, project)
    providers = Provider.objects.filter(organization_id=project.organization_id).order_by("name")
    form = DefaultProviderForm(request.POST, providers=providers)
    if not form.is_valid():
        return _project_page(request, project, default_form=form)
    project_set_default_provider(project=project, provider=form.cleaned_data["default_provider"])
    messages.success(request, "Default provider saved.")
    return redirect("dashboard:project", slug=project.slug)


# Providers ----------------------------------------------------------------------------------------


def _providers_page(
    request: HttpRequest,
    org: Organization,
    *,
    create_form: ProviderCreateForm | None = None,
    price_form: PriceForm | None = None,
    price_provider_id: int | None = None,
) -> HttpResponse:
    may_manage = can(request.user, Action.ORG_MANAGE, org)
    providers = list(providers_with_prices(organization=org))
    rows = [
        {
            "provider": provider,
            "base_url": shown(request.user, provider.base_url, provider),
            "price_form": (price_form if price_provider_id == provider.pk else PriceForm(prefix=f"p{provider.pk}"))
            if may_manage
            else None,
        }
        for provider in providers
    ]
    context = {
        "org": org,
        "rows": rows,
        "may_manage": may_manage,
        "create_form": (create_form or ProviderCreateForm()) if may_manage else None,
    }
    return render(request, "dashboard/providers.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def providers(request: HttpRequest, org_slug: str) -> HttpResponse:
    org = _visible_org(request, org_slug)
    if request.method == "GET":
        return _providers_page(request, org)
    require(request.user, Action.ORG_MANAGE, org)
    form = ProviderCreateForm(request.POST)
    if form.is_valid():
        try:
            provider = provider_create(organization=org, **form.cleaned_data)
        except DjangoValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Provider “{provider.name}” registered.")
            return redirect("dashboard:providers", org_slug=org.slug)
    return _providers_page(request, org, create_form=form)


@login_required
@require_http_methods(["GET", "POST"])
def provider_edit(request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
    org = _visible_org(request, org_slug)
    provider = get_object_or_404(Provider, organization=org, pk=pk)
    require(request.user, Action.ORG_MANAGE, provider)
    if request.method == "POST":
        form = ProviderUpdateForm(request.POST)
        if form.is_valid():
            try:
                provider_update(provider=provider, **form.cleaned_data)
            except DjangoValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Provider “{provider.name}” saved.")
                return redirect("dashboard:providers", org_slug=org.slug)
    else:
        form = ProviderUpdateForm(
            initial={
                "name": provider.name,
                "base_url": provider.base_url,
                "is_active": provider.is_active,
                "responses_api": provider.responses_api,
            }  # fmt: skip
        )
    return render(request, "dashboard/provider_edit.html", {"org": org, "provider": provider, "form": form})


@login_required
@require_POST
def price_new(request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
    org = _visible_org(request, org_slug)
    provider = get_object_or_404(Provider, organization=org, pk=pk)
    require(request.user, Action.ORG_MANAGE, provider)
    form = PriceForm(request.POST, prefix=f"p{provider.pk}")
    if form.is_valid():
        try:
            price = price_set(provider=provider, **form.cleaned_data)
        except DjangoValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Price for {price.model} from {price.effective_from} saved.")
            url = reverse("dashboard:providers", kwargs={"org_slug": org.slug})
            return HttpResponseRedirect(f"{url}#provider-{provider.pk}")
    return _providers_page(request, org, price_form=form, price_provider_id=provider.pk)


# Ledger -------------------------------------------------------------------------------------------


def _ledger_filter_form(request: HttpRequest) -> LedgerFilterForm:
    form = LedgerFilterForm(request.GET, projects=list(projects_for(user=request.user)), today=timezone.localdate())
    form.is_valid()
    return form


@login_required
@require_GET
def ledger(request: HttpRequest) -> HttpResponse:
    """One page of the ledger from a cursor (newest first without one), and the filtered totals.

    Neither reads the whole filtered range (apps/ledger/browse.py). A cursor this server did not
    issue is answered 400 with the newest page and a note; it never reaches the query.
    """
    form = _ledger_filter_form(request)
    filters = form.to_filters()
    cursor, cursor_error = None, ""
    if token := request.GET.get("cursor", ""):
        try:
            cursor = LedgerCursor.from_token(token)
        except InvalidCursor:
            cursor_error = "That page link is not valid (altered, or from another server); showing the newest rows."
    entries = ledger_entries(user=request.user, filters=filters).select_related("project", "api_key")
    entries = with_readback(entries)
    context = {
        "form": form,
        "page": ledger_page(entries=entries, cursor=cursor, size=LEDGER_PAGE_SIZE),
        "totals": ledger_page_totals(user=request.user, filters=filters),
        "cursor_error": cursor_error,
    }
    return render(request, "dashboard/ledger.html", context, status=400 if cursor_error else 200)


@login_required
@require_GET
def ledger_export(request: HttpRequest) -> StreamingHttpResponse:
    form = _ledger_filter_form(request)
    entries = ledger_entries(user=request.user, filters=form.to_filters())
    response = streaming_response(
        request, csv_lines(ledger_export_rows(entries=entries)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = 'attachment; filename="ledger.csv"'
    return response


# Overview -----------------------------------------------------------------------------------------


def _ledger_link(scope: OverviewScope, *, group_by: str, key: str, day_from: dt.date, day_to: dt.date) -> str:
    """The ledger filtered to one slice of the overview: project, dimension value and days."""
    params = {"date_from": day_from.isoformat(), "date_to": day_to.isoformat()}
    if scope.project is not None:
        params["project"] = scope.project.slug
    if key and key != OTHER:
        params[group_by] = key
    return f"{reverse('dashboard:ledger')}?{urlencode(params)}"


def _money(value: Decimal) -> float:
    return round(float(value), 6)


def _chart_data(overview: Overview) -> dict[str, Any]:
    """What static/js/overview.js draws; numbers as floats rounded to the micro-dollar."""
    series = overview.series
    hourly = series.bucket == "hour"
    scope = overview.scope
    return {
        "bucket": series.bucket,
        "groupBy": series.group_by,
        "groupLabel": GROUP_BY_LABELS[series.group_by],
        "labels": [start.strftime("%m-%d %H:00" if hourly else "%a %m-%d") for start in series.starts],
        "days": [start.date().isoformat() for start in series.starts],
        "datasets": [
            {"label": group.label, "key": group.key, "data": [_money(v) for v in group.values]}
            for group in series.groups
        ],
        "drill": {
            "url": reverse("dashboard:ledger"),
            "project": scope.project.slug if scope.project else "",
            "param": series.group_by,
            "other": OTHER,
        },
        "levers": [
            {"label": lever.label, "savings": _money(lever.savings), "requests": lever.requests}
            for lever in overview.levers
        ],
    }


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    scopes = overview_scopes(user=request.user)
    form = OverviewForm(request.GET or None, scopes=[(s.value, s.label) for s in scopes])
    form.is_valid()
    by_value = {s.value: s for s in scopes}
    asked = request.GET.get("scope")
    if asked and asked not in by_value:
        raise Http404("No such organisation or project.")
    if not scopes:
        return render(request, "dashboard/overview.html", {"form": form, "overview": None})
    scope = by_value[form.choice("scope", scopes[0].value)]
    day_from, day_to = form.date_range(today=timezone.localdate())
    group_by = form.choice("group_by", "model")
    if not form.errors:
        # Show what is on screen, defaults included, so the next "Show" keeps it.
        shown = {"scope": scope.value, "date_from": day_from, "date_to": day_to, "group_by": group_by}
        form = OverviewForm(shown, scopes=[(s.value, s.label) for s in scopes])
    tz = timezone.get_current_timezone()
    since = dt.datetime.combine(day_from, dt.time.min, tzinfo=tz)
    until = dt.datetime.combine(day_to + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
    data = overview_for(user=request.user, scope=scope, since=since, until=until, group_by=group_by)
    top = [
        {
            "name": name,
            "label": GROUP_BY_LABELS[name],
            "rows": [
                {"row": row, "link": _ledger_link(scope, group_by=name, key=row.key, day_from=day_from, day_to=day_to)}
                for row in rows
            ],
        }
        for name, rows in data.top.items()
    ]
    today = timezone.localdate()
    presets = date_presets(today=today)
    context = {
        "form": form,
        "presets": [
            {
                "label": label,
                "query": urlencode({"scope": scope.value, "date_from": a, "date_to": b, "group_by": group_by}),
            }
            for label, (a, b) in presets.items()
        ],
        "overview": data,
        "top": top,
        "day_from": day_from,
        "day_to": day_to,
        "days": (day_to - day_from).days + 1,
        "chart": _chart_data(data),
    }
    return render(request, "dashboard/overview.html", context)


# Account ------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def account_token(request: HttpRequest) -> HttpResponse:
    """The user's API token for /api/: created or replaced here, shown in full only in that response."""
    user = signed_in_user(request)
    form = ApiTokenForm(max_days=settings.API_TOKEN_LIFETIME_DAYS)
    status = 200
    if request.method == "POST":
        if request.POST.get("action") == "revoke":
            api_token_revoke(user=user)
            messages.success(request, "API token revoked.")
            return redirect("dashboard:account-token")
        form = ApiTokenForm(request.POST, max_days=settings.API_TOKEN_LIFETIME_DAYS)
        if form.is_valid():
            token = api_token_rotate(
                user=user, scope=form.cleaned_data["scope"], lifetime_days=form.cleaned_data["lifetime_days"]
            )
            context = {**_token_state(token), "plaintext": token.key, "form": form}
            response = render(request, "dashboard/account_token.html", context)
            response["Cache-Control"] = "no-store"
            return response
        status = 400
    token = Token.objects.select_related("grant").filter(user=user).first()
    context = {**_token_state(token), "plaintext": None, "form": form}
    return render(request, "dashboard/account_token.html", context, status=status)


def _token_state(token: Token | None) -> dict[str, Any]:
    expires_at = token_expires_at(token) if token is not None else None
    return {
        "token": token,
        "scope": token_scope(token) if token is not None else None,
        "expires_at": expires_at,
        "expired": expires_at is not None and expires_at <= timezone.now(),
    }
