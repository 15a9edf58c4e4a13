"""Celery entry points for deployments, on the ``gpu`` queue: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from apps.deployments import services

# Start-up waits for weights to load (VLLM_STARTUP_TIMEOUT_SECONDS, 20 min by default).
START_LIMIT_SECONDS = 40 * 60


@shared_task(name="deployments.start", queue="gpu", time_limit=START_LIMIT_SECONDS,
             soft_time_limit=START_LIMIT_SECONDS - 60)  # fmt: skip
def deployment_start_task(deployment_id: int) -> str:
    return services.deployment_start(deployment_id=deployment_id).status


@shared_task(name="deployments.stop", queue="gpu", time_limit=300, soft_time_limit=240,
             autoretry_for=(services.DeploymentStateError,), max_retries=5, retry_backoff=True)  # fmt: skip
def deployment_stop_task(deployment_id: int) -> str:
    return services.deployment_stop(deployment_id=deployment_id).status


@shared_task(name="deployments.supervise", queue="gpu", time_limit=120, soft_time_limit=100)
def deployments_supervise_task() -> int:
    return len(services.deployments_supervise())
