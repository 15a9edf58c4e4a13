"""The Responses API, simulated: create (JSON or typed SSE events), retrieve, delete, cancel, input items.

Answers are deterministic like the chat endpoint's (they depend on the model and
the conversation's text). Reasoning models (``REASONING_MODELS``) put a reasoning
item before their message and report ``output_tokens_details.reasoning_tokens``
(part of ``output_tokens``, as OpenAI bills them), by effort. A request with
function tools whose input does not end with a ``function_call_output`` calls the
first function tool; one that does is answered with a message. Stored responses
(``store`` defaults to true) are kept in memory, so ``previous_response_id``,
retrieve, delete and ``input_items`` work; ``background`` responses stay
``in_progress`` until their ``[[sim:latency=MS]]`` has passed (then ``completed``),
and can be cancelled before that (then their usage is the input alone). ``[[sim:usage=JSON]]`` replaces
the usage reported (also a background response's, once done). With ``include:
["message.output_text.logprobs"]`` (and ``top_logprobs``) each output text carries its logprobs, one
entry per piece, streamed with its deltas; ``[[sim:confidence=P]]`` sets the first one's probability
and ``[[sim:logprob=X]]`` its logprob, as on chat. ``service_tier`` is echoed (``auto`` is served as
``default``). Directives (``[[sim:503]]``…) work as on chat.
"""

from __future__ import annotations

import time
from itertools import count
from typing import Any

import orjson

from apps.simulator.directives import Directives, parse_directives
from apps.simulator.generation import CHAT, count_tokens, logprob_entries, prompt_digest
from apps.simulator.options import choice_tokens, int_option, model_option
from apps.simulator.replies import DIRECTIVE_ERRORS, STREAM_HEADERS, Rejected, Reply, error, invalid

REASONING_MODELS = frozenset({"o3", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"})
REASONING_TOKENS = {"minimal": 0, "low": 16, "medium": 64, "high": 256}
TIERS = frozenset({"auto", "default", "flex", "priority"})
STREAM_TOKENS_PER_DELTA = 3


def _not_found(response_id: str) -> Reply:
    return error(404, f"Response with id '{response_id}' not found.", param="response_id")


class ResponsesApi:
    """The /v1/responses handlers, with the stored responses of this process."""

    def __init__(self, id_prefix: str) -> None:
        self._prefix = id_prefix
        self._ids = count(1)
        # id -> (response object, input items, the history's text items, completes at (monotonic), cancelled)
        self._stored: dict[str, dict[str, Any]] = {}

    def _id(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._ids):010x}"

    # --- routing ------------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> Reply:
        rest = path[len("/v1/responses") :].strip("/")
        try:
            if not rest:
                if method != "POST":
                    return error(405, f"Method {method} not allowed for {path}")
                return self.create(body or {})
            response_id, _, action = rest.partition("/")
            if action == "" and method == "GET":
                return self.retrieve(response_id)
            if action == "" and method == "DELETE":
                return self.delete(response_id)
            if action == "cancel" and method == "POST":
                return self.cancel(response_id)
            if action == "input_items" and method == "GET":
                return self.input_items(response_id)
            return error(404, f"Invalid URL ({method} {path})")
        except Rejected as rejected:
            return rejected.reply

    # --- create -------------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> Reply:
        model = model_option(body, (CHAT,), "v1/responses")
        items = _input_items(body.get("input"))
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise invalid("Invalid type for 'instructions': expected a string.", "instructions", "invalid_type")
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = self._stored.get(previous) if isinstance(previous, str) else None
            if stored is None:
                raise Rejected(
                    error(404, f"Previous response with id '{previous}' not found.", param="previous_response_id")
                )
            history = [*stored["history"], *stored["response"]["output"]]
        limit = int_option(body, "max_output_tokens", None, 16, None)
        tier = body.get("service_tier") or "auto"
        if not isinstance(tier, str) or tier not in TIERS:
            raise invalid(f"Invalid value for 'service_tier': '{tier}'.", "service_tier", "invalid_value")
        effort = _effort(body, model)
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
        conversation = [*history, *items]
        text = "\n".join(_item_text(item) for item in conversation)
        directives = parse_directives(f"{instructions or ''}\n{text}", model)
        if directives is not None and directives.status is not None:
            reply = DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = directives.delay_s
            return reply
        input_tokens = 3 + count_tokens(instructions or "") + sum(3 + count_tokens(_item_text(i)) for i in conversation)
        input_tokens += sum(count_tokens(orjson.dumps(tool).decode()) for tool in tools)
        reasoning = REASONING_TOKENS[effort] if effort else 0
        top_logprobs = _logprobs_option(body)
        output, visible, incomplete = self._output(model, conversation, tools, body, directives, limit, reasoning)
        if top_logprobs is not None:
            _add_logprobs(output, prompt_digest(model, [_item_text(i) for i in conversation]), directives, top_logprobs)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": visible + reasoning,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + visible + reasoning,
        }
        background = body.get("background") is True
        store = body.get("store") is not False
        response_id = self._id("resp")
        response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if incomplete else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": instructions,
            "max_output_tokens": limit,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": previous,
            "reasoning": {"effort": effort, "summary": None},
            "service_tier": "default" if tier == "auto" else tier,
            "store": store,
            "temperature": 1.0,
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": tools,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": _usage(usage, directives),
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
            "background": background,
        }
        delay_s = directives.delay_s if directives is not None else 0.0
        if store or background:
            self._stored[response_id] = {
                "response": response,
                "items": [{**item, "id": item.get("id") or self._id("msg")} for item in items],
                "history": conversation,
                "ready_at": time.monotonic() + delay_s,
                "cancelled": False,
            }
        if background:
            return Reply(200, orjson.dumps(self._view(response_id)))
        if body.get("stream") is True:
            return Reply(200, headers=STREAM_HEADERS, chunks=_events(response), delay_s=delay_s)
        return Reply(200, orjson.dumps(response), delay_s=delay_s)

    def _output(
        self,
        model: str,
        conversation: list[dict[str, Any]],
        tools: list[Any],
        body: dict[str, Any],
        directives: Directives | None,
        limit: int | None,
        reasoning: int,
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """(output items, visible output tokens, cut short by ``max_output_tokens``)."""
        output: list[dict[str, Any]] = []
        if model in REASONING_MODELS:
            output.append({"id": self._id("rs"), "type": "reasoning", "summary": []})
        functions = [
            t for t in tools if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
        ]
        answered = conversation and conversation[-1].get("type") == "function_call_output"
        if functions and not answered and body.get("tool_choice") != "none":
            tool = functions[0]
            parameters = tool.get("parameters")
            required = parameters.get("required") if isinstance(parameters, dict) else None
            names = [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
            arguments = orjson.dumps(dict.fromkeys(names, "Paris")).decode()
            output.append(
                {
                    "id": self._id("fc"),
                    "type": "function_call",
                    "status": "completed",
                    "call_id": self._id("call"),
                    "name": tool["name"],
                    "arguments": arguments,
                }
            )
            return output, count_tokens(arguments) + 4, False
        digest = prompt_digest(model, [_item_text(item) for item in conversation])
        visible_limit = None if limit is None else max(limit - reasoning, 1)
        tokens, finish = choice_tokens(digest, 0, directives, visible_limit)
        output.append(
            {
                "id": self._id("msg"),
                "type": "message",
                "status": "incomplete" if finish == "length" else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "".join(tokens), "annotations": [], "logprobs": []}],
            }
        )
        return output, len(tokens), finish == "length"

    # --- the stored responses ----------------------------------------------------------------

    def _view(self, response_id: str) -> dict[str, Any]:
        stored = self._stored[response_id]
        response = stored["response"]
        if not response["background"]:
            return response
        if stored["cancelled"]:
            # Cancelled before any output: the input was read (and is billed), nothing was generated.
            usage = response["usage"]
            if isinstance(usage, dict) and "input_tokens" in usage:
                usage = {**usage, "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": usage["input_tokens"]}  # fmt: skip
            return {**response, "status": "cancelled", "output": [], "usage": usage}
        if time.monotonic() < stored["ready_at"]:
            return {**response, "status": "in_progress", "output": [], "usage": None}
        return response

    def retrieve(self, response_id: str) -> Reply:
        if response_id not in self._stored:
            return _not_found(response_id)
        return Reply(200, orjson.dumps(self._view(response_id)))

    def delete(self, response_id: str) -> Reply:
        if self._stored.pop(response_id, None) is None:
            return _not_found(response_id)
        return Reply(200, orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True}))

    def cancel(self, response_id: str) -> Reply:
        stored = self._stored.get(response_id)
        if stored is None:
            return _not_found(response_id)
        if not stored["response"]["background"]:
            return error(400, "Only responses created with background=true can be cancelled.")
        if self._view(response_id)["status"] == "in_progress":
            stored["cancelled"] = True
        return Reply(200, orjson.dumps(self._view(response_id)))

    def input_items(self, response_id: str) -> Reply:
        stored = self._stored.get(response_id)
        if stored is None:
            return _not_found(response_id)
        items = list(reversed(stored["items"]))  # newest first, OpenAI's default order
        body = {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
        return Reply(200, orjson.dumps(body))


def _logprobs_option(body: dict[str, Any]) -> int | None:
    """The alternatives per token asked for (``top_logprobs``) when ``include`` asks for the output text's
    logprobs; None when it does not (then ``logprobs`` is an empty list, as OpenAI sends it)."""
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(i, str) for i in include)):
        raise invalid("Invalid type for 'include': expected an array of strings.", "include", "invalid_type")
    top = int_option(body, "top_logprobs", 0, 0, 20) or 0
    return top if include is not None and "message.output_text.logprobs" in include else None


def _add_logprobs(output: list[dict[str, Any]], digest: bytes, directives: Directives | None, top: int) -> None:
    """Each output text's logprobs, one entry per generated piece: the first piece's probability is
    ``[[sim:confidence=P]]``'s P (or ``[[sim:logprob=X]]``'s logprob X, exactly)."""
    confidence = directives.confidence if directives is not None else None
    hostile = directives.hostile if directives is not None else None
    for item in output:
        if item["type"] != "message":
            continue
        for part in item["content"]:
            entries = logprob_entries(_pieces(part["text"]), digest, 0, confidence, top)
            if entries and hostile is not None and hostile.logprob is not None:
                entries[0]["logprob"] = hostile.logprob
            part["logprobs"] = entries


def _usage(usage: dict[str, Any], directives: Directives | None) -> Any:
    """The usage reported: none for ``[[sim:no_usage]]``, the raw value of ``[[sim:usage=JSON]]``."""
    if directives is None:
        return usage
    if directives.no_usage:
        return None
    if directives.hostile is not None and directives.hostile.usage is not None:
        return orjson.loads(directives.hostile.usage)
    return usage


def _effort(body: dict[str, Any], model: str) -> str | None:
    reasoning = body.get("reasoning")
    if reasoning is None:
        return "medium" if model in REASONING_MODELS else None
    if not isinstance(reasoning, dict):
        raise invalid("Invalid type for 'reasoning': expected an object.", "reasoning", "invalid_type")
    effort = reasoning.get("effort") or "medium"
    if not isinstance(effort, str) or effort not in REASONING_TOKENS:
        raise invalid(f"Invalid value for 'reasoning.effort': '{effort}'.", "reasoning.effort", "invalid_value")
    if model not in REASONING_MODELS:
        raise invalid(f"Reasoning is not supported with {model}.", "reasoning.effort", "unsupported_parameter")
    return str(effort)


def _input_items(value: Any) -> list[dict[str, Any]]:
    """``input`` as a list of items: a string is one user message."""
    if value is None:
        raise invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise invalid("Invalid type for 'input': expected a string or an array.", "input", "invalid_type")
    items = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid(f"Invalid type for 'input[{position}]': expected an object.", f"input[{position}]")
        kind = item.get("type") or "message"
        if kind == "message" and item.get("role") not in ("user", "assistant", "system", "developer"):
            raise invalid(f"Invalid value for 'input[{position}].role'.", f"input[{position}].role", "invalid_value")
        if kind == "function_call_output" and not isinstance(item.get("call_id"), str):
            raise invalid(f"Missing required parameter: 'input[{position}].call_id'.", f"input[{position}].call_id")
        items.append({**item, "type": kind})
    return items


def _item_text(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        return ""
    if kind == "function_call":
        return f"{item.get('name', '')}({item.get('arguments', '')})"[:10_000]
    if kind == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else orjson.dumps(output).decode()
    return ""


def _events(response: dict[str, Any]) -> list[bytes]:
    """The typed events OpenAI streams for ``response``, numbered, ending with ``response.completed``."""
    sequence = count()
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": next(sequence), **fields}
        events.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for index, item in enumerate(response["output"]):
        kind = item["type"]
        if kind == "message":
            started = {**item, "status": "in_progress", "content": []}
            emit("response.output_item.added", output_index=index, item=started)
            part = item["content"][0]
            empty = {**part, "text": ""}
            emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=empty)
            tokens = _pieces(part["text"])
            logprobs = part["logprobs"]
            for start in range(0, len(tokens), STREAM_TOKENS_PER_DELTA):
                end = start + STREAM_TOKENS_PER_DELTA
                emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                     delta="".join(tokens[start:end]), logprobs=logprobs[start:end])  # fmt: skip
            emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                 text=part["text"], logprobs=logprobs)  # fmt: skip
            emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)
        elif kind == "function_call":
            started = {**item, "arguments": "", "status": "in_progress"}
            emit("response.output_item.added", output_index=index, item=started)
            emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                 delta=item["arguments"])  # fmt: skip
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                 arguments=item["arguments"])  # fmt: skip
        else:
            emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.incomplete" if response["status"] == "incomplete" else "response.completed", response=response)
    return events


def _pieces(text: str) -> list[str]:
    """Word-sized pieces that join back to ``text``."""
    pieces, start = [], 0
    for position in range(1, len(text)):
        if text[position] == " ":
            pieces.append(text[start:position])
            start = position
    pieces.append(text[start:])
    return [piece for piece in pieces if piece]
