"""DRF API: the break-even comparison as JSON, with the same assumptions as the page's form."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.deployments.breakeven import BreakEvenRow
from apps.deployments.views import break_even_for
from apps.tenancy.selectors import projects_for


def _money(value: Decimal) -> str:
    return f"{value:.6f}"


def _row(row: BreakEvenRow) -> dict[str, Any]:
    return {
        "model": row.model,
        "requests": row.requests,
        "monthly_output_tokens": int(row.monthly_output_tokens),
        "monthly_tokens": int(row.monthly_tokens),
        "api_monthly_usd": _money(row.api_monthly_usd),
        "replicas": row.replicas,
        "self_hosted_monthly_usd": _money(row.self_hosted_monthly_usd),
        "monthly_saving_usd": _money(row.monthly_saving_usd),
        "crossover_output_tokens": None if row.crossover_output_tokens is None else int(row.crossover_output_tokens),
        "crossover_tokens": None if row.crossover_tokens is None else int(row.crossover_tokens),
    }


class BreakEvenView(APIView):
    """``GET /api/projects/<slug>/break-even/``: query parameters as the page's form.

    ``days``, ``deployment`` (id), ``hourly_cost_usd``, ``throughput_tokens_per_s``, ``utilisation_percent``.
    """

    def get(self, request: Request, slug: str) -> Response:
        project = generics.get_object_or_404(projects_for(user=request.user), slug=slug)
        form, result, window = break_even_for(project=project, params=request.query_params)
        if result is None:
            return Response({"errors": form.errors.get_json_data()}, status=400)
        a = result.assumptions
        return Response(
            {
                "project": project.slug,
                "since": window["since"],
                "until": window["until"],
                "assumptions": {
                    "days": a.days,
                    "deployment": a.deployment_name or None,
                    "hourly_cost_usd": str(a.hourly_cost_usd),
                    "throughput_tokens_per_s": str(a.throughput_tokens_per_s),
                    "utilisation_percent": str(a.utilisation_percent),
                    "hours_per_month": 730,
                    "replica_monthly_usd": _money(a.replica_monthly_usd),
                    "replica_monthly_output_tokens": int(a.replica_monthly_tokens),
                },
                "models": [_row(row) for row in result.rows],
                "total": _row(result.total) if result.total else None,
                "verdict": result.verdict,
            }
        )
