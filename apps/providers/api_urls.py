from __future__ import annotations

from django.urls import path

from apps.providers import api

urlpatterns = [
    path("providers/", api.ProviderList.as_view(), name="api-providers"),
    path("providers/<int:pk>/", api.ProviderDetail.as_view(), name="api-provider"),
    path("prices/", api.PriceList.as_view(), name="api-prices"),
    path("projects/<slug:slug>/aliases/", api.AliasList.as_view(), name="api-project-aliases"),
    path("projects/<slug:slug>/aliases/<int:pk>/", api.AliasDetail.as_view(), name="api-project-alias"),
]
