from __future__ import annotations

from django.urls import path

from apps.cache import api

urlpatterns = [
    path("projects/<slug:slug>/cache/policies/", api.PolicyList.as_view(), name="api-cache-policies"),
    path("projects/<slug:slug>/cache/policies/<int:pk>/", api.PolicyDetail.as_view(), name="api-cache-policy"),
    path("projects/<slug:slug>/cache/entries/", api.EntryList.as_view(), name="api-cache-entries"),
    path("projects/<slug:slug>/cache/entries/<int:pk>/", api.EntryDetail.as_view(), name="api-cache-entry"),
    path("projects/<slug:slug>/cache/purge/", api.Purge.as_view(), name="api-cache-purge"),
]
