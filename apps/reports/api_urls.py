from __future__ import annotations

from django.urls import path

from apps.reports import api

urlpatterns = [
    path("exports/", api.ExportList.as_view(), name="api-exports"),
    path("exports/<int:pk>/", api.ExportDetail.as_view(), name="api-export"),
    path("exports/<int:pk>/download/", api.ExportDownload.as_view(), name="api-export-download"),
    path("imports/", api.UsageImport.as_view(), name="api-imports"),
]
