"""The API's docs page. Apart from costcontrol/api.py: drf-spectacular's views import the schema class
named in the settings, which lives there."""

from __future__ import annotations

from drf_spectacular.views import SpectacularSwaggerSplitView


class ApiDocsView(SpectacularSwaggerSplitView):
    """/api/docs/: Swagger UI, its page and its start-up script as two requests (no inline script, for
    the CSP). It renders HTML only, so OPTIONS is not offered (DRF would answer it with JSON metadata)."""

    metadata_class = None
