"""Cache pages per project: policy, entries (search, inspect, delete), purge, hit rate and savings."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.cache.forms import CachePolicyForm
from apps.cache.models import CacheEntry, CachePolicy
from apps.cache.selectors import cache_entries, cache_namespaces, cache_savings_by_day
from apps.cache.services import cache_entry_delete, cache_policy_save, cache_purge
from apps.ledger.services import redis_client
from apps.tenancy.models import Project
from apps.tenancy.permissions import Action, can, require
from apps.tenancy.selectors import projects_for
from costcontrol.forms import add_service_errors


def _project(request: HttpRequest, slug: str) -> Project:
    return get_object_or_404(projects_for(user=request.user), slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def cache_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    may_manage = can(request.user, Action.PROJECT_MANAGE, project)
    # Cached prompts and answers are what end users typed and got: only who manages the project reads them.
    may_read_entries = can(request.user, Action.CACHE_CONTENT_VIEW, project)
    feature = request.POST.get("feature", "") if request.method == "POST" else ""
    policy = CachePolicy.objects.filter(project=project, feature=feature).first()
    form = CachePolicyForm(instance=policy) if may_manage else None
    status = 200
    if request.method == "POST":
        require(request.user, Action.PROJECT_MANAGE, project)
        form = CachePolicyForm(request.POST, instance=policy or CachePolicy(project=project))
        if form.is_valid():
            try:
                cache_policy_save(policy=form.save(commit=False))
            except DjangoValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Cache policy saved; gateways use it within a second.")
                return redirect("cache:project", slug=project.slug)
        status = 400
    search = request.GET.get("q", "").strip()
    namespace = request.GET.get("ns")
    entries = cache_entries(project=project, search=search, namespace=namespace) if may_read_entries else None
    page = Paginator(entries, 50).get_page(request.GET.get("page")) if entries is not None else None
    context = {
        "project": project,
        "policies": CachePolicy.objects.filter(project=project).order_by("feature"),
        "form": form,
        "page": page,
        "search": search,
        "namespace": namespace,
        "namespaces": cache_namespaces(project=project),
        "days": cache_savings_by_day(project=project),
        "may_manage": may_manage,
        "may_read_entries": may_read_entries,
    }
    return render(request, "cache/cache.html", context, status=status)


@login_required
@require_GET
def entry_detail(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _project(request, slug)
    require(request.user, Action.CACHE_CONTENT_VIEW, project)
    entry = get_object_or_404(CacheEntry.objects.defer("embedding"), project=project, pk=pk)
    return render(request, "cache/entry.html", {"project": project, "entry": entry})


@login_required
@require_POST
def entry_delete(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    project = _project(request, slug)
    require(request.user, Action.PROJECT_MANAGE, project)
    entry = get_object_or_404(CacheEntry, project=project, pk=pk)
    cache_entry_delete(client=redis_client(), entry=entry)
    messages.success(request, "Entry deleted.")
    return redirect("cache:project", slug=project.slug)


@login_required
@require_POST
def purge(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    require(request.user, Action.PROJECT_MANAGE, project)
    namespace = request.POST.get("namespace")
    removed = cache_purge(client=redis_client(), project=project, namespace=namespace)
    where = f"namespace '{namespace or '(default)'}'" if namespace is not None else "all namespaces"
    messages.success(request, f"Purged {removed} entries from {where}.")
    return redirect("cache:project", slug=project.slug)
