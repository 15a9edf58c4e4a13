from __future__ import annotations

from django.urls import path

from apps.cache import views

app_name = "cache"

urlpatterns = [
    path("projects/<slug:slug>/cache/", views.cache_page, name="project"),
    path("projects/<slug:slug>/cache/entries/<int:pk>/", views.entry_detail, name="entry"),
    path("projects/<slug:slug>/cache/entries/<int:pk>/delete/", views.entry_delete, name="entry-delete"),
    path("projects/<slug:slug>/cache/purge/", views.purge, name="purge"),
]
