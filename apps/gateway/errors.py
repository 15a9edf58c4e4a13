"""The gateway's errors: OpenAI's JSON shape, defined once in ``apps.core.errors``."""

from __future__ import annotations

from apps.core.errors import (
    GatewayError,
    bad_request,
    invalid_api_key,
    model_not_allowed,
    model_not_found,
    upstream_unavailable,
)

__all__ = [
    "GatewayError",
    "bad_request",
    "invalid_api_key",
    "model_not_allowed",
    "model_not_found",
    "upstream_unavailable",
]
