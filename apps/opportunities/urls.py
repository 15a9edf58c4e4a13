from __future__ import annotations

from django.urls import path

from apps.opportunities import pruning_views, views

app_name = "opportunities"

urlpatterns = [
    path("projects/<slug:slug>/opportunities/", views.opportunities_page, name="project"),
    path("projects/<slug:slug>/opportunities/<str:opportunity_id>/apply", views.opportunity_apply, name="apply"),
    path("projects/<slug:slug>/trials/<int:pk>/stop", views.trial_stop_view, name="trial-stop"),
    path("projects/<slug:slug>/pruning/", pruning_views.pruning_page, name="pruning"),
]
