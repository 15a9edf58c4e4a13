"""Start → /health → provider registered → traffic through the gateway → stop, with real processes.

vLLM is not installed here: ``VLLM_EXECUTABLE`` points at a script the test writes, which
records the ``vllm serve`` arguments and then runs the project's simulated upstream (an
OpenAI-compatible server with ``GET /health``) on the port the command asked for.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from apps.deployments.models import Deployment, DeploymentRun, DeploymentStatus
from apps.deployments.services import deployment_request_start, deployment_request_stop, deployments_supervise
from apps.deployments.tasks import deployment_start_task, deployment_stop_task, deployments_supervise_task
from apps.deployments.vllm import health_ok, process_alive, process_terminate
from apps.keys.services import key_issue
from apps.providers.models import Price, ProviderKind
from apps.tenancy.services import organization_create, project_create
from tests.deployments.helpers import deployment_make, fake_vllm, recorded
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_policy
from tests.live import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "gpt-4.1-mini"


@pytest.fixture(autouse=True)
def _gpu_worker(settings: object, tmp_path: Path) -> Iterator[None]:
    settings.VLLM_LOG_DIR = str(tmp_path / "logs")  # type: ignore[attr-defined]
    settings.VLLM_BIND_HOST = "127.0.0.1"  # type: ignore[attr-defined]
    settings.VLLM_HEALTH_INTERVAL_SECONDS = "0.1"  # type: ignore[attr-defined]
    settings.VLLM_STARTUP_TIMEOUT_SECONDS = "30"  # type: ignore[attr-defined]
    yield
    # A test that failed half-way must not leave its server running.
    here = Deployment.objects.filter(pid__isnull=False, worker_host=socket.gethostname())
    for pid in here.values_list("pid", flat=True):
        process_terminate(pid, grace_seconds=5)


def _start(deployment: Deployment) -> Deployment:
    """What the Start button does (its enqueueing is tested in test_pages), then the gpu worker's task."""
    assert deployment_request_start(deployment=deployment, enqueue=False).status == DeploymentStatus.STARTING
    deployment_start_task(deployment.pk)
    deployment.refresh_from_db()
    return deployment


def _stop(deployment: Deployment) -> Deployment:
    deployment_request_stop(deployment=deployment, enqueue=False)
    deployment_stop_task(deployment.pk)
    deployment.refresh_from_db()
    return deployment


def test_start_serves_through_the_gateway_and_stop_records_the_run(
    gateway: str, transactional_db: None, settings: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's own secrets, as a production worker has them in its environment.
    for name in ("DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "COSTCONTROL_ENCRYPTION_KEYS"):
        monkeypatch.setenv(name, f"worker-only-{name.lower()}")
    script, record = fake_vllm(tmp_path, "serve")
    settings.VLLM_EXECUTABLE = str(script)  # type: ignore[attr-defined]
    # An organisation whose only provider will be the deployment. The simulator behind the
    # stand-in answers only OpenAI's model names, so the deployment serves one of those.
    org = organization_create(name="self-hosters")
    key = key_issue(project=project_create(organization=org, name="on-prem"), name="app").plaintext
    port = free_port()
    deployment = deployment_make(org, port=port, served_model_name=MODEL, hourly_cost_usd=Decimal("4.80"))

    deployment = _start(deployment)

    assert deployment.status == DeploymentStatus.RUNNING, deployment.last_error
    base_url = f"http://127.0.0.1:{port}/v1"
    assert deployment.base_url == base_url and health_ok(base_url)
    assert deployment.pid is not None and process_alive(deployment.pid)
    seen = recorded(record)
    assert seen["argv"] == [
        "serve", "--model=Qwen/Qwen2.5-72B-Instruct-AWQ", f"--served-model-name={MODEL}",
        "--tensor-parallel-size=2", "--max-model-len=32768", "--quantization=awq",
        "--host=127.0.0.1", f"--port={port}",
    ]  # fmt: skip
    # The server gets a minimal environment: none of our database, Redis, Django or encryption secrets.
    assert not {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "COSTCONTROL_ENCRYPTION_KEYS"} & set(seen["env"])
    assert "PATH" in seen["env"] and "VLLM_API_KEY" in seen["env"]
    provider = deployment.provider
    assert provider is not None
    assert (provider.kind, provider.base_url, provider.is_active) == (ProviderKind.OPENAI_COMPATIBLE, base_url, True)
    assert seen["api_key"] and provider.secret == seen["api_key"]  # the key vLLM was given
    price = Price.objects.get(provider=provider, model=MODEL)
    # $4.80 an hour / (1200 tokens/s × 3600 s) = $1.111111 per 1M output tokens; input is in that figure.
    assert (price.output_per_mtok, price.input_per_mtok) == (Decimal("1.111111"), Decimal(0))

    # An app asks for the served name with its usual key; the gateway sends it to the deployment.
    wait_policy(gateway, key)
    raw = sdk(gateway, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from the self-hosted model"}]
    )
    answer, row = raw.parse(), ledger_row(raw.headers["x-request-id"])
    assert row.provider_id == provider.pk and row.served_model == MODEL
    expected = Decimal(answer.usage.completion_tokens) * Decimal("1.111111") / 1_000_000
    assert row.cost == expected.quantize(Decimal("0.00000001")) > 0  # the ledger keeps 8 decimals

    pid = deployment.pid
    deployment = _stop(deployment)

    assert deployment.status == DeploymentStatus.STOPPED and deployment.pid is None and deployment.base_url == ""
    assert not process_alive(pid) and not health_ok(base_url)
    provider.refresh_from_db()
    assert not provider.is_active  # the gateway stops sending traffic to it
    run = DeploymentRun.objects.get(deployment=deployment)
    hours = Decimal((run.ended_at - run.started_at).total_seconds()) / 3600
    assert run.outcome == DeploymentStatus.STOPPED and run.gpu_count == 2
    assert run.gpu_hours == (hours * 2).quantize(Decimal("0.000001"))
    assert run.cost == (hours * Decimal("4.80")).quantize(Decimal("0.000001")) > 0
    assert run.started_at >= deployment.started_at - dt.timedelta(seconds=1)
    assert deployment_stop_task(deployment.pk) == DeploymentStatus.STOPPED  # a redelivered stop changes nothing
    assert DeploymentRun.objects.count() == 1

    # Started again: same provider, back in service, a second run.
    deployment = _start(deployment)
    assert deployment.status == DeploymentStatus.RUNNING and deployment.provider_id == provider.pk
    provider.refresh_from_db()
    assert provider.is_active and provider.secret == recorded(record)["api_key"] != seen["api_key"]
    _stop(deployment)
    assert DeploymentRun.objects.filter(deployment=deployment, ended_at__isnull=False).count() == 2


def test_no_health_within_the_timeout_fails_and_kills_the_server(
    tenant: Tenant, settings: object, tmp_path: Path
) -> None:
    script, record = fake_vllm(tmp_path, "hang")
    settings.VLLM_EXECUTABLE = str(script)  # type: ignore[attr-defined]
    settings.VLLM_STARTUP_TIMEOUT_SECONDS = "1.5"  # type: ignore[attr-defined]
    deployment = deployment_make(tenant.org, port=free_port())

    deployment = _start(deployment)

    assert deployment.status == DeploymentStatus.FAILED
    assert "No healthy answer from" in deployment.last_error and "within 1.5 s" in deployment.last_error
    assert deployment.provider is None and deployment.pid is None  # never registered
    run = DeploymentRun.objects.get(deployment=deployment)
    assert run.outcome == DeploymentStatus.FAILED and run.cost > 0  # the GPU was held while it tried
    launched = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs(p, str(script))]
    assert launched == []  # the hung server was terminated
    assert record.exists()


def _runs(proc: Path, script: str) -> bool:
    try:
        return script in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_a_crash_while_loading_fails_with_the_servers_own_words(
    tenant: Tenant, settings: object, tmp_path: Path
) -> None:
    script, _ = fake_vllm(tmp_path, "crash")
    settings.VLLM_EXECUTABLE = str(script)  # type: ignore[attr-defined]
    deployment = _start(deployment_make(tenant.org, port=free_port()))
    assert deployment.status == DeploymentStatus.FAILED
    assert "exited before it was healthy" in deployment.last_error
    assert "CUDA out of memory" in deployment.last_error


def test_supervision_fails_a_deployment_whose_server_died(tenant: Tenant, settings: object, tmp_path: Path) -> None:
    script, _ = fake_vllm(tmp_path, "serve")
    settings.VLLM_EXECUTABLE = str(script)  # type: ignore[attr-defined]
    healthy = _start(deployment_make(tenant.org, port=free_port()))
    dying = _start(deployment_make(tenant.org, port=free_port()))
    assert healthy.status == dying.status == DeploymentStatus.RUNNING

    assert deployments_supervise() == []  # both answer /health
    os.killpg(dying.pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(dying.pid))

    assert deployments_supervise_task() == 1
    dying.refresh_from_db()
    healthy.refresh_from_db()
    assert dying.status == DeploymentStatus.FAILED and dying.last_error == "The server process exited."
    assert not dying.provider.is_active and dying.runs.get().outcome == DeploymentStatus.FAILED
    assert healthy.status == DeploymentStatus.RUNNING and healthy.provider.is_active
    assert deployments_supervise() == []  # already failed: not failed twice
    _stop(healthy)


def test_supervision_tolerates_a_slow_health_check_but_not_three(
    tenant: Tenant, settings: object, tmp_path: Path
) -> None:
    """A server on another GPU host cannot be signalled: only its /health tells (here: nobody answers)."""
    settings.VLLM_HEALTH_FAILURES = 3  # type: ignore[attr-defined]
    deployment = deployment_make(tenant.org, port=free_port())
    Deployment.objects.filter(pk=deployment.pk).update(
        status=DeploymentStatus.RUNNING, base_url=f"http://127.0.0.1:{deployment.port}/v1", pid=4242,
        worker_host="gpu-7.internal", started_at=timezone.now(),
    )  # fmt: skip
    DeploymentRun.objects.create(
        deployment=deployment, started_at=timezone.now() - dt.timedelta(hours=2), gpu_count=2,
        hourly_cost_usd=Decimal("4.80"),
    )  # fmt: skip

    assert deployments_supervise() == [] and deployments_supervise() == []
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.RUNNING and deployment.health_failures == 2
    assert deployments_supervise() == [deployment.pk]
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.FAILED
    assert "failed 3 times in a row" in deployment.last_error and "gpu-7.internal" in deployment.last_error
    run = deployment.runs.get()
    assert Decimal("9.5") < run.cost < Decimal("9.7")  # about 2 h at $4.80
