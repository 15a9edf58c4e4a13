"""The role matrix, walked: every write URL and every API verb, as every role, through real HTTP.

The URL list comes from the URLconf and the methods from each URL's own ``Allow`` answer to
``OPTIONS``, so a new write URL (or a new verb on an old one) fails here until it is added below
with who may use it. Pages go through Django's test Client with real logins (sessions, middleware,
CSRF-exempt as in the product's tests); the API through ``Authorization: Token …`` with tokens the
product issued. Each write runs inside a savepoint that is rolled back, so every role meets the
same rows; a refused write must leave the database exactly as it was, an allowed one must change it.

Roles: the owner, the lead of team A, the lead of team B, a developer of team A, finance, and the
owner of another organisation (the outsider). Every object written to is in team A or organisation-wide.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.audit.models import AuditEvent
from apps.budgets.models import Alert, AlertKind, Budget, BudgetScope, ChannelKind, NotificationChannel, RateLimit
from apps.budgets.services import alert_raise, budget_create, channel_create, rate_limit_set
from apps.cache.models import CacheEntry, CachePolicy
from apps.cache.services import cache_policy_save
from apps.dashboard.services import api_token_rotate
from apps.deployments.models import Deployment, DeploymentStatus
from apps.keys.models import ApiKey
from apps.keys.services import key_issue
from apps.ledger.models import LedgerEntry
from apps.opportunities.models import Trial
from apps.opportunities.selectors import project_opportunities
from apps.opportunities.services import trial_start
from apps.providers.models import ModelAlias, Price, Provider
from apps.providers.services import alias_set
from apps.reports.models import ExportJob
from apps.reports.selectors import ExportQuery
from apps.reports.services import export_job_create, export_job_run
from apps.routing.models import PrunePolicy, RoutingRule
from apps.routing.services import rule_save
from apps.tenancy.models import Membership, Project, Role, Team
from apps.tenancy.services import project_create, team_create
from tests.deployments.helpers import deployment_make
from tests.factories import Tenant, entry_make, login, member_make, tenant_make, user_make

pytestmark = pytest.mark.django_db

ROLES = ("owner", "lead_a", "lead_b", "dev", "finance", "outsider")
OK = "ok"  # any 2xx or 3xx
Expect = tuple[int | str, int | str, int | str, int | str, int | str, int | str]  # in ROLES order

# Who gets what, by the kind of object (see apps/tenancy/permissions.py).
EVERYONE: Expect = (OK, OK, OK, OK, OK, OK)  # lists, scoped to what each one sees; their own account
ORG_READ: Expect = (OK, OK, OK, OK, OK, 404)  # organisation-wide objects: every member reads them
PROJECT_READ: Expect = (OK, OK, 404, OK, OK, 404)  # team A's project: team B's lead does not see it
TEAM_WRITE: Expect = (OK, OK, 404, 403, 403, 404)  # team A's project settings: owner and team A's lead
TEAM_FORM: Expect = (OK, OK, 400, 403, 403, 400)  # the same, the project named in the body (unseen: invalid)
ORG_WRITE: Expect = (OK, 403, 403, 403, 403, 404)  # organisation-wide objects: the owner only
ORG_WRITE_IN_PROJECT: Expect = (OK, 403, 404, 403, 403, 404)  # deployments, under team A's project URL
OWNER_ONLY_READ: Expect = (OK, 403, 403, 403, 403, 404)
CACHE_CONTENT: Expect = (OK, OK, 404, 403, 403, 404)  # cached prompts: who manages the project
OWN_JOB: Expect = (OK, 404, 404, 404, 404, 404)  # an export job is its requester's alone
AUDIT_READ: Expect = (OK, 403, 403, 403, OK, OK)  # owners and finance, each their organisation's log
ORG_WRITE_NAMED: Expect = ORG_WRITE[:5] + (400,)  # the same, the organisation named in the body (unseen: invalid)

# Not role-checked: authentication itself, Django's admin (staff only; no role is staff), and the
# OpenAI-compatible Files/Batches API, which authenticates API keys, not people (tested below).
PUBLIC = {"login", "logout"}
KEY_AUTH = {"v1-files", "v1-file", "v1-file-content", "v1-batches", "v1-batch", "v1-batch-cancel", "v1-unknown"}


@dataclass
class World:
    tenant: Tenant
    project_b: Project
    users: dict[str, User]
    tokens: dict[str, str]
    objects: dict[str, Any] = field(default_factory=dict)

    @property
    def org(self) -> Any:
        return self.tenant.org

    @property
    def project(self) -> Project:
        return self.tenant.project


@pytest.fixture
def world() -> World:
    tenant = tenant_make()
    team_b = team_create(organization=tenant.org, name="team b")
    project_b = project_create(organization=tenant.org, name="project b", team=team_b)
    users = {
        "owner": tenant.owner,
        "lead_a": member_make(tenant, Role.TEAM_LEAD, team=tenant.team),
        "lead_b": member_make(tenant, Role.TEAM_LEAD, team=team_b),
        "dev": member_make(tenant, Role.DEVELOPER, team=tenant.team),
        "finance": member_make(tenant, Role.FINANCE),
        "outsider": tenant_make().owner,
    }
    w = World(tenant=tenant, project_b=project_b, users=users, tokens={})
    w.tokens = {role: api_token_rotate(user=user).key for role, user in users.items()}
    project = tenant.project
    o = w.objects
    o["lead_key"] = key_issue(project=project, name="lead's", created_by=users["lead_a"]).api_key
    o["budget"] = budget_create(
        organization=tenant.org, name="project a", scope=BudgetScope.PROJECT, project=project, amount_usd=Decimal(5)
    )
    # Rules of another feature than the trial's below (a rule deciding its requests would refuse the trial).
    only = {"match_features": ["search"]}
    o["rule"] = rule_save(project=project, fields={"name": "first", **only}, primaries=[], fallbacks=[], shadow=[])
    rule_save(project=project, fields={"name": "second", **only}, primaries=[], fallbacks=[], shadow=[])
    o["entry"] = CacheEntry.objects.create(
        project=project, exact_key="k1", fingerprint="f", model="gpt-4o-mini", prompt_text="my card number is …",
        response={"choices": []}, expires_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    o["channel"] = channel_create(
        organization=tenant.org, name="hook", kind=ChannelKind.WEBHOOK, target="http://127.0.0.1:9/hook", secret="s"
    )
    # On a key: the matrix's new-limit form sets the project's own limit.
    o["limit"] = rate_limit_set(project=project, api_key=o["lead_key"], requests_per_minute=50)
    o["alert"], _ = alert_raise(organization_id=tenant.org.pk, kind=AlertKind.SPEND_ANOMALY, dedup_key="matrix",
                                title="Spend rate spike", message="m", project_id=project.pk)  # fmt: skip
    o["stopped"] = deployment_make(tenant.org)
    o["running"] = deployment_make(tenant.org)
    Deployment.objects.filter(pk=o["running"].pk).update(
        status=DeploymentStatus.RUNNING, base_url="http://127.0.0.1:8000/v1", started_at=timezone.now()
    )
    since = timezone.now() - dt.timedelta(days=1)
    o["job"] = export_job_create(
        user=users["owner"],
        organization=tenant.org,
        kind="ledger",
        query=ExportQuery(since=since, until=timezone.now()),
    )
    export_job_run(job=o["job"])
    o["alias"] = alias_set(project=project, alias="chat", provider=tenant.provider, model="gpt-4o-mini")
    o["policy"] = cache_policy_save(policy=CachePolicy(project=project))
    o["newcomer"] = user_make("newcomer")
    # A route recommendation (gpt-4o → a cheaper model) and its shadow trial, for the apply and stop URLs.
    for i in range(3):
        entry_make(tenant, served_model="gpt-4o", requested_model="gpt-4o", cache_key=f"{i:064d}", feature="faq")
    route = next(r for r in project_opportunities(project=project, days=1).opportunities if r.lever == "route")
    o["recommendation"] = route.id
    o["trial"] = trial_start(project=project, opportunity=route, quality_target=Decimal("0.99"),
                             daily_cap_usd=None, min_samples=30, window_days=1)  # fmt: skip
    return w


# What each URL needs: its kwargs, and (for writes) a body that succeeds for an allowed role. -------


def _kwargs(w: World) -> dict[str, dict[str, Any]]:
    o, slug, org_slug = w.objects, w.project.slug, w.org.slug
    return {
        "dashboard:project-new": {"org_slug": org_slug},
        "dashboard:project": {"slug": slug},
        "dashboard:key-new": {"slug": slug},
        "dashboard:key-revoke": {"slug": slug, "lookup_id": o["lead_key"].lookup_id},
        "dashboard:alias-new": {"slug": slug},
        "dashboard:default-provider": {"slug": slug},
        "dashboard:providers": {"org_slug": org_slug},
        "dashboard:provider-edit": {"org_slug": org_slug, "pk": w.tenant.provider.pk},
        "dashboard:price-new": {"org_slug": org_slug, "pk": w.tenant.provider.pk},
        "batches": {"slug": slug},
        "budgets:detail": {"pk": o["budget"].pk},
        "budgets:toggle": {"pk": o["budget"].pk},
        "budgets:edit": {"pk": o["budget"].pk},
        "budgets:delete": {"pk": o["budget"].pk},
        "budgets:limit-edit": {"pk": o["limit"].pk},
        "budgets:limit-delete": {"pk": o["limit"].pk},
        "budgets:channel-edit": {"pk": o["channel"].pk},
        "budgets:channel-delete": {"pk": o["channel"].pk},
        "budgets:alert-ack": {"pk": o["alert"].pk},
        "api-rate-limit": {"pk": o["limit"].pk},
        "api-alert-acknowledge": {"pk": o["alert"].pk},
        "cache:project": {"slug": slug},
        "cache:entry": {"slug": slug, "pk": o["entry"].pk},
        "cache:entry-delete": {"slug": slug, "pk": o["entry"].pk},
        "cache:purge": {"slug": slug},
        "routing:rules": {"slug": slug},
        "routing:rule": {"slug": slug, "pk": o["rule"].pk},
        "routing:move": {"slug": slug, "pk": o["rule"].pk},
        "routing:delete": {"slug": slug, "pk": o["rule"].pk},
        "deployments:list": {"slug": slug},
        "deployments:detail": {"slug": slug, "pk": o["stopped"].pk},
        "deployments:start": {"slug": slug, "pk": o["stopped"].pk},
        "deployments:stop": {"slug": slug, "pk": o["running"].pk},
        "deployments:break-even": {"slug": slug},
        "deployments:api-break-even": {"slug": slug},
        "reports:job": {"pk": o["job"].pk},
        "reports:job-status": {"pk": o["job"].pk},
        "reports:job-download": {"pk": o["job"].pk},
        "api-project": {"slug": slug},
        "api-project-keys": {"slug": slug},
        "api-key-revoke": {"lookup_id": o["lead_key"].lookup_id},
        "api-budget": {"pk": o["budget"].pk},
        "api-channel": {"pk": o["channel"].pk},
        "api-budget-status": {"pk": o["budget"].pk},
        "api-routing-rule": {"pk": o["rule"].pk},
        "api-routing-rule-stats": {"pk": o["rule"].pk},
        "api-routing-rule-move": {"pk": o["rule"].pk},
        "api-team": {"pk": w.tenant.team.pk},
        "api-member": {"pk": Membership.objects.get(user=w.users["dev"]).pk},
        "api-key": {"lookup_id": o["lead_key"].lookup_id},
        "api-key-rotate": {"lookup_id": o["lead_key"].lookup_id},
        "api-provider": {"pk": w.tenant.provider.pk},
        "api-project-aliases": {"slug": slug},
        "api-project-alias": {"slug": slug, "pk": o["alias"].pk},
        "api-cache-policies": {"slug": slug},
        "api-cache-policy": {"slug": slug, "pk": o["policy"].pk},
        "api-cache-entries": {"slug": slug},
        "api-cache-entry": {"slug": slug, "pk": o["entry"].pk},
        "api-cache-purge": {"slug": slug},
        "opportunities:project": {"slug": slug},
        "api-opportunities": {"slug": slug},
        "opportunities:apply": {"slug": slug, "opportunity_id": o["recommendation"]},
        "opportunities:trial-stop": {"slug": slug, "pk": o["trial"].pk},
        "api-opportunity-apply": {"slug": slug, "opportunity_id": o["recommendation"]},
        "api-trials": {"slug": slug},
        "api-trial-stop": {"slug": slug, "pk": o["trial"].pk},
        "opportunities:pruning": {"slug": slug},
        "api-pruning": {"slug": slug},
        "deployments:api-deployment": {"pk": o["stopped"].pk},
        "deployments:api-deployment-start": {"pk": o["stopped"].pk},
        "deployments:api-deployment-stop": {"pk": o["running"].pk},
        "api-export": {"pk": o["job"].pk},
        "api-export-download": {"pk": o["job"].pk},
    }


def _query(w: World) -> dict[str, str]:
    """Query strings some reads need (the exports name the organisation)."""
    return {
        "reports:export-ledger": f"?org={w.org.slug}",
        "reports:export-rollups": f"?org={w.org.slug}",
        "reports:export-focus": f"?org={w.org.slug}",
    }


Body = dict[str, Any] | Callable[[], dict[str, Any]]
RULE_FORM = {
    "match_tools": "any", "action": "route", "shadow_percent": "0", "cascade_threshold": "0.7", "cascade_tokens": "1",
    "cascade_aggregate": "min",
}  # fmt: skip

WRITES: dict[tuple[str, str], tuple[Expect, Callable[[World], Body]]] = {
    # Dashboard pages.
    ("dashboard:project-new", "POST"): (
        TEAM_FORM[:5] + (404,),
        lambda w: {"name": "new one", "team": w.tenant.team.pk},
    ),
    ("dashboard:key-new", "POST"): ((OK, OK, 404, OK, 403, 404), lambda w: {"name": "ci"}),
    ("dashboard:key-revoke", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("dashboard:alias-new", "POST"): (
        TEAM_WRITE,
        lambda w: {"alias": "default-chat", "provider": w.tenant.provider.pk, "model": "gpt-4o-mini"},
    ),
    ("dashboard:default-provider", "POST"): (TEAM_WRITE, lambda w: {"default_provider": ""}),
    ("dashboard:providers", "POST"): (
        ORG_WRITE,
        lambda w: {"name": "second", "kind": "simulated", "base_url": w.tenant.provider.base_url},
    ),
    ("dashboard:provider-edit", "POST"): (
        ORG_WRITE,
        lambda w: {"name": "renamed", "base_url": w.tenant.provider.base_url, "is_active": "on"},
    ),
    ("dashboard:price-new", "POST"): (
        ORG_WRITE,
        lambda w: {
            f"p{w.tenant.provider.pk}-{k}": v
            for k, v in {
                "model": "gpt-4o-mini",
                "input_per_mtok": "0.1",
                "output_per_mtok": "0.2",
                "effective_from": "2030-01-01",
            }.items()  # fmt: skip
        },
    ),
    ("dashboard:account-token", "POST"): (EVERYONE, lambda w: {"scope": "write"}),
    # Budgets, limits, channels.
    ("budgets:new", "POST"): (
        TEAM_FORM,
        lambda w: {
            "organization": w.org.pk,
            "name": "b",
            "scope": "project",
            "project": w.project.pk,
            "amount_usd": "10",
            "period": "monthly",
            "timezone": "UTC",
            "mode": "hard",
            "alert_thresholds": "50",
        },  # fmt: skip
    ),
    ("budgets:toggle", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("budgets:edit", "POST"): (
        (OK, OK, 404, 403, 403, 404),
        lambda w: {
            "name": "project a, raised",
            "scope": "project",
            "project": w.project.pk,
            "amount_usd": "7",
            "period": "monthly",
            "timezone": "UTC",
            "mode": "hard",
            "alert_thresholds": "50",
        },  # fmt: skip
    ),
    ("budgets:delete", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("budgets:limit-edit", "POST"): (TEAM_WRITE, lambda w: {"requests_per_minute": "70"}),
    ("budgets:limit-delete", "POST"): (TEAM_WRITE, lambda w: {}),
    ("budgets:channel-edit", "POST"): (
        ORG_WRITE,
        lambda w: {"name": "renamed", "target": "http://127.0.0.1:9/hook", "is_active": "on"},
    ),
    ("budgets:channel-delete", "POST"): (ORG_WRITE, lambda w: {}),
    ("budgets:alert-ack", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("budgets:limit-new", "POST"): (TEAM_FORM, lambda w: {"project": w.project.pk, "requests_per_minute": "100"}),
    ("budgets:channel-new", "POST"): (
        ORG_WRITE[:5] + (400,),
        lambda w: {"organization": w.org.pk, "name": "ops", "kind": "email", "target": "ops@example.com"},
    ),
    # Cache.
    ("cache:project", "POST"): (
        TEAM_WRITE,
        lambda w: {
            "feature": "",
            "exact_enabled": "on",
            "similarity_threshold": "0.95",
            "ttl_seconds": "3600",
            "max_entries": "1000",
            "eviction": "lru",
            "deny_patterns": "",
        },  # fmt: skip
    ),
    ("cache:entry-delete", "POST"): (TEAM_WRITE, lambda w: {}),
    # Trials: the project's owner and its team's lead apply and stop them.
    ("opportunities:apply", "POST"): (TEAM_WRITE, lambda w: {"mode": "shadow", "days": "1", "quality_target": "0.95"}),
    ("opportunities:trial-stop", "POST"): (TEAM_WRITE, lambda w: {}),
    ("api-opportunity-apply", "POST"): (TEAM_WRITE, lambda w: {"mode": "shadow", "days": 1, "quality_target": 0.95}),
    ("api-trial-stop", "POST"): (TEAM_WRITE, lambda w: {}),
    ("cache:purge", "POST"): (TEAM_WRITE, lambda w: {}),
    # Routing.
    ("routing:rules", "POST"): (
        TEAM_WRITE,
        lambda w: {"name": "new", "primaries": "gpt-4o", **RULE_FORM},
    ),
    ("routing:rule", "POST"): (
        TEAM_WRITE,
        lambda w: {"name": "edited", "primaries": "", **RULE_FORM},
    ),
    ("routing:move", "POST"): (TEAM_WRITE, lambda w: {"direction": "down"}),
    ("routing:delete", "POST"): (TEAM_WRITE, lambda w: {}),
    # Deployments: organisation-wide, under a project's URL.
    ("deployments:list", "POST"): (
        ORG_WRITE_IN_PROJECT,
        lambda w: {
            "name": "qwen",
            "served_model_name": "qwen2.5",
            "model_path": "Qwen/Qwen2.5-7B",
            "gpu_type": "L4",
            "gpu_count": "1",
            "tensor_parallel_size": "1",
            "max_model_len": "8192",
            "quantization": "none",
            "port": "8123",
            "hourly_cost_usd": "1.5",
            "throughput_tokens_per_s": "500",
        },  # fmt: skip
    ),
    ("deployments:start", "POST"): (ORG_WRITE_IN_PROJECT, lambda w: {}),
    ("deployments:stop", "POST"): (ORG_WRITE_IN_PROJECT, lambda w: {}),
    # Reports: an export is a read (each role gets what it sees); an import books spend: a write.
    ("reports:job-new", "POST"): (ORG_READ, lambda w: {"kind": "ledger", "org": w.org.slug}),
    ("reports:import", "POST"): (
        TEAM_FORM[:5] + (404,),
        lambda w: (
            lambda: {
                "organization": w.org.pk,
                "project": w.project.pk,
                "file": SimpleUploadedFile(
                    "usage.csv",
                    b"start_time,model,input_tokens,output_tokens,cost_usd\n1756684800,gpt-4o-mini,10,5,0.5\n",
                ),
            }
        ),
    ),
    # The DRF API, with tokens.
    ("api-budgets", "POST"): (
        TEAM_FORM,
        lambda w: {
            "organization": w.org.slug,
            "name": "b",
            "scope": "project",
            "project": w.project.slug,
            "amount_usd": "10",
            "period": "monthly",
            "mode": "hard",
        },  # fmt: skip
    ),
    ("api-budget", "PUT"): (
        (OK, OK, 404, 403, 403, 404),
        lambda w: {
            "organization": w.org.slug,
            "name": "b2",
            "scope": "project",
            "project": w.project.slug,
            "amount_usd": "12",
            "period": "monthly",
            "mode": "soft",
        },  # fmt: skip
    ),
    ("api-budget", "PATCH"): ((OK, OK, 404, 403, 403, 404), lambda w: {"amount_usd": "20"}),
    ("api-budget", "DELETE"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("api-rate-limits", "POST"): (TEAM_FORM, lambda w: {"project": w.project.slug, "requests_per_minute": 10}),
    ("api-channels", "POST"): (
        ORG_WRITE[:5] + (400,),
        lambda w: {"organization": w.org.slug, "name": "ops", "kind": "email", "target": "ops@example.com"},
    ),
    ("api-channel", "PATCH"): (ORG_WRITE, lambda w: {"name": "renamed hook", "target": "http://127.0.0.1:9/other"}),
    ("api-channel", "DELETE"): (ORG_WRITE, lambda w: {}),
    ("api-rate-limit", "DELETE"): (TEAM_WRITE, lambda w: {}),
    ("api-alert-acknowledge", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("api-project-keys", "POST"): ((OK, OK, 404, OK, 403, 404), lambda w: {"name": "ci"}),
    ("api-key-revoke", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("api-routing-rules", "POST"): (
        TEAM_FORM,
        lambda w: {"project": w.project.slug, "name": "api rule", "action": "route", "primaries": ["gpt-4o"]},
    ),
    ("api-routing-rule", "PUT"): (
        TEAM_WRITE,
        lambda w: {"project": w.project.slug, "name": "renamed", "action": "route", "primaries": ["gpt-4o"]},
    ),
    ("api-routing-rule", "PATCH"): (TEAM_WRITE, lambda w: {"name": "renamed"}),
    ("api-routing-rule", "DELETE"): (TEAM_WRITE, lambda w: {}),
    ("api-routing-rule-move", "POST"): (TEAM_WRITE, lambda w: {"direction": "down"}),
    # The management API: projects, teams, members and roles.
    ("api-projects", "POST"): (
        (OK, OK, 403, 403, 403, 400),
        lambda w: {"organization": w.org.slug, "name": "api project", "team": w.tenant.team.slug},
    ),
    ("api-project", "PATCH"): (TEAM_WRITE, lambda w: {"name": "renamed"}),
    ("api-teams", "POST"): (ORG_WRITE_NAMED, lambda w: {"organization": w.org.slug, "name": "new team"}),
    ("api-team", "PATCH"): (ORG_WRITE, lambda w: {"name": "renamed team"}),
    ("api-members", "POST"): (
        ORG_WRITE_NAMED,
        lambda w: {"organization": w.org.slug, "user": "newcomer", "role": "developer"},
    ),
    ("api-member", "PATCH"): (ORG_WRITE, lambda w: {"role": "team_lead"}),
    ("api-member", "DELETE"): (ORG_WRITE, lambda w: {}),
    # Keys, providers, prices, aliases.
    ("api-key-rotate", "POST"): ((OK, OK, 404, 403, 403, 404), lambda w: {}),
    ("api-providers", "POST"): (
        ORG_WRITE_NAMED,
        lambda w: {
            "organization": w.org.slug,
            "name": "api second",
            "kind": "simulated",
            "base_url": w.tenant.provider.base_url,
        },  # fmt: skip
    ),
    ("api-provider", "PATCH"): (ORG_WRITE, lambda w: {"name": "renamed"}),
    ("api-prices", "POST"): (
        ORG_WRITE_NAMED,
        lambda w: {
            "provider": w.tenant.provider.pk,
            "model": "gpt-4o-mini",
            "input_per_mtok": "0.1",
            "output_per_mtok": "0.2",
            "effective_from": "2030-01-01",
        },  # fmt: skip
    ),
    ("api-project-aliases", "POST"): (
        TEAM_WRITE,
        lambda w: {"alias": "default-chat", "provider": w.tenant.provider.pk, "model": "gpt-4o"},
    ),
    ("api-project-alias", "DELETE"): (TEAM_WRITE, lambda w: {}),
    # Cache.
    ("api-cache-policies", "POST"): (TEAM_WRITE, lambda w: {"feature": "support", "ttl_seconds": 60}),
    ("api-cache-policy", "PATCH"): (TEAM_WRITE, lambda w: {"ttl_seconds": 99}),
    ("api-cache-entry", "DELETE"): (TEAM_WRITE, lambda w: {}),
    ("api-cache-purge", "POST"): (TEAM_WRITE, lambda w: {}),
    # Pruning policies (prune.manage: the owner and the project's lead).
    ("opportunities:pruning", "POST"): (
        TEAM_WRITE,
        lambda w: {"feature": "support", "cap_enabled": "on", "max_tokens_cap": "300", "history_turns": "8"},
    ),
    ("api-pruning", "POST"): (TEAM_WRITE, lambda w: {"feature": "support", "history_enabled": True}),
    # Deployments.
    ("deployments:api-deployments", "POST"): (
        ORG_WRITE_NAMED,
        lambda w: {
            "organization": w.org.slug,
            "name": "api qwen",
            "served_model_name": "qwen2.5",
            "model_path": "Qwen/Qwen2.5-7B",
            "gpu_type": "L4",
            "port": 8124,
            "hourly_cost_usd": "1.5",
        },
    ),  # fmt: skip
    ("deployments:api-deployment-start", "POST"): (ORG_WRITE, lambda w: {}),
    ("deployments:api-deployment-stop", "POST"): (ORG_WRITE, lambda w: {}),
    # Exports are reads (each role gets what it sees); an import books spend.
    ("api-exports", "POST"): ((OK, OK, OK, OK, OK, 400), lambda w: {"kind": "ledger", "organization": w.org.slug}),
    ("api-imports", "POST"): (
        (OK, OK, 400, 403, 403, 400),
        lambda w: (
            lambda: {
                "organization": w.org.slug,
                "project": w.project.slug,
                "file": SimpleUploadedFile(
                    "usage.csv",
                    b"start_time,model,input_tokens,output_tokens,cost_usd\n1756684800,gpt-4o-mini,10,5,0.5\n",
                ),
            }
        ),
    ),
    # One's own API token.
    ("api-account-token", "POST"): (EVERYONE, lambda w: {"scope": "read"}),
    ("api-account-token", "DELETE"): (EVERYONE, lambda w: {}),
}

READS: dict[str, Expect] = {
    "dashboard:home": EVERYONE,
    "dashboard:project": PROJECT_READ,
    "dashboard:providers": ORG_READ,
    "dashboard:provider-edit": OWNER_ONLY_READ,
    "dashboard:overview": EVERYONE,
    "dashboard:account-token": EVERYONE,
    "dashboard:ledger": EVERYONE,
    "dashboard:ledger-export": EVERYONE,
    "batches": PROJECT_READ,
    "budgets:list": EVERYONE,
    "budgets:detail": PROJECT_READ,
    "budgets:alerts": EVERYONE,
    "budgets:edit": (OK, OK, 404, 403, 403, 404),
    "budgets:limit-edit": TEAM_WRITE,
    "budgets:channel-edit": ORG_WRITE,
    # A form's URL reloaded (GET) goes back to the budgets page, whoever asks.
    "budgets:new": EVERYONE,
    "budgets:limit-new": EVERYONE,
    "budgets:channel-new": EVERYONE,
    "cache:project": PROJECT_READ,
    "cache:entry": CACHE_CONTENT,
    "routing:rules": PROJECT_READ,
    "routing:rule": PROJECT_READ,
    "deployments:list": PROJECT_READ,
    "deployments:detail": PROJECT_READ,
    "deployments:break-even": PROJECT_READ,
    "deployments:api-break-even": PROJECT_READ,
    "reports:report": EVERYONE,
    "reports:export-ledger": ORG_READ,
    "reports:export-rollups": ORG_READ,
    "reports:export-focus": ORG_READ,
    "reports:job": OWN_JOB,
    "reports:job-status": OWN_JOB,
    "reports:job-download": OWN_JOB,
    "reports:import": (OK, OK, OK, 403, 403, OK),  # leads import into their team's projects; the outsider into theirs
    "api-projects": EVERYONE,
    "api-project": PROJECT_READ,
    "api-project-keys": PROJECT_READ,
    "api-ledger": EVERYONE,
    "api-series-spend": EVERYONE,
    "api-series-summary": EVERYONE,
    "api-providers": EVERYONE,
    "api-prices": EVERYONE,
    "api-budgets": EVERYONE,
    "api-budget": PROJECT_READ,
    "api-budget-status": PROJECT_READ,
    "api-rate-limits": EVERYONE,
    "api-rate-limit": PROJECT_READ,
    "api-channels": EVERYONE,
    "api-channel": ORG_READ,
    "api-alerts": EVERYONE,
    "api-routing-rules": EVERYONE,
    "api-routing-rule": PROJECT_READ,
    "api-routing-rule-stats": PROJECT_READ,
    "api-teams": EVERYONE,
    "api-team": ORG_READ,
    "api-members": EVERYONE,
    "api-member": ORG_READ,
    "api-key": PROJECT_READ,
    "api-provider": ORG_READ,
    "api-project-aliases": PROJECT_READ,
    "api-project-alias": PROJECT_READ,
    "api-cache-policies": PROJECT_READ,
    "api-cache-policy": PROJECT_READ,
    "api-cache-entries": CACHE_CONTENT,
    "api-cache-entry": CACHE_CONTENT,
    "opportunities:project": PROJECT_READ,
    "api-opportunities": PROJECT_READ,
    "api-trials": PROJECT_READ,
    "opportunities:pruning": PROJECT_READ,
    "api-pruning": PROJECT_READ,
    "deployments:api-deployments": EVERYONE,
    "deployments:api-deployment": ORG_READ,
    "api-exports": EVERYONE,
    "api-export": OWN_JOB,
    "api-export-download": OWN_JOB,
    "api-account-token": EVERYONE,
    "api-audit": AUDIT_READ,
    "api-schema": EVERYONE,
    "api-docs": EVERYONE,
    "audit:log": AUDIT_READ,
    "audit:export": AUDIT_READ,
}

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _routes() -> dict[str, Any]:
    """Every named URL of the URLconf (admin aside), by its reverse() name, with its view."""
    found: dict[str, Any] = {}

    def walk(patterns: list[Any], namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace == "admin":
                    continue
                walk(pattern.url_patterns, f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace)
            elif isinstance(pattern, URLPattern):
                assert pattern.name, f"unnamed URL {pattern.pattern}: name it so the matrix can list it"
                found[f"{namespace}{pattern.name}"] = pattern.callback

    walk(get_resolver().url_patterns, "")
    return found


def _is_api(view: Any) -> bool:
    return hasattr(view, "cls")  # DRF's as_view() marks its views


def _url(w: World, name: str) -> str:
    return reverse(name, kwargs=_kwargs(w).get(name, {})) + _query(w).get(name, "")


def _request(w: World, role: str, method: str, url: str, api: bool, body: Any = None) -> Any:
    client = Client()
    if api:
        headers = {"Authorization": f"Token {w.tokens[role]}"}
        if callable(body):  # an upload: multipart, as a file is sent
            return client.post(url, body(), headers=headers)
        data = json.dumps(body or {})
        return client.generic(method, url, data, content_type="application/json", headers=headers)
    login(client, w.users[role])
    if method == "GET":
        return client.get(url)
    return client.post(url, body() if callable(body) else (body or {}))


def _allowed_methods(w: World, name: str, view: Any) -> set[str]:
    """What the URL itself says it answers (its Allow header), asked as the owner."""
    url = _url(w, name)
    response = _request(w, "owner", "OPTIONS", url, api=True) if _is_api(view) else _options(w, url)
    return {m.strip() for m in response.get("Allow", "").split(",") if m.strip()}


def _options(w: World, url: str) -> Any:
    return login(Client(), w.users["owner"]).options(url)


def _fingerprint() -> list[Any]:
    """What any write on these URLs would change."""
    return [
        list(Project.objects.order_by("pk").values_list("pk", "name", "default_provider_id")),
        list(ApiKey.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(ModelAlias.objects.order_by("pk").values_list("pk", "alias", "model")),
        list(Provider.objects.order_by("pk").values_list("pk", "name", "base_url", "is_active")),
        list(Price.objects.order_by("pk").values_list("pk")),
        list(Budget.objects.order_by("pk").values_list("pk", "name", "amount_usd", "mode", "is_active")),
        list(RateLimit.objects.order_by("pk").values_list("pk", "requests_per_minute")),
        list(NotificationChannel.objects.order_by("pk").values_list("pk", "name", "target", "is_active")),
        list(Alert.objects.order_by("pk").values_list("pk", "acknowledged_at")),
        list(CachePolicy.objects.order_by("pk").values_list("pk", "ttl_seconds")),
        list(CacheEntry.objects.order_by("pk").values_list("pk")),
        list(RoutingRule.objects.order_by("pk").values_list("pk", "name", "position")),
        list(Trial.objects.order_by("pk").values_list("pk", "state", "quality_target")),
        list(PrunePolicy.objects.order_by("pk").values_list("pk", "cap_enabled", "history_enabled")),
        list(Deployment.objects.order_by("pk").values_list("pk", "status")),
        list(ExportJob.objects.order_by("pk").values_list("pk")),
        list(LedgerEntry.objects.order_by("pk").values_list("pk")),
        list(Token.objects.order_by("user_id").values_list("user_id", "key")),
        list(Team.objects.order_by("pk").values_list("pk", "name")),
        list(Membership.objects.order_by("pk").values_list("pk", "role", "team_id")),
        list(ModelAlias.objects.order_by("pk").values_list("pk")),
        # A refused write records nothing; an allowed one, its audit event.
        AuditEvent.objects.count(),
    ]


def _check(status: int, expected: int | str) -> bool:
    return 200 <= status < 400 if expected == OK else status == expected


def test_every_write_url_and_api_verb_follows_the_matrix(world: World) -> None:
    routes = _routes()
    walked: set[tuple[str, str]] = set()
    failures: list[str] = []
    for name, view in sorted(routes.items()):
        if name in PUBLIC or name in KEY_AUTH:
            continue
        for method in sorted(_allowed_methods(world, name, view) & WRITE_METHODS):
            assert (name, method) in WRITES, f"{method} {name} is not in the role matrix test: add who may use it"
            walked.add((name, method))
            expected, body_for = WRITES[(name, method)]
            url = _url(world, name)
            for role, want in zip(ROLES, expected, strict=True):
                with transaction.atomic():
                    before = _fingerprint()
                    response = _request(world, role, method, url, _is_api(view), body_for(world))
                    changed = _fingerprint() != before
                    transaction.set_rollback(True)
                if not _check(response.status_code, want):
                    failures.append(f"{method} {name} as {role}: {response.status_code}, expected {want}")
                elif want == OK and not changed:
                    failures.append(f"{method} {name} as {role}: {response.status_code} but nothing changed")
                elif want != OK and changed:
                    failures.append(f"{method} {name} as {role}: refused ({want}) yet the database changed")
    assert not failures, "\n".join(failures)
    assert walked == set(WRITES), f"matrix rows for URLs that no longer exist: {set(WRITES) - walked}"


def test_every_read_url_and_api_get_follows_the_matrix(world: World) -> None:
    routes = _routes()
    walked: set[str] = set()
    failures: list[str] = []
    for name, view in sorted(routes.items()):
        if name in PUBLIC or name in KEY_AUTH or "GET" not in _allowed_methods(world, name, view):
            continue
        assert name in READS, f"GET {name} is not in the role matrix test: add who may read it"
        walked.add(name)
        url = _url(world, name)
        for role, want in zip(ROLES, READS[name], strict=True):
            status = _request(world, role, "GET", url, _is_api(view)).status_code
            if not _check(status, want):
                failures.append(f"GET {name} as {role}: {status}, expected {want}")
    assert not failures, "\n".join(failures)
    assert walked == set(READS), f"matrix rows for URLs that no longer exist: {set(READS) - walked}"


def test_key_authenticated_endpoints_ignore_sessions_and_roles(world: World) -> None:
    """/v1/files and /v1/batches answer API keys only: a signed-in owner without a key gets OpenAI's 401."""
    client = login(Client(), world.users["owner"])
    for url in ("/v1/files", "/v1/batches"):
        response = client.get(url)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_admin_is_for_staff_only(world: World) -> None:
    for role in ROLES:
        response = login(Client(), world.users[role]).get("/admin/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"], role
