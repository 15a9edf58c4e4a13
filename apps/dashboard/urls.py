from __future__ import annotations

from django.urls import path

from apps.dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("orgs/<slug:org_slug>/projects/new/", views.project_new, name="project-new"),
    path("projects/<slug:slug>/", views.project_detail, name="project"),
    path("projects/<slug:slug>/keys/", views.key_new, name="key-new"),
    path("projects/<slug:slug>/keys/<slug:lookup_id>/revoke/", views.key_revoke_view, name="key-revoke"),
    path("projects/<slug:slug>/aliases/", views.alias_new, name="alias-new"),
    path("projects/<slug:slug>/default-provider/", views.default_provider_set, name="default-provider"),
    path("orgs/<slug:org_slug>/providers/", views.providers, name="providers"),
    path("orgs/<slug:org_slug>/providers/<int:pk>/edit/", views.provider_edit, name="provider-edit"),
    path("orgs/<slug:org_slug>/providers/<int:pk>/prices/", views.price_new, name="price-new"),
    path("overview/", views.overview, name="overview"),
    path("account/token/", views.account_token, name="account-token"),
    path("ledger/", views.ledger, name="ledger"),
    path("ledger/export.csv", views.ledger_export, name="ledger-export"),
]
