from __future__ import annotations

from django.urls import path

from apps.keys import api

urlpatterns = [
    path("projects/<slug:slug>/keys/", api.ProjectKeys.as_view(), name="api-project-keys"),
    path("keys/<slug:lookup_id>/", api.KeyDetail.as_view(), name="api-key"),
    path("keys/<slug:lookup_id>/revoke/", api.KeyRevoke.as_view(), name="api-key-revoke"),
    path("keys/<slug:lookup_id>/rotate/", api.KeyRotate.as_view(), name="api-key-rotate"),
]
