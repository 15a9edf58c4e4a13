from __future__ import annotations

from django.urls import path

from apps.deployments import api, views

app_name = "deployments"

urlpatterns = [
    path("projects/<slug:slug>/deployments/", views.deployments_page, name="list"),
    path("projects/<slug:slug>/deployments/<int:pk>/", views.deployment_page, name="detail"),
    *(
        path(
            f"projects/<slug:slug>/deployments/<int:pk>/{action}/",
            views.deployment_action_view,
            {"action": action},
            name=action,
        )  # fmt: skip
        for action in ("start", "stop")
    ),
    path("projects/<slug:slug>/break-even/", views.break_even_page, name="break-even"),
    path("api/projects/<slug:slug>/break-even/", api.BreakEvenView.as_view(), name="api-break-even"),
    path("api/deployments/", api.DeploymentList.as_view(), name="api-deployments"),
    path("api/deployments/<int:pk>/", api.DeploymentDetail.as_view(), name="api-deployment"),
    path("api/deployments/<int:pk>/start/", api.DeploymentAction.as_view(action="start"), name="api-deployment-start"),
    path("api/deployments/<int:pk>/stop/", api.DeploymentAction.as_view(action="stop"), name="api-deployment-stop"),
]
