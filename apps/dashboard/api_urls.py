from __future__ import annotations

from django.urls import path

from apps.dashboard import api

urlpatterns = [
    path("projects/", api.ProjectList.as_view(), name="api-projects"),
    path("projects/<slug:slug>/", api.ProjectDetail.as_view(), name="api-project"),
    path("projects/<slug:slug>/keys/", api.ProjectKeys.as_view(), name="api-project-keys"),
    path("keys/<slug:lookup_id>/revoke/", api.KeyRevoke.as_view(), name="api-key-revoke"),
    path("ledger/", api.LedgerList.as_view(), name="api-ledger"),
    path("series/spend/", api.SeriesSpend.as_view(), name="api-series-spend"),
    path("series/summary/", api.SeriesSummary.as_view(), name="api-series-summary"),
    path("providers/", api.ProviderList.as_view(), name="api-providers"),
    path("prices/", api.PriceList.as_view(), name="api-prices"),
]
