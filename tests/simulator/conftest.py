"""Fixtures for the simulated upstream: real server processes on loopback, driven by the openai SDK."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from tests import live


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    """Base URL (…/v1) of a simulator started with the default config."""
    process, url = live.start_upstream()
    yield url
    process.stop()


@pytest.fixture(scope="module")
def client(simulator_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=simulator_url, api_key="x", max_retries=0)


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., openai.OpenAI]]:
    """Start a simulator with CLI flags (``latency_ms="50"``) and return a client for it."""
    processes: list[live.Process] = []

    def start(**flags: str) -> openai.OpenAI:
        process, url = live.start_upstream(**flags)
        processes.append(process)
        return openai.OpenAI(base_url=url, api_key="x", max_retries=0)

    yield start
    for process in processes:
        process.stop()
