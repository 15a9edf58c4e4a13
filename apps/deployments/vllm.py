"""The vLLM side: the ``vllm serve`` command line, the server process and its health endpoint.

Flag names are vLLM's (``vllm serve --model=MODEL --served-model-name=… --tensor-parallel-size=…
--pipeline-parallel-size=… --max-model-len=… --quantization=… --host=… --port=…``). Every value is
attached to its flag with ``=``, so no value, whatever it holds, can be read as an option of its own;
the model fields are validated against a grammar when saved (``models.validate_model_path``). The
API key goes in the ``VLLM_API_KEY`` environment variable, which vLLM reads like ``--api-key``, so
it never shows in a process listing. The server gets a minimal environment (``server_environment``):
none of our database URL, Django secret key or encryption keys. ``GET /health`` answers 200 once
the engine is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx2

from apps.deployments.models import Deployment, Quantization, validate_model_path, validate_served_name
from costcontrol.egress import egress_http_client

# What the server inherits from the worker: how to run (paths, locale, temp), and the knobs of
# vLLM, PyTorch, CUDA/ROCm and the Hugging Face hub. Everything else (DATABASE_URL, REDIS_URL,
# DJANGO_SECRET_KEY, COSTCONTROL_ENCRYPTION_KEYS, cloud credentials…) stays with the worker.
_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
_ENV_PREFIXES = ("VLLM_", "CUDA_", "NVIDIA_", "ROCM_", "HIP_", "HF_", "HUGGING_FACE_", "TRANSFORMERS_", "TORCH",
                 "OMP_", "MKL_", "NCCL_", "TOKENIZERS_")  # fmt: skip


def server_environment(parent: Mapping[str, str], *, api_key: str = "") -> dict[str, str]:
    """The minimal environment a vLLM process gets (plus the server's API key, when it has one)."""
    env = {name: value for name, value in parent.items() if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES)}
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


def _model_arguments(deployment: Deployment) -> list[str]:
    """``--model=…`` and the engine arguments ``vllm serve`` and ``vllm run-batch`` share, each value
    attached to its flag; the model fields are re-checked here, whatever the row holds."""
    validate_model_path(deployment.model_path)
    validate_served_name(deployment.served_model_name)
    flags = [
        f"--model={deployment.model_path}",
        f"--served-model-name={deployment.served_model_name}",
        f"--tensor-parallel-size={int(deployment.tensor_parallel_size)}",
    ]
    if deployment.pipeline_parallel_size > 1:
        flags.append(f"--pipeline-parallel-size={int(deployment.pipeline_parallel_size)}")
    flags.append(f"--max-model-len={int(deployment.max_model_len)}")
    if deployment.quantization != Quantization.NONE:
        flags.append(f"--quantization={Quantization(deployment.quantization).value}")
    return flags


def serve_command(*, deployment: Deployment, executable: list[str], host: str) -> list[str]:
    """The argument vector that serves ``deployment`` with vLLM on ``host``."""
    return [*executable, "serve", *_model_arguments(deployment), f"--host={host}", f"--port={int(deployment.port)}"]


def run_batch_command(*, deployment: Deployment, executable: list[str], source: Path, target: Path) -> list[str]:
    """The argument vector that runs an OpenAI Batch JSONL file through ``deployment``'s model offline
    (``vllm run-batch``: the engine starts, runs every line, writes the output file and exits)."""
    return [*executable, "run-batch", f"--input-file={source}", f"--output-file={target}",
            *_model_arguments(deployment)]  # fmt: skip


def server_launch(*, command: list[str], log_path: Path, api_key: str) -> subprocess.Popen[bytes]:
    """Start the server in its own session, so it outlives the task and its whole group can be signalled."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 (our own argument vector, no shell)
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(os.environ, api_key=api_key),
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
    """``GET {server}/health`` answered 200 (``base_url`` is the ``…/v1`` URL), through the egress policy."""
    url = base_url.removesuffix("/v1") + "/health"
    try:
        with egress_http_client(timeout=timeout) as client:
            return client.get(url).status_code == 200
    except (httpx2.HTTPError, OSError):
        return False


def log_tail(log_path: Path, *, chars: int = 2000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
