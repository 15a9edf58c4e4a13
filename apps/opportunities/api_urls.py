from __future__ import annotations

from django.urls import path

from apps.opportunities import api, pruning_api, trial_api

urlpatterns = [
    path("projects/<slug:slug>/opportunities/", api.OpportunityList.as_view(), name="api-opportunities"),
    path(
        "projects/<slug:slug>/opportunities/<str:opportunity_id>/apply",
        trial_api.OpportunityApply.as_view(),
        name="api-opportunity-apply",
    ),
    path("projects/<slug:slug>/trials/", trial_api.TrialList.as_view(), name="api-trials"),
    path("projects/<slug:slug>/trials/<int:pk>/stop", trial_api.TrialStop.as_view(), name="api-trial-stop"),
    path("projects/<slug:slug>/pruning/", pruning_api.PruningPolicies.as_view(), name="api-pruning"),
]
