"""A Responses API stream relayed event by event: typed events pass through unchanged, in order.

The terminal event (``response.completed``, ``.incomplete`` or ``.failed``) carries
the whole response with its usage: it is noted and held back until the request
is recorded (``flush``), so the app never learns a response id the gateway has
not yet remembered. Output text deltas are counted, for an estimate when the
provider sends no usage we can believe.
"""

from __future__ import annotations

from typing import Any

from apps.core.responses import TERMINAL_EVENTS
from apps.gateway.stages.relay import SseRelay, event_json

_TERMINAL_MARKS = tuple(kind.encode() for kind in TERMINAL_EVENTS)


class ResponsesSse(SseRelay):
    def __init__(self, *, max_event_bytes: int) -> None:
        super().__init__(strip_usage_chunk=False, max_event_bytes=max_event_bytes)
        self.response: dict[str, Any] | None = None  # from the terminal event
        self._held = b""
        self._text_chars = 0

    def feed(self, chunk: bytes) -> bytes:
        complete = self.complete_events(chunk)
        if not complete:
            return b""
        out = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if b"response.output_text.delta" in event:
                data = event_json(event)
                delta = data.get("delta") if data is not None else None
                if isinstance(delta, str):
                    self._text_chars += len(delta)
            elif any(mark in event for mark in _TERMINAL_MARKS):
                data = event_json(event)
                response = data.get("response") if data is not None else None
                if data is not None and data.get("type") in TERMINAL_EVENTS and isinstance(response, dict):
                    self.response, self.done = response, True
                    self._held += event + b"\n\n"
                    continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._held = self._held + super().flush(), b""
        return rest

    def estimate_completion_tokens(self) -> int:
        return (self._text_chars + 3) // 4  # completion_estimate's ~4 characters per token
