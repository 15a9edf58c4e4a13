from __future__ import annotations

from django.urls import path

from apps.opportunities import api

urlpatterns = [
    path("projects/<slug:slug>/opportunities/", api.OpportunityList.as_view(), name="api-opportunities"),
]
