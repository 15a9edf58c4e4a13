from __future__ import annotations

from django.urls import path

from apps.audit import api

urlpatterns = [
    path("audit/", api.AuditList.as_view(), name="api-audit"),
]
