from __future__ import annotations

from django.urls import path

from apps.budgets import views

app_name = "budgets"

urlpatterns = [
    path("budgets/", views.budgets, name="list"),
    path("budgets/new/", views.budget_new, name="new"),
    path("budgets/<int:pk>/", views.budget_detail, name="detail"),
    path("budgets/<int:pk>/toggle/", views.budget_toggle, name="toggle"),
    path("budgets/<int:pk>/edit/", views.budget_edit, name="edit"),
    path("budgets/<int:pk>/delete/", views.budget_delete, name="delete"),
    path("budgets/limits/new/", views.rate_limit_new, name="limit-new"),
    path("budgets/limits/<int:pk>/edit/", views.rate_limit_edit, name="limit-edit"),
    path("budgets/limits/<int:pk>/delete/", views.rate_limit_delete, name="limit-delete"),
    path("budgets/channels/new/", views.channel_new, name="channel-new"),
    path("budgets/channels/<int:pk>/edit/", views.channel_edit, name="channel-edit"),
    path("budgets/channels/<int:pk>/delete/", views.channel_delete, name="channel-delete"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/<int:pk>/acknowledge/", views.alert_acknowledge, name="alert-ack"),
]
