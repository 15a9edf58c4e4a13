from __future__ import annotations

from django.urls import path

from apps.budgets import api

urlpatterns = [
    path("budgets/", api.BudgetList.as_view(), name="api-budgets"),
    path("budgets/<int:pk>/", api.BudgetDetail.as_view(), name="api-budget"),
    path("budgets/<int:pk>/status/", api.BudgetStatusView.as_view(), name="api-budget-status"),
    path("rate-limits/", api.RateLimitList.as_view(), name="api-rate-limits"),
    path("rate-limits/<int:pk>/", api.RateLimitDetail.as_view(), name="api-rate-limit"),
    path("channels/", api.ChannelList.as_view(), name="api-channels"),
    path("channels/<int:pk>/", api.ChannelDetail.as_view(), name="api-channel"),
    path("alerts/", api.AlertList.as_view(), name="api-alerts"),
    path("alerts/<int:pk>/acknowledge/", api.AlertAcknowledgeView.as_view(), name="api-alert-acknowledge"),
]
