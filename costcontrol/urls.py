from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from costcontrol.api import api_not_found
from costcontrol.api_docs import ApiDocsView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("apps.batches.urls")),
    path("api/", include("apps.budgets.api_urls")),
    path("api/", include("apps.dashboard.api_urls")),
    path("api/", include("apps.routing.api_urls")),
    path("api/", include("apps.tenancy.api_urls")),
    path("api/", include("apps.keys.api_urls")),
    path("api/", include("apps.providers.api_urls")),
    path("api/", include("apps.cache.api_urls")),
    path("api/", include("apps.reports.api_urls")),
    path("api/", include("apps.audit.api_urls")),
    path("api/", include("apps.opportunities.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("apps.budgets.urls")),
    path("", include("apps.cache.urls")),
    path("", include("apps.routing.urls")),
    path("", include("apps.deployments.urls")),
    path("", include("apps.reports.urls")),
    path("", include("apps.dashboard.urls")),
    path("", include("apps.audit.urls")),
    path("", include("apps.opportunities.urls")),
    # Last: whatever no endpoint above serves under /api/ is a 404 in the API's error shape.
    re_path(r"^api/", api_not_found, name="api-not-found"),
]
