"""What every endpoint under /api/ shares: one error shape (costcontrol/api_schema.py documents it on
every operation of the OpenAPI schema), query-string dates, and a 404 for unknown paths.

Every error, whatever raised it (a serializer, a service's ``ValidationError``, the role matrix's
``PermissionDenied``, a 404 lookup, authentication, throttling, an unknown path under /api/), is::

    {"error": {"type": "validation_error", "message": "…", "fields": {"name": ["This field is required."]}}}

``type`` is one of ``ERROR_TYPES``; ``fields`` maps a field (``a.b`` for nested ones) to its messages
and is empty for errors that are not about fields.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers
from rest_framework.views import exception_handler

from costcontrol.forms import service_error_detail

# DRF's codes, except that its "invalid" reads better as what it is.
ERROR_TYPES = (
    "validation_error", "parse_error", "not_authenticated", "authentication_failed", "permission_denied",
    "not_found", "method_not_allowed", "not_acceptable", "unsupported_media_type", "conflict", "throttled",
)  # fmt: skip


def _messages(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [m for value in detail.values() for m in _messages(value)]
    if isinstance(detail, list):
        return [m for value in detail for m in _messages(value)]
    return [str(detail)]


def _fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Field errors flattened to ``{"a.b": [messages]}`` (nested serializers, list items)."""
    found: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                found.update(_fields(value, name))
            elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
                for index, item in enumerate(value):
                    found.update(_fields(item, f"{name}.{index}") if isinstance(item, dict) else {})
            else:
                found[name] = _messages(value)
    return found


_GENERAL = ("non_field_errors", "__all__")


def error_body(exc: exceptions.APIException) -> dict[str, Any]:
    code = exc.default_code if isinstance(exc.default_code, str) else "error"
    kind = "validation_error" if code == "invalid" else code
    detail = exc.detail
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        # DRF's name for errors about no one field, and Django's (a model's full_clean in a service).
        general = _messages([detail.get(key, []) for key in _GENERAL])
        fields = _fields({k: v for k, v in detail.items() if k not in _GENERAL})
        message = " ".join(general) if general else "Some fields are not valid; see fields."
    else:
        message = " ".join(_messages(detail))
    return {"error": {"type": kind, "message": message, "fields": fields}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Any:
    """DRF's handler, with services' validation errors as 400s, and every answer in the one error shape."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(service_error_detail(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        response.data = error_body(exc)
    return response


def form_errors(form: Any) -> exceptions.ValidationError:
    """A Django form's errors as the API's validation error (form-wide ones as ``non_field_errors``)."""
    errors = form.errors.get_json_data()
    return exceptions.ValidationError(
        {
            ("non_field_errors" if name == "__all__" else name): [e["message"] for e in found]
            for name, found in errors.items()
        }
    )


def query_moment(value: str | None, *, name: str, end_of_day: bool = False) -> dt.datetime | None:
    """An ISO datetime, or a date meaning its midnight (the next one for ``until``)."""
    if not value:
        return None
    try:
        # parse_datetime would read a bare date as its midnight, losing "until the end of that day".
        day = parse_date(value)
        moment = None if day is not None else parse_datetime(value)
        if day is not None:
            moment = dt.datetime.combine(day + dt.timedelta(days=1 if end_of_day else 0), dt.time.min)
        if moment is not None:
            # In UTC: Postgres takes offsets up to ±15:59 only, Python up to ±23:59.
            moment = (timezone.make_aware(moment) if timezone.is_naive(moment) else moment).astimezone(dt.UTC)
    except (ValueError, OverflowError):  # not a date, or past either end of the calendar
        moment = None
    if moment is None:
        raise exceptions.ValidationError({name: "Use an ISO date or datetime."})
    return moment


@csrf_exempt  # it changes nothing, and must answer every method in the API's shape, not CSRF's HTML page
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any path under /api/ that no endpoint serves: a 404 in the API's shape, not an HTML page."""
    return JsonResponse(error_body(exceptions.NotFound("No such endpoint.")), status=404)


class ApiQueryGuardMiddleware:
    """Under /api/, a query string with a NUL character is a 400: Postgres cannot store or compare
    one, so a filter that passed it on would fail as a server error instead of a clear refusal."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/") and any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            body = error_body(exceptions.ValidationError(["Query parameters may not contain NUL characters."]))
            return JsonResponse(body, status=400)
        return self.get_response(request)


class _ErrorDetail(serializers.Serializer):
    type = serializers.ChoiceField(choices=ERROR_TYPES)
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class ErrorSerializer(serializers.Serializer):
    error = _ErrorDetail()
