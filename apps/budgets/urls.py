from __future__ import annotations

from django.urls import path

from apps.budgets import views

app_name = "budgets"

urlpatterns = [
    path("budgets/", views.budgets, name="list"),
    path("budgets/new/", views.budget_new, name="new"),
    path("budgets/<int:pk>/", views.budget_detail, name="detail"),
    path("budgets/<int:pk>/toggle/", views.budget_toggle, name="toggle"),
    path("budgets/limits/new/", views.rate_limit_new, name="limit-new"),
    path("budgets/channels/new/", views.channel_new, name="channel-new"),
    path("alerts/", views.alerts, name="alerts"),
]
