"""/v1/files and /v1/batches in OpenAI's shapes, authenticated with our keys.

These are not on the request hot path (an app uploads a file and polls a
batch), so they are plain Django views; ``costcontrol/asgi.py`` sends these
paths here instead of to the lean data plane. Errors use OpenAI's JSON shape,
so the official SDK raises its usual exception classes. Every lookup is scoped
to the key's project: another project's file or batch is a 404.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.batches.models import Batch, BatchFile, FilePurpose, could_be_object_id
from apps.batches.services import BatchInputError, batch_cancel, batch_create, file_upload
from apps.core.apikeys import check_key, presented_key
from apps.core.errors import GatewayError, invalid_api_key, method_not_allowed
from apps.core.storable import NotStorable, loads_strict
from apps.keys.models import ApiKey

View = Callable[..., HttpResponse]


def _error(exc: GatewayError) -> JsonResponse:
    return JsonResponse(json.loads(exc.body()), status=exc.status)


def _owned(queryset: QuerySet[Any], key: ApiKey, object_id: str) -> Any:
    """The key's project's object with this id; any other project's is a 404, like a missing one.

    An id that none of ours can be (a NUL, which Postgres refuses in a query, or a megabyte of text)
    is a 404 without a query, and is not echoed back.
    """
    kind = queryset.model._meta.verbose_name
    if not could_be_object_id(object_id):
        raise GatewayError(404, f"No such {kind}.", param="id", code=None)
    found = queryset.filter(project=key.project, pk=object_id).first()
    if found is None:
        raise GatewayError(404, f"No such {kind}: '{object_id}'.", param="id", code=None)
    return found


def _authenticate(request: HttpRequest) -> ApiKey:
    token, lookup_id = presented_key(request.headers.get("Authorization"))
    key = ApiKey.objects.select_related("project").filter(lookup_id=lookup_id).first()
    if key is None:
        raise invalid_api_key()
    check_key(
        token,
        bytes.fromhex(key.key_hash),
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        now=time.time(),
    )
    return key


def keyed(*methods: str) -> Callable[[View], View]:
    """Authenticate the key, allow ``methods``, and turn our errors into OpenAI-shaped responses."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise method_not_allowed(str(request.method), "here")
                return view(request, _authenticate(request), *args, **kwargs)
            except GatewayError as exc:
                return _error(exc)
            except BatchInputError as exc:
                return _error(GatewayError(400, exc.message, param=exc.param))

        return wrapper

    return decorate


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value else None


def file_object(f: BatchFile) -> dict[str, Any]:
    return {
        "id": f.id, "object": "file", "bytes": f.bytes, "created_at": _ts(f.created_at), "filename": f.filename,
        "purpose": f.purpose, "status": "processed", "expires_at": None, "status_details": None,
    }  # fmt: skip


def batch_object(b: Batch) -> dict[str, Any]:
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": b.errors, "input_file_id": b.input_file_id,
        "completion_window": b.completion_window, "status": b.status, "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id, "created_at": _ts(b.created_at), "in_progress_at": _ts(b.in_progress_at),
        "expires_at": _ts(b.expires_at), "finalizing_at": _ts(b.finalizing_at), "completed_at": _ts(b.completed_at),
        "failed_at": _ts(b.failed_at), "expired_at": _ts(b.expired_at), "cancelling_at": _ts(b.cancelling_at),
        "cancelled_at": _ts(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata,
    }  # fmt: skip


def _page(items: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list", "data": items, "has_more": has_more,
        "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None,
    }  # fmt: skip


def _listed(request: HttpRequest, rows: QuerySet[Any], *, max_limit: int, default_limit: int) -> tuple[list[Any], bool]:
    """One page of the key's project's ``rows`` as OpenAI lists them: ``limit`` at a time, newest first
    (``order=asc``: oldest first), after the one named ``after`` (the SDK's cursor); and whether more follow.

    A cursor that names nothing of this project's (another project's id included) is a 400, as if it did
    not exist.
    """
    raw_limit = request.GET.get("limit")
    try:
        limit = default_limit if raw_limit is None else int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= max_limit:
        raise GatewayError(400, f"limit must be an integer from 1 to {max_limit}.", param="limit")
    order = request.GET.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(400, "order must be 'asc' or 'desc'.", param="order")
    after = request.GET.get("after")
    if after is not None:
        cursor = rows.filter(pk=after).values("created_at", "pk").first() if could_be_object_id(after) else None
        if cursor is None:
            raise GatewayError(400, "after must be the id of an object in this list.", param="after")
        when, last = cursor["created_at"], cursor["pk"]
        if order == "asc":
            rows = rows.filter(Q(created_at__gt=when) | Q(created_at=when, pk__gt=last))
        else:
            rows = rows.filter(Q(created_at__lt=when) | Q(created_at=when, pk__lt=last))
    ordered = rows.order_by("created_at", "pk") if order == "asc" else rows.order_by("-created_at", "-pk")
    page = list(ordered[: limit + 1])
    return page[:limit], len(page) > limit


@keyed("GET", "POST")
def files(request: HttpRequest, key: ApiKey) -> HttpResponse:
    if request.method == "GET":
        # OpenAI's files list: up to 10,000 a page (its default), either order, optionally one purpose.
        found = BatchFile.objects.filter(project=key.project).defer("content")
        purpose = request.GET.get("purpose")
        if purpose is not None:
            found = found.filter(purpose=purpose) if purpose in FilePurpose.values else found.none()
        rows, more = _listed(request, found, max_limit=10_000, default_limit=10_000)
        return JsonResponse(_page([file_object(f) for f in rows], has_more=more))
    upload = request.FILES.get("file")
    if upload is None:
        raise GatewayError(400, "Send the file as multipart form field 'file'.", param="file")
    created = file_upload(
        project=key.project,
        api_key=key,
        purpose=request.POST.get("purpose", ""),
        filename=upload.name or "upload.jsonl",
        content=upload.read(),
    )
    return JsonResponse(file_object(created))


@keyed("GET", "DELETE")
def file_detail(request: HttpRequest, key: ApiKey, file_id: str) -> HttpResponse:
    found = _owned(BatchFile.objects.defer("content"), key, file_id)
    if request.method == "DELETE":
        if Batch.objects.filter(input_file=found).exists():
            raise GatewayError(400, "This file is the input of a batch and cannot be deleted.", param="file_id")
        found.delete()
        return JsonResponse({"id": file_id, "object": "file", "deleted": True})
    return JsonResponse(file_object(found))


@keyed("GET")
def file_content(request: HttpRequest, key: ApiKey, file_id: str) -> HttpResponse:
    found = _owned(BatchFile.objects.all(), key, file_id)
    return HttpResponse(bytes(found.content), content_type="application/jsonl")


@keyed("GET", "POST")
def batches(request: HttpRequest, key: ApiKey) -> HttpResponse:
    if request.method == "GET":
        # OpenAI's batches list: 20 a page by default, at most 100.
        rows, more = _listed(request, Batch.objects.filter(project=key.project), max_limit=100, default_limit=20)
        return JsonResponse(_page([batch_object(b) for b in rows], has_more=more))
    try:
        # Strict JSON; each field is checked on its own below (metadata for NUL too), the rest is not kept.
        payload = loads_strict(request.body or b"{}")
    except NotStorable as exc:
        raise GatewayError(400, f"The body {exc}.") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "The body must be a JSON object.")
    metadata = payload.get("metadata")
    batch = batch_create(
        project=key.project,
        api_key=key,
        input_file_id=str(payload.get("input_file_id") or ""),
        endpoint=str(payload.get("endpoint") or ""),
        completion_window=str(payload.get("completion_window") or "24h"),
        metadata=metadata,
    )
    return JsonResponse(batch_object(batch))


@keyed("GET")
def batch_detail(request: HttpRequest, key: ApiKey, batch_id: str) -> HttpResponse:
    found = _owned(Batch.objects.all(), key, batch_id)
    return JsonResponse(batch_object(found))


@keyed("POST")
def batch_cancel_view(request: HttpRequest, key: ApiKey, batch_id: str) -> HttpResponse:
    found = _owned(Batch.objects.all(), key, batch_id)
    return JsonResponse(batch_object(batch_cancel(batch=found)))


@csrf_exempt
def unknown_url(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /v1/files or /v1/batches: OpenAI's 404, as the gateway answers for /v1."""
    path = request.path[:200]
    return _error(GatewayError(404, f"Unknown request URL: {request.method} {path}.", code="unknown_url"))
