from __future__ import annotations

from django.urls import path

from apps.opportunities import views

app_name = "opportunities"

urlpatterns = [
    path("projects/<slug:slug>/opportunities/", views.opportunities_page, name="project"),
]
