"""Control-plane pages.

Every object is looked up through what the user may see, so someone outside a
project or organisation gets a 404 and learns nothing. Someone who may see a
thing but not change it (finance, developers on manager-only settings) gets a
403 when they try.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.dashboard.forms import (
    AliasForm,
    DefaultProviderForm,
    KeyIssueForm,
    LedgerFilterForm,
    PriceForm,
    ProjectCreateForm,
    ProviderCreateForm,
    ProviderUpdateForm,
)
from apps.keys.models import ApiKey
from apps.keys.services import key_issue, key_revoke
from apps.ledger.selectors import ledger_entries, ledger_export_rows, ledger_totals, spend_by_project
from apps.providers.models import Provider
from apps.providers.selectors import aliases_for, providers_with_prices
from apps.providers.services import alias_set, price_set, provider_create, provider_update
from apps.tenancy.models import MANAGER_ROLES, Organization, Project
from apps.tenancy.selectors import (
    can_issue_keys,
    can_manage_organization,
    can_manage_project,
    memberships_for,
    organizations_for,
    projects_for,
)
from apps.tenancy.services import project_create, project_set_default_provider

LEDGER_PAGE_SIZE = 50


def _visible_project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(projects_for(user=request.user), slug=slug)


def _visible_org(request: HttpRequest, slug: str) -> Organization:
    return get_object_or_404(organizations_for(user=request.user), slug=slug)


def _add_service_errors(form: Any, exc: DjangoValidationError) -> None:
    """Show a model's validation errors on the form instead of a 500."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


# Home ---------------------------------------------------------------------------------------------


def _home(
    request: HttpRequest, *, bound_form: ProjectCreateForm | None = None, bound_org_id: int | None = None
) -> HttpResponse:
    memberships = list(memberships_for(user=request.user).order_by("organization__name"))
    projects = list(projects_for(user=request.user))
    spend = spend_by_project(project_ids=[p.pk for p in projects])
    orgs = []
    for membership in memberships:
        org = membership.organization
        org_projects = [{"project": p, "spend": spend.get(p.pk)} for p in projects if p.organization_id == org.pk]
        form = None
        if membership.role in MANAGER_ROLES:
            form = bound_form if bound_org_id == org.pk else ProjectCreateForm(teams=org.teams.order_by("name"))
        orgs.append({"org": org, "membership": membership, "projects": org_projects, "form": form})
    return render(request, "dashboard/home.html", {"orgs": orgs})


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return _home(request)


@login_required
@require_POST
def project_new(request: HttpRequest, org_slug: str) -> HttpResponse:
    org = _visible_org(request, org_slug)
    if not can_manage_organization(user=request.user, organization_id=org.pk):
        raise PermissionDenied
    form = ProjectCreateForm(request.POST, teams=org.teams.order_by("name"))
    if form.is_valid():
        try:
            project = project_create(
                organization=org,
                name=form.cleaned_data["name"],
                slug=form.cleaned_data["slug"],
                team=form.cleaned_data["team"],
            )
        except DjangoValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Project “{project.name}” created.")
            return redirect("dashboard:project", slug=project.slug)
    return _home(request, bound_form=form, bound_org_id=org.pk)


# Project ------------------------------------------------------------------------------------------


def _project_page(
    request: HttpRequest,
    project: Project,
    *,
    key_form: KeyIssueForm | None = None,
    alias_form: AliasForm | None = None,
    default_form: DefaultProviderForm | None = None,
) -> HttpResponse:
    may_issue = can_issue_keys(user=request.user, project=project)
    may_manage = can_manage_project(user=request.user, project=project)
    providers = Provider.objects.filter(organization_id=project.organization_id).order_by("name")
    context = {
        "project": project,
        "keys": project.api_keys.order_by("-created_at"),
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
    if not can_issue_keys(user=request.user, project=project):
        raise PermissionDenied
    form = KeyIssueForm(request.POST)
    if not form.is_valid():
        return _project_page(request, project, key_form=form)
    try:
        issued = key_issue(
            project=project,
            name=form.cleaned_data["name"],
            created_by=request.user,  # type: ignore[arg-type]
            allowed_models=form.cleaned_data["allowed_models"],
            default_feature=form.cleaned_data["default_feature"],
            expires_at=form.cleaned_data["expires_at"],
        )
    except DjangoValidationError as exc:
        _add_service_errors(form, exc)
        return _project_page(request, project, key_form=form)
    # Rendered in the POST response, not after a redirect: the plaintext is never stored anywhere to redirect to.
    response = render(
        request,
        "dashboard/key_issued.html",
        {
            "project": project,
            "issued": issued,
            "base_url": f"{request.scheme}://{request.get_host()}/v1",
        },
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def key_revoke_view(request: HttpRequest, slug: str, lookup_id: str) -> HttpResponse:
    project = _visible_project(request, slug)
    api_key = get_object_or_404(ApiKey, project=project, lookup_id=lookup_id)
    if not can_issue_keys(user=request.user, project=project):
        raise PermissionDenied
    key_revoke(api_key=api_key)
    messages.success(request, f"Key {api_key.display_prefix} revoked.")
    return redirect("dashboard:project", slug=project.slug)


@login_required
@require_POST
def alias_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = _visible_project(request, slug)
    if not can_manage_project(user=request.user, project=project):
        raise PermissionDenied
    providers = Provider.objects.filter(organization_id=project.organization_id).order_by("name")
    form = AliasForm(request.POST, providers=providers)
    if form.is_valid():
        try:
            alias_set(project=project, **form.cleaned_data)
        except DjangoValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Alias “{form.cleaned_data['alias']}” saved.")
            return redirect("dashboard:project", slug=project.slug)
    return _project_page(request, project, alias_form=form)


@login_required
@require_POST
def default_provider_set(request: HttpRequest, slug: str) -> HttpResponse:
    project = _visible_project(request, slug)
    if not can_manage_project(user=request.user, project=project):
        raise PermissionDenied
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
    may_manage = can_manage_organization(user=request.user, organization_id=org.pk)
    providers = list(providers_with_prices(organization=org))
    rows = [
        {
            "provider": provider,
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
    if not can_manage_organization(user=request.user, organization_id=org.pk):
        raise PermissionDenied
    form = ProviderCreateForm(request.POST)
    if form.is_valid():
        try:
            provider = provider_create(organization=org, **form.cleaned_data)
        except DjangoValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Provider “{provider.name}” registered.")
            return redirect("dashboard:providers", org_slug=org.slug)
    return _providers_page(request, org, create_form=form)


@login_required
@require_http_methods(["GET", "POST"])
def provider_edit(request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
    org = _visible_org(request, org_slug)
    provider = get_object_or_404(Provider, organization=org, pk=pk)
    if not can_manage_organization(user=request.user, organization_id=org.pk):
        raise PermissionDenied
    if request.method == "POST":
        form = ProviderUpdateForm(request.POST)
        if form.is_valid():
            try:
                provider_update(provider=provider, **form.cleaned_data)
            except DjangoValidationError as exc:
                _add_service_errors(form, exc)
            else:
                messages.success(request, f"Provider “{provider.name}” saved.")
                return redirect("dashboard:providers", org_slug=org.slug)
    else:
        form = ProviderUpdateForm(
            initial={"name": provider.name, "base_url": provider.base_url, "is_active": provider.is_active}
        )
    return render(request, "dashboard/provider_edit.html", {"org": org, "provider": provider, "form": form})


@login_required
@require_POST
def price_new(request: HttpRequest, org_slug: str, pk: int) -> HttpResponse:
    org = _visible_org(request, org_slug)
    provider = get_object_or_404(Provider, organization=org, pk=pk)
    if not can_manage_organization(user=request.user, organization_id=org.pk):
        raise PermissionDenied
    form = PriceForm(request.POST, prefix=f"p{provider.pk}")
    if form.is_valid():
        try:
            price = price_set(provider=provider, **form.cleaned_data)
        except DjangoValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Price for {price.model} from {price.effective_from} saved.")
            url = reverse("dashboard:providers", kwargs={"org_slug": org.slug})
            return HttpResponseRedirect(f"{url}#provider-{provider.pk}")
    return _providers_page(request, org, price_form=form, price_provider_id=provider.pk)


# Ledger -------------------------------------------------------------------------------------------


def _ledger_filter_form(request: HttpRequest) -> LedgerFilterForm:
    form = LedgerFilterForm(request.GET or None, projects=list(projects_for(user=request.user)))
    form.is_valid()
    return form


@login_required
@require_GET
def ledger(request: HttpRequest) -> HttpResponse:
    form = _ledger_filter_form(request)
    entries = ledger_entries(user=request.user, filters=form.to_filters())
    page = Paginator(entries.select_related("project", "api_key"), LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"form": form, "page": page, "totals": ledger_totals(entries=entries)}
    return render(request, "dashboard/ledger.html", context)


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a stream."""

    def write(self, value: str) -> str:
        return value


@login_required
@require_GET
def ledger_export(request: HttpRequest) -> StreamingHttpResponse:
    form = _ledger_filter_form(request)
    entries = ledger_entries(user=request.user, filters=form.to_filters())
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        for row in ledger_export_rows(entries=entries):
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="ledger.csv"'
    return response
