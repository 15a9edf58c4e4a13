"""GET /v1/models and /v1/models/{id}: what the key may ask for, from the snapshot."""

from __future__ import annotations

from typing import Any

import orjson

from apps.core.errors import model_not_found
from apps.core.snapshot import KeyPolicy, ProjectPolicy, Snapshot
from apps.gateway.asgi import Scope, Send, header, send_json
from apps.gateway.stages.auth import authenticate


async def handle(snapshot: Snapshot, scope: Scope, send: Send, path: str, request_id: str) -> None:
    key = authenticate(snapshot, header(scope, b"authorization"))
    visible = visible_models(snapshot, snapshot.projects[key.project_id], key)
    if path == "/v1/models":
        body = {"object": "list", "data": [_model_object(m, owner) for m, owner in sorted(visible.items())]}
    else:
        model_id = path[len("/v1/models/") :]
        if model_id not in visible:
            raise model_not_found(model_id)
        body = _model_object(model_id, visible[model_id])
    # Lets operators (and tests) see which policy version a process serves.
    version = [(b"x-costcontrol-policy-version", str(snapshot.version).encode())]
    await send_json(send, 200, orjson.dumps(body), request_id, version)


def visible_models(snapshot: Snapshot, project: ProjectPolicy, key: KeyPolicy) -> dict[str, str]:
    """Model id -> owner shown in /v1/models: the project's aliases and its org's priced models."""
    visible: dict[str, str] = {}
    for model, provider_ids in snapshot.org_models.get(project.organization_id, {}).items():
        visible[model] = snapshot.providers[provider_ids[0]].name
    for alias in project.aliases:
        visible[alias] = "costcontrol"
    if key.allowed_models:
        visible = {m: o for m, o in visible.items() if m in key.allowed_models}
    return visible


def _model_object(model: str, owner: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}
