"""Writes for deployments: create, ask to start/stop, and the GPU worker's start, stop and supervision.

``deployment_request_start`` / ``deployment_request_stop`` run in web requests: they move the row
to starting/stopping and hand the work to the ``gpu`` queue once committed. ``deployment_start``,
``deployment_stop`` and ``deployments_supervise`` run on the GPU worker (see ``tasks.py``).

The registered provider's price: a deployment costs ``hourly_cost_usd`` whatever it serves, so at
full load it produces ``throughput × 3600`` output tokens an hour, and one million output tokens
cost ``hourly_cost_usd × 1,000,000 / (throughput × 3600)``. The throughput is measured with the
real prompt mix, so it already pays for prefill: input tokens are priced at 0. The ledger then
shows the marginal cost at full load; an idle server's hours are in its runs, not in the ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import socket
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.models import AuditAction
from apps.audit.services import audit_record, audit_snapshot, audit_stored
from apps.core.pricing import MTOK
from apps.deployments import conf, vllm
from apps.deployments.models import Deployment, DeploymentRun, DeploymentStatus
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import price_set, provider_create, provider_update
from apps.tenancy.models import Organization
from costcontrol.egress import egress_check

logger = logging.getLogger(__name__)

SECONDS_PER_HOUR = Decimal(3600)
STARTABLE = (DeploymentStatus.STOPPED, DeploymentStatus.FAILED)
STOPPABLE = (DeploymentStatus.STARTING, DeploymentStatus.RUNNING, DeploymentStatus.FAILED)


class DeploymentStateError(Exception):
    """The deployment is not in a state that allows the action."""


def deployment_create(
    *,
    organization: Organization,
    name: str,
    served_model_name: str,
    model_path: str,
    gpu_type: str,
    hourly_cost_usd: Decimal,
    gpu_count: int = 1,
    tensor_parallel_size: int = 1,
    max_model_len: int = 8192,
    quantization: str = "none",
    port: int = 8000,
    throughput_tokens_per_s: Decimal | None = None,
) -> Deployment:
    deployment = Deployment(
        organization=organization,
        name=name,
        served_model_name=served_model_name,
        model_path=model_path,
        gpu_type=gpu_type,
        gpu_count=gpu_count,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        quantization=quantization,
        port=port,
        hourly_cost_usd=hourly_cost_usd,
        throughput_tokens_per_s=throughput_tokens_per_s,
    )
    deployment.full_clean()
    try:
        egress_check(server_url(port=deployment.port))
    except ValidationError as exc:
        raise ValidationError({"port": exc.messages}) from None
    with transaction.atomic():
        deployment.save()
        audit_record(action=AuditAction.CREATE, obj=deployment, after=audit_snapshot(deployment))
    return deployment


def server_url(*, port: int) -> str:
    """The ``…/v1`` URL gateways reach a deployment's server at (``VLLM_PUBLIC_HOST`` and its port)."""
    return f"http://{conf.vllm_public_host()}:{port}/v1"


def price_per_mtok(*, hourly_cost_usd: Decimal, throughput_tokens_per_s: Decimal | None) -> Decimal:
    """USD per 1M output tokens at full load (0 until a throughput is measured)."""
    if not throughput_tokens_per_s:
        return Decimal(0)
    value = hourly_cost_usd * MTOK / (throughput_tokens_per_s * SECONDS_PER_HOUR)
    return value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def _request(*, deployment: Deployment, allowed: tuple[str, ...], status: str, task: Any, enqueue: bool) -> Deployment:
    """Move the deployment to ``status`` if it is in an ``allowed`` state; the task runs once that is committed."""
    changes: dict[str, Any] = {"status": status}
    if status == DeploymentStatus.STARTING:
        # A startable deployment has no process (pid is None): the host it last ran on no longer holds its port.
        changes.update(last_error="", health_failures=0, worker_host="")
    with transaction.atomic():
        before = audit_stored(deployment)
        if not Deployment.objects.filter(pk=deployment.pk, status__in=allowed).update(**changes):
            raise DeploymentStateError(f"{deployment.name} is {deployment.get_status_display().lower()}")
        deployment.refresh_from_db()
        audit_record(
            action=AuditAction.START if status == DeploymentStatus.STARTING else AuditAction.STOP,
            obj=deployment,
            before=before,
            after=audit_snapshot(deployment),
        )
        if enqueue:
            transaction.on_commit(lambda: task.delay(deployment.pk))
    return deployment


def deployment_request_start(*, deployment: Deployment, enqueue: bool = True) -> Deployment:
    """Mark the deployment starting and enqueue ``deployments.start`` once that is committed."""
    from apps.deployments.tasks import deployment_start_task  # the task module imports this one

    return _request(deployment=deployment, allowed=STARTABLE, status=DeploymentStatus.STARTING,
                    task=deployment_start_task, enqueue=enqueue)  # fmt: skip


def deployment_request_stop(*, deployment: Deployment, enqueue: bool = True) -> Deployment:
    """Mark the deployment stopping and enqueue ``deployments.stop`` once that is committed."""
    from apps.deployments.tasks import deployment_stop_task

    return _request(deployment=deployment, allowed=STOPPABLE, status=DeploymentStatus.STOPPING,
                    task=deployment_stop_task, enqueue=enqueue)  # fmt: skip


def _here() -> str:
    return socket.gethostname()


def _status(deployment_id: int) -> str:
    return Deployment.objects.filter(pk=deployment_id).values_list("status", flat=True).get()


def deployment_start(*, deployment_id: int) -> Deployment:
    """Launch ``vllm serve``, wait for ``/health``, register the provider and its price, mark it running.

    Does nothing unless the deployment is starting (a stop may have come first). A redelivered
    task finds the earlier attempt's run open: that process is terminated and the run closed first.
    """
    deployment = Deployment.objects.get(pk=deployment_id)
    if deployment.status != DeploymentStatus.STARTING:
        return deployment
    if deployment.pid is not None or deployment.runs.filter(ended_at__isnull=True).exists():
        _release(deployment, outcome=DeploymentStatus.FAILED, error="", status=DeploymentStatus.STARTING)
        deployment.refresh_from_db()

    base_url = server_url(port=deployment.port)
    refused = _claim_host(deployment, base_url)
    if refused:
        _release(deployment, outcome=DeploymentStatus.FAILED, error=refused, expect=DeploymentStatus.STARTING)
        deployment.refresh_from_db()
        return deployment

    api_key = secrets.token_urlsafe(32)
    command = vllm.serve_command(deployment=deployment, executable=conf.vllm_executable(), host=conf.vllm_bind_host())
    log_path = conf.vllm_log_dir() / f"deployment-{deployment.pk}.log"
    process = vllm.server_launch(command=command, log_path=log_path, api_key=api_key)
    now = timezone.now()
    with transaction.atomic():
        recorded = Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.STARTING).update(
            pid=process.pid, worker_host=_here(), started_at=now, stopped_at=None, base_url=""
        )
        if recorded:
            DeploymentRun.objects.create(
                deployment=deployment,
                started_at=now,
                gpu_count=deployment.gpu_count,
                hourly_cost_usd=deployment.hourly_cost_usd,
            )
    if not recorded:  # stopped while we launched: nobody else knows this process
        vllm.process_terminate(process.pid)
        deployment.refresh_from_db()
        return deployment
    error = _wait_healthy(deployment_id=deployment.pk, pid=process.pid, base_url=base_url)
    if error is None:
        return _mark_running(deployment_id=deployment.pk, base_url=base_url, api_key=api_key)
    if error:
        deployment.refresh_from_db()
        error = f"{error}\n{vllm.log_tail(log_path)}".strip()
        _release(deployment, outcome=DeploymentStatus.FAILED, error=error, expect=DeploymentStatus.STARTING)
    deployment.refresh_from_db()
    return deployment


def _claim_host(deployment: Deployment, base_url: str) -> str:
    """Hold the deployment's port on this host before launching; why not ("" when held).

    The URL gateways will use must pass the egress policy, and no other starting, running or
    stopping deployment may hold the port here (``deployment_port_unique_per_host``).
    """
    try:
        egress_check(base_url)
    except ValidationError as exc:
        return f"The server's URL {base_url} cannot be used: {' '.join(exc.messages)}"
    try:
        with transaction.atomic():
            Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.STARTING).update(worker_host=_here())
    except IntegrityError:
        # Possibly another organisation's deployment: not named here.
        return f"Port {deployment.port} on {_here()} is held by another deployment; pick another port."
    deployment.worker_host = _here()
    return ""


def _wait_healthy(*, deployment_id: int, pid: int, base_url: str) -> str | None:
    """None once healthy; "" when a stop was asked for meanwhile (the stop task cleans up); else why not."""
    timeout, interval = conf.vllm_startup_timeout(), conf.vllm_health_interval()
    deadline = timezone.now() + dt.timedelta(seconds=timeout)
    while True:
        if vllm.health_ok(base_url, timeout=min(interval, 5.0) or 1.0):
            return None
        if not vllm.process_alive(pid):
            return "The server process exited before it was healthy."
        if _status(deployment_id) != DeploymentStatus.STARTING:
            return ""
        if timezone.now() >= deadline:
            return f"No healthy answer from {base_url.removesuffix('/v1')}/health within {timeout:g} s."
        time.sleep(interval)


def _register(deployment: Deployment, *, base_url: str, api_key: str) -> Provider:
    """Create or refresh the deployment's provider (OpenAI-compatible) and today's price for its model."""
    provider = deployment.provider
    name = f"vLLM {deployment.name}"
    if provider is None:
        provider = Provider.objects.filter(organization=deployment.organization_id, name=name).first()
    if provider is None:
        provider = provider_create(
            organization=deployment.organization,
            name=name,
            kind=ProviderKind.OPENAI_COMPATIBLE,
            base_url=base_url,
            secret=api_key,
            seed_catalog=False,
        )
    else:
        provider_update(provider=provider, name=provider.name, base_url=base_url, secret=api_key, is_active=True)
    per_mtok = price_per_mtok(
        hourly_cost_usd=deployment.hourly_cost_usd, throughput_tokens_per_s=deployment.throughput_tokens_per_s
    )
    price_set(
        provider=provider,
        model=deployment.served_model_name,
        input_per_mtok=Decimal(0),
        output_per_mtok=per_mtok,
        effective_from=timezone.localdate(),
    )
    return provider


def _mark_running(*, deployment_id: int, base_url: str, api_key: str) -> Deployment:
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update(of=("self",)).select_related("organization").get(pk=deployment_id)
        )
        if deployment.status != DeploymentStatus.STARTING:
            return deployment  # stopped while it came up: the stop task terminates it
        deployment.provider = _register(deployment, base_url=base_url, api_key=api_key)
        deployment.status = DeploymentStatus.RUNNING
        deployment.base_url = base_url
        deployment.health_failures = 0
        deployment.full_clean()
        deployment.save()
    return deployment


def _close_run(deployment: Deployment, *, outcome: str, now: dt.datetime) -> DeploymentRun | None:
    run = DeploymentRun.objects.filter(deployment=deployment, ended_at__isnull=True).first()
    if run is None:
        return None
    hours = Decimal((now - run.started_at).total_seconds()) / SECONDS_PER_HOUR
    run.ended_at = now
    run.gpu_hours = (hours * run.gpu_count).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    run.cost = (hours * run.hourly_cost_usd).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    run.outcome = outcome
    run.full_clean()
    run.save()
    return run


def _release(
    deployment: Deployment, *, outcome: str, error: str, status: str | None = None, expect: str | None = None
) -> Deployment | None:
    """Terminate the server when it runs on this host, close the open run, take the provider out of service.

    ``status`` is the deployment's new state (``outcome`` by default). With ``expect``, nothing
    happens (None) unless the deployment is still in that state once locked.
    """
    if deployment.pid is not None and deployment.worker_host in ("", _here()):
        vllm.process_terminate(deployment.pid)
    with transaction.atomic():
        locked = Deployment.objects.select_for_update(of=("self",)).select_related("provider").get(pk=deployment.pk)
        if expect is not None and locked.status != expect:
            return None
        now = timezone.now()
        _close_run(locked, outcome=outcome, now=now)
        locked.status = status or outcome
        locked.pid = None
        locked.base_url = ""
        locked.stopped_at = now
        locked.last_error = error
        locked.full_clean()
        locked.save()
        if locked.provider is not None and locked.provider.is_active:
            provider = locked.provider
            provider_update(provider=provider, name=provider.name, base_url=provider.base_url, secret=None,
                            is_active=False)  # fmt: skip
    return locked


def deployment_stop(*, deployment_id: int) -> Deployment:
    """Terminate the server, record the run's GPU-hours and cost, mark it stopped. Idempotent.

    The server must run on this worker's host; elsewhere the deployment stays stopping, with the reason.
    """
    deployment = Deployment.objects.get(pk=deployment_id)
    if deployment.status != DeploymentStatus.STOPPING:
        return deployment
    if deployment.pid is not None and deployment.worker_host not in ("", _here()):
        why = f"The server runs on {deployment.worker_host}; only a gpu worker there can stop it."
        Deployment.objects.filter(pk=deployment.pk).update(last_error=why)
        raise DeploymentStateError(why)
    released = _release(deployment, outcome=DeploymentStatus.STOPPED, error="", expect=DeploymentStatus.STOPPING)
    return released or Deployment.objects.get(pk=deployment_id)


def deployments_supervise(*, now: dt.datetime | None = None) -> list[int]:
    """Fail running deployments whose process died or whose ``/health`` failed too often in a row.

    Also fails deployments stuck in starting well past the start-up timeout (their worker died).
    Returns the ids it failed.
    """
    now = now or timezone.now()
    failed = []
    here, limit = _here(), conf.vllm_health_failures()
    for deployment in Deployment.objects.filter(status=DeploymentStatus.RUNNING).select_related("provider"):
        if deployment.pid is not None and deployment.worker_host == here and not vllm.process_alive(deployment.pid):
            why = "The server process exited."
        elif vllm.health_ok(deployment.base_url):
            if deployment.health_failures:
                Deployment.objects.filter(pk=deployment.pk).update(health_failures=0)
            continue
        else:
            failures = deployment.health_failures + 1
            Deployment.objects.filter(pk=deployment.pk).update(health_failures=failures)
            if failures < limit:
                continue
            why = f"/health failed {failures} times in a row."
        if _fail(deployment, why):
            failed.append(deployment.pk)
    stale = now - dt.timedelta(seconds=conf.vllm_startup_timeout() + 300)
    for deployment in Deployment.objects.filter(status=DeploymentStatus.STARTING, started_at__lt=stale):
        if _fail(deployment, "Start-up never finished (its worker stopped)."):
            failed.append(deployment.pk)
    return failed


def _fail(deployment: Deployment, why: str) -> bool:
    """Mark failed (a server on another host is not signalled: its host may be gone)."""
    if deployment.pid is not None and deployment.worker_host not in ("", _here()):
        why += f" Its process on {deployment.worker_host} was not signalled from here."
    released = _release(deployment, outcome=DeploymentStatus.FAILED, error=why, expect=deployment.status)
    if released is not None:
        logger.warning("deployment %s failed: %s", deployment.pk, why)
    return released is not None
