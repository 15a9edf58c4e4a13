from __future__ import annotations

from django.urls import path

from apps.tenancy import api

urlpatterns = [
    path("projects/", api.ProjectList.as_view(), name="api-projects"),
    path("projects/<slug:slug>/", api.ProjectDetail.as_view(), name="api-project"),
    path("teams/", api.TeamList.as_view(), name="api-teams"),
    path("teams/<int:pk>/", api.TeamDetail.as_view(), name="api-team"),
    path("members/", api.MemberList.as_view(), name="api-members"),
    path("members/<int:pk>/", api.MemberDetail.as_view(), name="api-member"),
]
