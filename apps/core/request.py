"""The request contract: one rule for what a request may say, who it is for, and what it may cost.

The live gateway, the batch runner (each line) and the ledger all use these
functions, so a batch line is accepted, attributed and reserved exactly as the
same body sent live would be:

- ``validate(endpoint, payload)`` checks what we must understand to route, bill
  and protect (types and ranges of token counts, ``n``, ``best_of``, content
  parts, ``stream_options``, tools, nesting depth) and raises a 400
  ``GatewayError`` with OpenAI's message style and ``param``. Everything else is
  the provider's to validate; its 4xx passes through unchanged.
- ``attribution(...)`` derives the feature tag and end user: headers first, then
  ``user`` as ``"end user:feature"``, then the key's default feature.
- ``worst_case(...)`` is what a budget reserves: an upper bound on prompt tokens
  (text, tool and function definitions, response format schemas, images, files)
  and the most output the request can produce.

Everything here runs on every request: no regexes, no copies of the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apps.core.catalog import MAX_OUTPUT_TOKENS
from apps.core.errors import GatewayError, bad_request
from apps.core.events import END_USER_MAX, FEATURE_MAX, clean_text
from apps.core.responses import input_estimate, validate_responses
from apps.core.text import json_tokens, text_tokens

ENDPOINT_CHAT = "chat.completions"
ENDPOINT_COMPLETIONS = "completions"
ENDPOINT_EMBEDDINGS = "embeddings"
ENDPOINT_RESPONSES = "responses"
ENDPOINTS = (ENDPOINT_CHAT, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS, ENDPOINT_RESPONSES)
# The /v1 path of each endpoint (live requests and batch lines name them so).
ENDPOINT_PATHS = {
    "/v1/chat/completions": ENDPOINT_CHAT,
    "/v1/completions": ENDPOINT_COMPLETIONS,
    "/v1/embeddings": ENDPOINT_EMBEDDINGS,
    "/v1/responses": ENDPOINT_RESPONSES,
}

# No model produces or takes more than this many tokens in one request; a larger
# max_tokens is a mistake (or an attempt on our arithmetic), refused as a 400.
MAX_TOKENS_BOUND = 1_000_000
MAX_N = 128  # OpenAI's limit for n
MAX_BEST_OF = 20  # OpenAI's limit for best_of
# JSON nesting: deep enough for any real schema, shallow enough for our encoder (orjson stops at 255).
MAX_DEPTH = 64

# Worst cases for parts whose size in tokens the body does not tell (documented in the README).
# An image is at most 1,536 patches on OpenAI's patch-based models (x1.62 for the mini models:
# ~2,490 tokens) and 765 tokens at high detail on tile-based ones; 4,096 covers every model we know.
IMAGE_WORST_CASE_TOKENS = 4_096
# A file referenced by id (a PDF: text plus an image of every page) cannot be measured here;
# inline file data counts as its text size when that is more.
FILE_WORST_CASE_TOKENS = 32_768
PER_MESSAGE_OVERHEAD = 3  # OpenAI's framing per chat message
REPLY_PRIMER = 3  # and per reply

_TEXT_PARTS = frozenset({"text", "input_text"})


# --- validation ---------------------------------------------------------------------------


def validate(endpoint: str, payload: dict[str, Any], *, shallow: bool = False) -> None:
    """Raise a 400 ``GatewayError`` for a body we cannot route, bill or protect safely. ``shallow``: the
    caller knows the body cannot nest past ``MAX_DEPTH`` (``shallow_json``), so its depth is not walked."""
    model = payload.get("model")
    if model is None:
        raise bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("Invalid type for 'model': expected a non-empty string.", param="model", code="invalid_type")
    _expect(payload, "user", str, "a string")
    _expect(payload, "stream", bool, "a boolean")
    _expect(payload, "temperature", (int, float), "a number")
    _stream_options(payload)
    if endpoint == ENDPOINT_CHAT:
        _chat(payload)
    elif endpoint == ENDPOINT_COMPLETIONS:
        _token_inputs(payload, "prompt", allow_empty=True)
        _count(payload, "max_tokens", 1, MAX_TOKENS_BOUND)
        _count(payload, "n", 1, MAX_N)
        _count(payload, "best_of", 1, MAX_BEST_OF)
        n, best_of = payload.get("n"), payload.get("best_of")
        if n is not None and best_of is not None and best_of < n:
            raise bad_request("best_of must be greater than or equal to n.", param="best_of", code="invalid_value")
    elif endpoint == ENDPOINT_EMBEDDINGS:
        _token_inputs(payload, "input", allow_empty=False)
        _count(payload, "dimensions", 1, 65_536)
        _expect(payload, "encoding_format", str, "a string")
    elif endpoint == ENDPOINT_RESPONSES:
        validate_responses(payload)
    # Our encoder (and anything recursive) must never meet a body nested deeper than this.
    if not shallow and _too_deep(payload, MAX_DEPTH):
        raise bad_request(f"The request body is nested more than {MAX_DEPTH} levels deep.", code="invalid_value")


def _chat(payload: dict[str, Any]) -> None:
    messages = payload.get("messages")
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise bad_request("Invalid 'messages': expected a non-empty array.", param="messages", code="invalid_type")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(
                f"Invalid 'messages[{index}]': expected an object with a string 'role'.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
        _content(message, index)
    _count(payload, "max_tokens", 1, MAX_TOKENS_BOUND)
    _count(payload, "max_completion_tokens", 1, MAX_TOKENS_BOUND)
    _count(payload, "n", 1, MAX_N)
    for name in ("tools", "functions"):
        items = payload.get(name)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, dict) for i in items)):
            raise bad_request(
                f"Invalid type for '{name}': expected an array of objects.", param=name, code="invalid_type"
            )
    _expect(payload, "response_format", dict, "an object")


def _content(message: dict[str, Any], index: int) -> None:
    """A message's content: a string, an array of well-formed parts, or null where OpenAI allows it."""
    content = message.get("content")
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return
    if content is None:
        # Only an assistant turn (one that called tools or functions, or refused) may have no content.
        if message.get("role") == "assistant":
            return
        raise bad_request(f"Invalid '{param}': expected a string or an array of content parts.", param=param,
                          code="invalid_type")  # fmt: skip
    if not isinstance(content, list):
        raise bad_request(
            f"Invalid type for '{param}': expected one of a string or an array of objects, "
            f"but got {_json_type(content)} instead.",
            param=param,
            code="invalid_type",
        )
    for position, part in enumerate(content):
        at = f"{param}[{position}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"Invalid '{at}': expected an object with a string 'type'.", param=at,
                              code="invalid_type")  # fmt: skip
        kind = part["type"]
        if kind in _TEXT_PARTS and not isinstance(part.get("text"), str):
            raise bad_request(
                f"Invalid type for '{at}.text': expected a string, but got {_json_type(part.get('text'))} instead.",
                param=f"{at}.text",
                code="invalid_type",
            )
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise bad_request(f"Invalid '{at}.image_url': expected an object with a string 'url'.",
                                  param=f"{at}.image_url", code="invalid_type")  # fmt: skip
        elif kind == "refusal" and not isinstance(part.get("refusal"), str):
            raise bad_request(f"Invalid type for '{at}.refusal': expected a string.", param=f"{at}.refusal",
                              code="invalid_type")  # fmt: skip
        elif kind in ("file", "input_audio") and not isinstance(part.get(kind), dict):
            raise bad_request(f"Invalid type for '{at}.{kind}': expected an object.", param=f"{at}.{kind}",
                              code="invalid_type")  # fmt: skip


def _token_inputs(payload: dict[str, Any], name: str, *, allow_empty: bool) -> None:
    """A prompt or embedding input: a string, an array of strings, of token ids, or of token-id arrays."""
    value = payload.get(name)
    if value is None:
        raise bad_request(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if isinstance(value, str):
        return
    message = f"Invalid '{name}': expected a string, an array of strings, an array of token ids or an array of arrays of token ids."  # noqa: E501
    if not isinstance(value, list) or (not value and not allow_empty):
        raise bad_request(message, param=name, code="invalid_type")
    for item in value:
        if isinstance(item, str) or _token_id(item):
            continue
        if isinstance(item, list) and all(_token_id(token) for token in item):
            continue
        raise bad_request(message, param=name, code="invalid_type")


def _token_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**32


def _stream_options(payload: dict[str, Any]) -> None:
    options = payload.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise bad_request(
            "Invalid type for 'stream_options': expected an object.", param="stream_options", code="invalid_type"
        )
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise bad_request(
            "Invalid type for 'stream_options.include_usage': expected a boolean.",
            param="stream_options.include_usage",
            code="invalid_type",
        )


def _expect(payload: dict[str, Any], name: str, kinds: type | tuple[type, ...], label: str) -> None:
    value = payload.get(name)
    if value is None:
        return
    # bool is an int subclass: a number field given true/false is a type error.
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
        raise bad_request(
            f"Invalid type for '{name}': expected {label}, but got {_json_type(value)} instead.",
            param=name,
            code="invalid_type",
        )


def _count(payload: dict[str, Any], name: str, low: int, high: int) -> None:
    """An integer option in ``low..high``: not a bool, a float, a string, negative or huge."""
    value = payload.get(name)
    if value is None:
        return
    if type(value) is not int:
        raise bad_request(
            f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
            param=name,
            code="invalid_type",
        )
    if value < low:
        raise bad_request(f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got "
                          f"{value} instead.", param=name, code="integer_below_min_value")  # fmt: skip
    if value > high:
        raise bad_request(f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got "
                          f"{_short(value)} instead.", param=name, code="integer_above_max_value")  # fmt: skip


def _short(value: int) -> str:
    text = str(value) if value < 10**30 else f"{value:.3e}"
    return text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def shallow_json(raw: bytes) -> bool:
    """Whether the JSON text ``raw`` surely nests no deeper than ``MAX_DEPTH``: each level opens with a
    ``{`` or ``[``, so fewer of those bytes than that (ones inside strings only add to the count) settle
    it without walking the parsed value, as for nearly every request."""
    return raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH


def _too_deep(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests containers more than ``limit`` deep (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


# --- attribution ----------------------------------------------------------------------------


def attribution(*, feature: str, end_user: str, user: Any, default_feature: str) -> tuple[str, str]:
    """(feature, end user) of a request: the headers, then ``user`` ("end user:feature"), then the key's default.

    ``feature`` and ``end_user`` are the X-Feature / X-End-User header values ("" when absent; batch lines
    have none). Both results are clean for the ledger's columns (no control characters, cut to length).
    """
    feature = clean_text(feature, FEATURE_MAX)
    end_user = clean_text(end_user, END_USER_MAX)
    if isinstance(user, str) and user:
        user_end, _, user_feature = user.partition(":")
        if not end_user:
            end_user = clean_text(user_end, END_USER_MAX)
        if not feature:
            feature = clean_text(user_feature, FEATURE_MAX)
    if not feature:
        feature = clean_text(default_feature, FEATURE_MAX)
    return feature, end_user


# --- the worst case --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorstCase:
    prompt_tokens: int  # an upper bound on what the prompt costs in tokens
    output_tokens: int  # the most output the request can be billed for

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def worst_case(
    endpoint: str,
    payload: dict[str, Any],
    *,
    model_max_output: int | None,
    unknown_model_max_output: int,
    prompt_tokens: int | None = None,
) -> WorstCase:
    """The most a validated request can use on a model.

    Output: the request's own cap (the larger of ``max_tokens``, ``max_completion_tokens`` and
    ``max_output_tokens``; reasoning tokens count inside each of them, as providers bill them), never more
    than the model can produce (``model_max_output``, or ``unknown_model_max_output`` for a model whose
    limit we do not know), times ``n`` (or ``best_of``, which the provider generates and bills). Embeddings
    have no output. ``prompt_tokens``, when the caller has it, is ``prompt_estimate(endpoint, payload)``.
    """
    prompt = prompt_estimate(endpoint, payload) if prompt_tokens is None else prompt_tokens
    if endpoint == ENDPOINT_EMBEDDINGS:
        return WorstCase(prompt, 0)
    ceiling = model_max_output if model_max_output else unknown_model_max_output
    asked = max(
        _positive(payload.get("max_tokens")),
        _positive(payload.get("max_completion_tokens")),
        _positive(payload.get("max_output_tokens")),
    )
    output = min(asked, ceiling) if asked else ceiling
    copies = max(_positive(payload.get("n")), _positive(payload.get("best_of")), 1)
    return WorstCase(prompt, output * copies)


def model_worst_case(
    endpoint: str,
    payload: dict[str, Any],
    model: str,
    *,
    unknown_model_max_output: int,
    prompt_tokens: int | None = None,
) -> WorstCase:
    """``worst_case`` on ``model``, with the price catalogue's output limit for it."""
    return worst_case(
        endpoint,
        payload,
        model_max_output=MAX_OUTPUT_TOKENS.get(model),
        unknown_model_max_output=unknown_model_max_output,
        prompt_tokens=prompt_tokens,
    )


def _positive(value: Any) -> int:
    """``value`` if it is a positive integer, else 0 (validation has refused anything else already)."""
    return value if type(value) is int and value > 0 else 0


def prompt_estimate(endpoint: str, payload: dict[str, Any]) -> int:
    """An upper-bound estimate of a validated request's prompt tokens (see ``apps.core.text.text_tokens``)."""
    if endpoint == ENDPOINT_CHAT:
        total = REPLY_PRIMER + _messages_tokens(payload.get("messages") or ())
        for name in ("tools", "functions", "response_format", "tool_choice", "prediction"):
            value = payload.get(name)
            if value:
                # Definitions and schemas reach the model as text about the size of their JSON.
                total += json_tokens(value)
        return total
    if endpoint == ENDPOINT_RESPONSES:
        return input_estimate(payload)
    return _inputs_tokens(payload.get("prompt" if endpoint == ENDPOINT_COMPLETIONS else "input"))


def _messages_tokens(messages: Any) -> int:
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += text_tokens(name)
        for field in ("tool_calls", "function_call", "audio"):
            value = message.get(field)
            if value:
                total += json_tokens(value)
    return total


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            total += text_tokens(text) if isinstance(text, str) else 0
        elif kind == "image_url" or kind == "input_image":
            total += IMAGE_WORST_CASE_TOKENS
        elif kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            total += max(FILE_WORST_CASE_TOKENS, text_tokens(data) if isinstance(data, str) else 0)
        else:
            # Audio, refusals and parts we do not know: their JSON size is an upper bound.
            total += json_tokens(part)
    return total


def _inputs_tokens(value: Any) -> int:
    if isinstance(value, str):
        return text_tokens(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += text_tokens(item)
        elif isinstance(item, list):
            total += len(item)  # token ids
        else:
            total += 1  # one token id
    return total


def error_for_line(exc: GatewayError, number: int) -> dict[str, Any]:
    """A validation error as a batch ``errors`` entry for line ``number`` (OpenAI's batch shape)."""
    return {"code": exc.code or "invalid_request", "message": f"Line {number}: {exc.message}", "param": exc.param,
            "line": number}  # fmt: skip
