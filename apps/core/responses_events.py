"""A whole Responses API answer replayed as its typed event stream (what a streaming client reads).

For an answer we already hold when the app asked to stream it (a cascade's kept cheap answer): the
events OpenAI sends, in output order and numbered: ``response.created``, ``response.in_progress``;
per message ``response.output_item.added``, then per output text ``response.content_part.added``,
one ``response.output_text.delta`` (the whole text, with its logprobs), ``response.output_text.done``
and ``response.content_part.done``; per function call its arguments in one delta and ``…done``; other
items (reasoning) added and done; ``response.output_item.done`` each; and the terminal event of the
answer's status (``response.completed``, ``response.incomplete`` or ``response.failed``).
"""

from __future__ import annotations

from itertools import count
from typing import Any

import orjson

_TERMINAL = {"incomplete": "response.incomplete", "failed": "response.failed"}


def events_from_response(response: dict[str, Any]) -> bytes:
    sequence = count()
    out: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": next(sequence), **fields}
        out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")

    output = _objects(response.get("output"))
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for index, item in enumerate(output):
        kind, item_id = item.get("type"), item.get("id")
        if kind == "message":
            parts = _objects(item.get("content"))
            emit(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            for position, part in enumerate(parts):
                where = {"item_id": item_id, "output_index": index, "content_index": position}
                emit("response.content_part.added", **where, part={**part, "text": ""} if "text" in part else part)
                if part.get("type") == "output_text":
                    text, logprobs = part.get("text") or "", part.get("logprobs") or []
                    emit("response.output_text.delta", **where, delta=text, logprobs=logprobs)
                    emit("response.output_text.done", **where, text=text, logprobs=logprobs)
                emit("response.content_part.done", **where, part=part)
        elif kind == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            arguments = item.get("arguments") or ""
            emit("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=arguments)
            emit("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        else:
            emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    emit(_TERMINAL.get(str(response.get("status")), "response.completed"), response=response)
    return b"".join(out)


def _objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a list (an answer we hold came from a provider: anything else is skipped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
