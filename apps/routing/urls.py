from __future__ import annotations

from django.urls import path

from apps.routing import views

app_name = "routing"

urlpatterns = [
    path("projects/<slug:slug>/routing/", views.rules_page, name="rules"),
    path("projects/<slug:slug>/routing/<int:pk>/", views.rule_page, name="rule"),
    path("projects/<slug:slug>/routing/<int:pk>/move/", views.rule_move_view, name="move"),
    path("projects/<slug:slug>/routing/<int:pk>/delete/", views.rule_delete_view, name="delete"),
]
