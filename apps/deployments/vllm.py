"""The vLLM side: the ``vllm serve`` command line, the server process and its health endpoint.

Flag names are vLLM's (``vllm serve MODEL --served-model-name … --tensor-parallel-size …
--pipeline-parallel-size … --max-model-len … --quantization … --host … --port …``). The API key
goes in the ``VLLM_API_KEY`` environment variable, which vLLM reads like ``--api-key``, so it never
shows in a process listing. ``GET /health`` answers 200 once the engine is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

from apps.deployments.models import Deployment, Quantization


def _engine_flags(deployment: Deployment) -> list[str]:
    """The engine arguments ``vllm serve`` and ``vllm run-batch`` share."""
    flags = [
        "--served-model-name",
        deployment.served_model_name,
        "--tensor-parallel-size",
        str(deployment.tensor_parallel_size),
    ]
    if deployment.pipeline_parallel_size > 1:
        flags += ["--pipeline-parallel-size", str(deployment.pipeline_parallel_size)]
    flags += ["--max-model-len", str(deployment.max_model_len)]
    if deployment.quantization != Quantization.NONE:
        flags += ["--quantization", deployment.quantization]
    return flags


def serve_command(*, deployment: Deployment, executable: list[str], host: str) -> list[str]:
    """The argument vector that serves ``deployment`` with vLLM on ``host``."""
    return [
        *executable, "serve", deployment.model_path, *_engine_flags(deployment),
        "--host", host, "--port", str(deployment.port),
    ]  # fmt: skip


def run_batch_command(*, deployment: Deployment, executable: list[str], source: Path, target: Path) -> list[str]:
    """The argument vector that runs an OpenAI Batch JSONL file through ``deployment``'s model offline
    (``vllm run-batch``: the engine starts, runs every line, writes the output file and exits)."""
    return [
        *executable, "run-batch", "-i", str(source), "-o", str(target), "--model", deployment.model_path,
        *_engine_flags(deployment),
    ]  # fmt: skip


def server_launch(*, command: list[str], log_path: Path, api_key: str) -> subprocess.Popen[bytes]:
    """Start the server in its own session, so it outlives the task and its whole group can be signalled."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 (our own argument vector, no shell)
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_API_KEY": api_key},
            start_new_session=True,
        )


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it first when it is our child (a zombie would look alive)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # started by another worker process: only a signal can tell
    else:
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_terminate(pid: int, *, grace_seconds: float = 30.0) -> None:
    """SIGTERM the server's process group (vLLM's engine and tensor-parallel workers), SIGKILL after the grace."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            process_alive(pid)  # reap a zombie child
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return
            time.sleep(0.1)


def health_ok(base_url: str, *, timeout: float = 5.0) -> bool:
    """``GET {server}/health`` answered 200 (``base_url`` is the ``…/v1`` URL)."""
    url = base_url.removesuffix("/v1") + "/health"
    try:
        with urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own server's URL)
            return response.status == 200
    except (HTTPError, URLError, OSError):
        return False


def log_tail(log_path: Path, *, chars: int = 2000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
