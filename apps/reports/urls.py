from __future__ import annotations

from django.urls import path

from apps.reports import views

app_name = "reports"

urlpatterns = [
    path("reports/", views.report, name="report"),
    path("reports/export/ledger.csv", views.export_ledger, name="export-ledger"),
    path("reports/export/rollups.csv", views.export_rollups, name="export-rollups"),
    path("reports/export/focus.csv", views.export_focus, name="export-focus"),
    path("reports/exports/", views.export_job_new, name="job-new"),
    path("reports/exports/<int:pk>/", views.export_job, name="job"),
    path("reports/exports/<int:pk>/status.json", views.export_job_status, name="job-status"),
    path("reports/exports/<int:pk>/download", views.export_job_download, name="job-download"),
    path("reports/import/", views.usage_import, name="import"),
]
