"""Deployments for tests, and stand-in ``vllm`` executables the tests write.

The stand-ins take the real ``vllm serve`` argument vector, record it (and the API key vLLM
would read from ``VLLM_API_KEY``), then become something a GPU worker may meet: the project's
simulated upstream (an OpenAI-compatible server with ``GET /health``), a server that never
gets healthy, or one that crashes while loading.
"""

from __future__ import annotations

import itertools
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from apps.deployments.models import Deployment
from apps.deployments.services import deployment_create
from apps.tenancy.models import Organization
from tests.live import ROOT

_seq = itertools.count(1)

_HEADER = f"""#!{sys.executable}
import json, os, sys, time
args = sys.argv[1:]
with open({{record!r}}, "w") as f:
    json.dump({{{{"argv": args, "api_key": os.environ.get("VLLM_API_KEY", ""), "env": sorted(os.environ)}}}}, f)
flags = dict(arg[2:].split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)
host, port = flags["host"], flags["port"]
"""

BEHAVIOURS = {
    # Replace this process (same pid, same process group) with the simulator on the given address.
    "serve": 'os.chdir({root!r})\nos.execv(sys.executable, [sys.executable, "-m", "apps.simulator", "--host", host, '
    '"--port", port])\n',
    "hang": "time.sleep(600)\n",
    "crash": 'print("torch.OutOfMemoryError: CUDA out of memory", flush=True)\nsys.exit(1)\n',
}


def fake_vllm(directory: Path, behaviour: str) -> tuple[Path, Path]:
    """Write an executable stand-in for ``vllm``; returns it and the file it records its arguments in."""
    record = directory / f"vllm-{behaviour}-args.json"
    script = directory / f"vllm-{behaviour}"
    script.write_text(_HEADER.format(record=str(record)) + BEHAVIOURS[behaviour].format(root=str(ROOT)))
    script.chmod(0o755)
    return script, record


def recorded(record: Path) -> dict[str, Any]:
    return json.loads(record.read_text())


def deployment_make(organization: Organization, **fields: Any) -> Deployment:
    values: dict[str, Any] = {
        "name": f"qwen-{next(_seq)}",
        "served_model_name": "qwen2.5-72b-instruct",
        "model_path": "Qwen/Qwen2.5-72B-Instruct-AWQ",
        "gpu_type": "H100 80GB",
        "gpu_count": 2,
        "tensor_parallel_size": 2,
        "max_model_len": 32768,
        "quantization": "awq",
        "hourly_cost_usd": Decimal("4.80"),
        "throughput_tokens_per_s": Decimal("1200"),
        "port": 20000 + next(_seq),  # ports are unique per organisation
    }
    values.update(fields)
    return deployment_create(organization=organization, **values)
