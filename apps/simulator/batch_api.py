"""The simulator's Files and Batch API: enough of OpenAI's to test a provider-batch backend.

- ``POST /v1/files`` (multipart: ``purpose``, ``file``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``.
- ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

A batch runs all its lines (with the simulator's own chat/completions/embeddings
handlers, so directives work per line) the first time it is retrieved, and is
then ``completed`` with an output file (and an error file for non-200 lines).
A batch created with metadata ``{"sim_hold": "true"}`` stays ``in_progress``
until cancelled, to test deadlines. With ``{"sim_garbage_output": "true"}`` its
output file is hostile: record N (counting from 0) is, by N modulo 8, as it
should be (with U+2028 and U+0085 in its answer), not JSON, a JSON array, a
record with a custom_id that is not ours, one whose body holds ``NaN``, one
whose body holds ``\u0000``, one whose response and status are garbage, and
one whose body holds a lone surrogate. State lives in the process: run the
simulator with one worker when using this.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

Handler = Callable[[dict[str, Any]], Any]


class BatchEmulator:
    def __init__(self, handlers: dict[str, Handler], error: Callable[..., Any], reply: Callable[..., Any]) -> None:
        self._handlers = handlers
        self._error = error
        self._reply = reply
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def handle(self, method: str, path: str, content_type: str, raw: bytes) -> Any:
        parts = path.strip("/").split("/")  # v1, files|batches, [id], [content|cancel]
        kind, rest = parts[1], parts[2:]
        if kind == "files":
            if method == "POST" and not rest:
                return self._upload(content_type, raw)
            if method == "GET" and len(rest) == 1 and rest[0] in self.files:
                return self._json(self._file_object(self.files[rest[0]]))
            if method == "GET" and len(rest) == 2 and rest[1] == "content" and rest[0] in self.files:
                return self._reply(200, self.files[rest[0]]["content"], [(b"content-type", b"application/jsonl")])
            return self._error(404, f"No such File object: {'/'.join(rest)}", param="id")
        if method == "POST" and not rest:
            return self._create(raw)
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None:
            return self._error(404, f"No such batch: {'/'.join(rest)}", param="id")
        if method == "GET" and len(rest) == 1:
            self._run(batch)
            return self._json(batch)
        if method == "POST" and len(rest) == 2 and rest[1] == "cancel":
            if batch["status"] in ("validating", "in_progress"):
                batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
            return self._json(batch)
        return self._error(405, f"Method {method} not allowed for {path}")

    def _json(self, body: dict[str, Any]) -> Any:
        return self._reply(200, orjson.dumps(body))

    @staticmethod
    def _file_object(f: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f["id"], "object": "file", "bytes": len(f["content"]), "created_at": f["created_at"],
            "filename": f["filename"], "purpose": f["purpose"], "status": "processed",
        }  # fmt: skip

    def _store(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": "file-sim" + secrets.token_hex(8),
            "content": content,
            "filename": filename,
            "purpose": purpose,
            "created_at": int(time.time()),
        }
        self.files[record["id"]] = record
        return record

    def _upload(self, content_type: str, raw: bytes) -> Any:
        fields = _multipart(content_type, raw)
        if fields is None or "file" not in fields:
            return self._error(400, "Send a multipart form with 'purpose' and 'file'.", param="file")
        purpose = fields.get("purpose", (b"", ""))[0].decode()
        if purpose != "batch":
            return self._error(400, f"Invalid purpose '{purpose}' (simulated: only 'batch').", param="purpose")
        content, filename = fields["file"]
        return self._json(self._file_object(self._store(content, filename or "upload.jsonl", purpose)))

    def _create(self, raw: bytes) -> Any:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(400, "We could not parse the JSON body of your request. (simulated)")
        source = self.files.get(str(body.get("input_file_id")))
        if source is None:
            return self._error(400, "input_file_id does not name an uploaded file.", param="input_file_id")
        if body.get("endpoint") not in self._handlers:
            return self._error(400, "Unsupported endpoint.", param="endpoint")
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": "batch_sim" + secrets.token_hex(8), "object": "batch", "endpoint": body["endpoint"],
            "errors": None, "input_file_id": source["id"], "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": now, "expires_at": now + 86400, "completed_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
        }  # fmt: skip
        self.batches[batch["id"]] = batch
        return self._json(batch)

    def _run(self, batch: dict[str, Any]) -> None:
        held = str((batch.get("metadata") or {}).get("sim_hold", "")).lower() == "true"
        if batch["status"] != "in_progress" or held:
            return
        handler = self._handlers[batch["endpoint"]]
        output: list[bytes] = []
        errors: list[bytes] = []
        garbage = str((batch.get("metadata") or {}).get("sim_garbage_output", "")).lower() == "true"
        for line in self.files[batch["input_file_id"]]["content"].splitlines():
            if not line.strip():
                continue
            item = orjson.loads(line)
            result = handler(item.get("body") or {})
            status = result.status if hasattr(result, "status") else 200
            body = orjson.loads(result.body) if getattr(result, "body", None) else {}
            record = {
                "id": "batch_req_" + secrets.token_hex(8),
                "custom_id": item.get("custom_id"),
                "response": {"status_code": status, "request_id": secrets.token_hex(8), "body": body},
                "error": None,
            }
            encoded = _garbled(record, len(output) + len(errors)) if garbage else orjson.dumps(record)
            (output if status == 200 else errors).append(encoded)
        counts = batch["request_counts"]
        counts.update(total=len(output) + len(errors), completed=len(output), failed=len(errors))
        if output:
            batch["output_file_id"] = self._store(b"\n".join(output) + b"\n", "output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._store(b"\n".join(errors) + b"\n", "errors.jsonl", "batch_output")["id"]
        batch["status"], batch["completed_at"] = "completed", int(time.time())


def _garbled(record: dict[str, Any], n: int) -> bytes:
    """Record ``n`` of a hostile output file (``sim_garbage_output``): what each variant is is listed above."""
    variant = n % 8
    if variant == 0:
        record["response"]["body"] = {**record["response"]["body"], "note": "line\u2028separator\x85next"}
        return orjson.dumps(record)
    if variant == 1:
        return b"this is not JSON"
    if variant == 2:
        return b"[1, 2, 3]"
    if variant == 3:
        return orjson.dumps({**record, "custom_id": "not-ours-" + str(record["custom_id"])})
    if variant == 6:
        return orjson.dumps({**record, "response": "garbage", "error": {"status_code": "abc"}})
    # JSON text orjson would not write: spliced in by hand.
    token = {4: b"NaN", 5: b'"nul \\u0000 here"', 7: b'"\\ud800"'}[variant]
    encoded = orjson.dumps({**record, "response": {"status_code": 200, "body": {"value": "SPLICE"}}})
    return encoded.replace(b'"SPLICE"', token)


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[bytes, str]] | None:
    """Form fields of a multipart body: name -> (value, filename)."""
    marker = "boundary="
    if "multipart/form-data" not in content_type or marker not in content_type:
        return None
    boundary = content_type.split(marker, 1)[1].split(";", 1)[0].strip().strip('"').encode()
    fields: dict[str, tuple[bytes, str]] = {}
    for part in raw.split(b"--" + boundary):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = head.decode("latin-1")
        name = _attribute(disposition, "name")
        if name:
            fields[name] = (value[:-2] if value.endswith(b"\r\n") else value, _attribute(disposition, "filename"))
    return fields


def _attribute(header: str, key: str) -> str:
    for piece in header.replace("\r\n", ";").split(";"):
        name, _, value = piece.strip().partition("=")
        if name == key:
            return value.strip('"')
    return ""
