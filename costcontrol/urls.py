from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("apps.batches.urls")),
    path("api/", include("apps.budgets.api_urls")),
    path("api/", include("apps.dashboard.api_urls")),
    path("api/", include("apps.routing.api_urls")),
    path("", include("apps.budgets.urls")),
    path("", include("apps.cache.urls")),
    path("", include("apps.routing.urls")),
    path("", include("apps.deployments.urls")),
    path("", include("apps.reports.urls")),
    path("", include("apps.dashboard.urls")),
]
