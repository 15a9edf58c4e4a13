"""Files and Batches endpoints (``costcontrol/asgi.py`` routes /v1/files and /v1/batches here) and the batches page."""

from __future__ import annotations

from django.urls import path, re_path

from apps.batches import api, views

urlpatterns = [
    path("v1/files", api.files, name="v1-files"),
    path("v1/files/<str:file_id>", api.file_detail, name="v1-file"),
    path("v1/files/<str:file_id>/content", api.file_content, name="v1-file-content"),
    path("v1/batches", api.batches, name="v1-batches"),
    path("v1/batches/<str:batch_id>", api.batch_detail, name="v1-batch"),
    path("v1/batches/<str:batch_id>/cancel", api.batch_cancel_view, name="v1-batch-cancel"),
    # Anything else under these two prefixes is the API's 404, never Django's HTML page.
    re_path(r"^v1/(?:files|batches)(?P<rest>/.*)$", api.unknown_url, name="v1-unknown"),
    path("projects/<slug:slug>/batches/", views.batches_page, name="batches"),
]
