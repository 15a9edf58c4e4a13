"""Request validation with OpenAI's messages and `param` names.

Only what we must understand to route, bill and protect is checked here; the
provider validates the rest and its 4xx passes through unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from apps.gateway.errors import GatewayError, bad_request

ENDPOINT_CHAT = "chat.completions"
ENDPOINT_COMPLETIONS = "completions"
ENDPOINT_EMBEDDINGS = "embeddings"


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request. The body must be valid JSON.") from None
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    return payload


def _expect(payload: dict[str, Any], name: str, kinds: tuple[type, ...], label: str) -> None:
    value = payload.get(name)
    # bool is an int subclass; a number field given true/false is a type error.
    if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise bad_request(f"Invalid type for '{name}': expected {label}.", param=name, code="invalid_type")


def _positive_int(payload: dict[str, Any], name: str) -> None:
    _expect(payload, name, (int,), "an integer")
    value = payload.get(name)
    if value is not None and value < 1:
        raise bad_request(f"Invalid '{name}': must be at least 1.", param=name, code="invalid_value")


def validate(endpoint: str, payload: dict[str, Any]) -> None:
    model = payload.get("model")
    if model is None:
        raise bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("Invalid type for 'model': expected a non-empty string.", param="model", code="invalid_type")
    _expect(payload, "user", (str,), "a string")
    _expect(payload, "stream", (bool,), "a boolean")

    if endpoint == ENDPOINT_CHAT:
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
        _positive_int(payload, "max_tokens")
        _positive_int(payload, "max_completion_tokens")
        _positive_int(payload, "n")
        _expect(payload, "temperature", (int, float), "a number")
        stream_options = payload.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, dict):
            raise bad_request("Invalid type for 'stream_options': expected an object.", param="stream_options")
    elif endpoint == ENDPOINT_COMPLETIONS:
        prompt = payload.get("prompt")
        if prompt is None:
            raise bad_request(
                "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
            )
        if not isinstance(prompt, (str, list)):
            raise bad_request(
                "Invalid type for 'prompt': expected a string or an array.", param="prompt", code="invalid_type"
            )
        _positive_int(payload, "max_tokens")
        _positive_int(payload, "n")
        _expect(payload, "temperature", (int, float), "a number")
    elif endpoint == ENDPOINT_EMBEDDINGS:
        value = payload.get("input")
        if value is None:
            raise bad_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
        if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
            raise bad_request(
                "Invalid 'input': expected a string or a non-empty array.", param="input", code="invalid_type"
            )


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body exceeds the {limit} byte limit.", code="request_too_large")
