from __future__ import annotations

from django.urls import path

from apps.routing import api

urlpatterns = [
    path("routing-rules/", api.RuleList.as_view(), name="api-routing-rules"),
    path("routing-rules/<int:pk>/", api.RuleDetail.as_view(), name="api-routing-rule"),
    path("routing-rules/<int:pk>/move/", api.RuleMove.as_view(), name="api-routing-rule-move"),
    path("routing-rules/<int:pk>/stats/", api.RuleStatsView.as_view(), name="api-routing-rule-stats"),
]
