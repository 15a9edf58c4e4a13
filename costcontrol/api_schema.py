"""The OpenAPI schema's generator: drf-spectacular's, with the error answers every operation may give.

Apart from costcontrol/api.py, which DRF's settings import (parsers, the exception handler) before
drf-spectacular may be imported.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from costcontrol.api import ErrorSerializer

_ERRORS = {
    "400": "The request is not valid (bad fields or parameters, malformed body).",
    "401": "No credentials, or an invalid or expired token.",
    "403": "Your role, or a read-only token, does not allow this.",
    "404": "No such object among those you may see.",
    "405": "The method is not allowed here.",
    "415": "The body's content type is not supported.",
    "429": "Too many requests (see Retry-After).",
}


class ApiSchema(AutoSchema):
    """drf-spectacular's schema, with the error answers every operation may give, in their one shape."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, description in _ERRORS.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=description), code, direction=direction
                )
        return responses
