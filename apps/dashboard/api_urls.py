from __future__ import annotations

from django.urls import path

from apps.dashboard import api

urlpatterns = [
    path("ledger/", api.LedgerList.as_view(), name="api-ledger"),
    path("series/spend/", api.SeriesSpend.as_view(), name="api-series-spend"),
    path("series/summary/", api.SeriesSummary.as_view(), name="api-series-summary"),
    path("account/token/", api.AccountToken.as_view(), name="api-account-token"),
]
