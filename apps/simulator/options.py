"""Reading a request as OpenAI does: the model, the options and the prompt, with OpenAI's 400s."""

from __future__ import annotations

from typing import Any

import orjson

from apps.simulator.directives import Directives
from apps.simulator.generation import (
    MODELS,
    answer_tokens,
    count_tokens,
    tokenize,
)
from apps.simulator.replies import (
    Rejected,
    error,
    invalid,
)

MAX_CHOICES = 128


MAX_EMBEDDING_INPUTS = 2048


# A non-text content part (an image, audio) costs this many prompt tokens.
NON_TEXT_PART_TOKENS = 85


def int_option(body: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(f"Invalid '{name}': {value}. Expected a value {bound}.", name, "invalid_value")
    return value


def bool_option(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"Invalid type for '{name}': expected a boolean.", name, "invalid_type")
    return value


def include_usage_option(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if not isinstance(options, dict):
        raise invalid("Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
    return bool_option(options, "include_usage")


def model_option(body: dict[str, Any], kinds: tuple[str, ...], endpoint: str) -> str:
    model = body.get("model")
    if model is None:
        raise invalid("you must provide a model parameter")
    if not isinstance(model, str):
        raise invalid("Invalid type for 'model': expected a string.", "model", "invalid_type")
    known = MODELS.get(model)
    if known is None:
        raise Rejected(
            error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        )
    if known[0] not in kinds:
        raise Rejected(error(404, f"The model `{model}` is not supported in the {endpoint} endpoint.", param="model"))
    return model


def prompt_text(messages: Any) -> tuple[str, int]:
    """(all message text, prompt tokens) of validated chat ``messages``."""
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array"
        )
    texts: list[str] = []
    tokens = 3
    for position, message in enumerate(messages):
        param = f"messages[{position}]"
        if not isinstance(message, dict):
            raise invalid(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise invalid(
                f"Invalid value for '{param}.role': expected one of 'system', 'developer', 'user', "
                "'assistant', 'tool' or 'function'.",
                f"{param}.role",
                "invalid_value",
            )
        tokens += 3
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            tokens += count_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise invalid(f"Invalid type for '{param}.content': expected parts.", f"{param}.content")
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                    tokens += count_tokens(part["text"])
                else:
                    tokens += NON_TEXT_PART_TOKENS
        elif content is None:
            if role != "assistant":
                raise invalid(f"Missing required parameter: '{param}.content'.", f"{param}.content")
        else:
            raise invalid(f"Invalid type for '{param}.content'.", f"{param}.content", "invalid_type")
        name = message.get("name")
        if isinstance(name, str):
            tokens += 1 + count_tokens(name)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            tokens += count_tokens(orjson.dumps(tool_calls).decode())
    return "\n".join(texts), tokens


def prompts_of(body: dict[str, Any]) -> list[tuple[str | list[int], str, int]]:
    """(prompt, its text, its tokens) per prompt of a legacy completions request; token arrays have no text."""
    prompt = body.get("prompt")
    if prompt is None:
        raise invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if isinstance(prompt, str):
        return [(prompt, prompt, count_tokens(prompt))]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            return [(item, item, count_tokens(item)) for item in prompt]
        if all(isinstance(item, int) for item in prompt):
            return [(prompt, "", len(prompt))]
        if all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in prompt):
            return [(item, "", len(item)) for item in prompt]
    raise invalid(
        "Invalid 'prompt': expected a string, an array of strings, an array of tokens or an array of token arrays.",
        "prompt",
        "invalid_value",
    )


def embedding_inputs(value: Any) -> list[str | list[int]]:
    """The inputs of an embeddings request, each a non-empty string or token list."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and 0 < len(value) <= MAX_EMBEDDING_INPUTS:
        if all(isinstance(item, str) and item for item in value):
            return list(value)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return [value]
        if all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in value):
            return list(value)
    raise invalid(
        "'$.input' is invalid: expected a non-empty string, array of strings, array of tokens or array of "
        f"token arrays (at most {MAX_EMBEDDING_INPUTS} items).",
        "input",
        "invalid_value",
    )


def choice_tokens(digest: bytes, index: int, directives: Directives | None, limit: int | None) -> tuple[list[str], str]:
    """(tokens, finish_reason) of one choice, after the answer directive and ``limit``."""
    if directives is not None and directives.answer is not None:
        tokens = tokenize(directives.answer)
    else:
        tokens = list(answer_tokens(digest, index))
    if limit is not None and len(tokens) > limit:
        return tokens[:limit], "length"
    return tokens, "stop"
