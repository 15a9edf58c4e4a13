"""vLLM's own batch runner on an OpenAI Batch JSONL file: what a self-hosted batch backend will call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.vllm import helpers

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not helpers.PYTHON.exists(), reason="no var/vllm-venv: `make test-vllm` installs it"),
]

QUESTIONS = ["What is the capital of France?", "Name a colour.", "Count to three.", "Say hello."]


def test_run_batch_answers_every_line_in_openai_batch_format(
    tiny_model: Path, vllm_scratch: Path, tmp_path: Path
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        {
            "custom_id": f"line-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": helpers.MODEL_NAME, "messages": [{"role": "user", "content": q}], "max_tokens": 8},
        }
        for n, q in enumerate(QUESTIONS)
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    started = time.monotonic()
    result = helpers.run_batch(tiny_model, vllm_scratch, source, target)
    helpers.timing(f"run_batch wall time ({len(lines)} lines)", time.monotonic() - started)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    out = [json.loads(line) for line in target.read_text().splitlines()]
    by_id = {row["custom_id"]: row for row in out}
    assert len(out) == len(lines) and set(by_id) == {line["custom_id"] for line in lines}
    for row in out:
        assert row["error"] is None
        assert row["response"]["status_code"] == 200
        body = row["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == helpers.MODEL_NAME
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
        assert body["choices"][0]["message"]["role"] == "assistant"
