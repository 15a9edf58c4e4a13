"""vLLM's offline runner: a batch for a stopped self-hosted deployment runs with ``vllm run-batch``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.batches.models import Batch, BatchBackend, BatchLine, BatchStatus, LineStatus
from apps.batches.services.lines import (
    LineResult,
    Resolver,
    Target,
    batch_finalize,
    commit,
    result_from_record,
)
from apps.batches.services.reserve import (
    reserve_whole,
    settle_whole,
)
from apps.core.events import clean_count
from apps.core.pricing import MTOK, token_cost
from apps.deployments import conf as deployments_conf
from apps.deployments import vllm
from apps.deployments.models import Deployment, DeploymentRun, DeploymentStatus
from apps.deployments.services import price_per_mtok
from apps.tenancy.models import Project

logger = logging.getLogger(__name__)


MICRO = Decimal("0.000001")


def stopped_deployment(project: Project, lines: list[BatchLine]) -> Deployment | None:
    """The organisation's stopped vLLM deployment serving the one model every line names, if no running
    provider serves it: then the lines run offline with ``vllm run-batch`` on its GPU host."""
    models = {str(line.body.get("model")) for line in lines}
    if len(models) != 1 or Resolver(project)(next(iter(models))).provider is not None:
        return None
    return Deployment.objects.filter(
        organization_id=project.organization_id, served_model_name=next(iter(models)), status=DeploymentStatus.STOPPED
    ).first()


def batch_run_vllm(*, batch_id: str) -> int:
    """Run the batch's lines through ``vllm run-batch`` on this (GPU) host; returns the lines answered.

    Lines are marked submitted first; a run that dies leaves them submitted, and the next attempt (a
    redelivered task) runs them again: their ledger rows are keyed by line, so nothing is billed twice.
    Each line is billed at the deployment's price per output token (hourly cost / throughput), and the
    GPU time is recorded as a run of the deployment.
    """
    batch = Batch.objects.select_related("project", "api_key", "deployment").filter(pk=batch_id).first()
    if batch is None or batch.deployment is None or batch.status != BatchStatus.IN_PROGRESS:
        return 0
    deployment = batch.deployment
    with transaction.atomic():
        BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).update(
            status=LineStatus.SUBMITTED, claimed_by="vllm-run-batch", claimed_at=timezone.now()
        )
        lines = {line.line: line for line in BatchLine.objects.filter(batch=batch, status=LineStatus.SUBMITTED)}
    if not lines:
        return 0
    price = price_per_mtok(
        hourly_cost_usd=deployment.hourly_cost_usd, throughput_tokens_per_s=deployment.throughput_tokens_per_s
    )
    target = Target(deployment.provider, deployment.served_model_name, None)
    if not batch.reservation and not reserve_whole(
        batch, list(lines.values()), lambda line: (Decimal(0), price, deployment.served_model_name)
    ):
        refused = {"message": "A hard budget has no room for this batch on the self-hosted deployment.",
                   "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}  # fmt: skip
        refusals = [
            LineResult(line.pk, line.line, line.custom_id, target, 429, {"error": refused}, 0)
            for line in lines.values()
        ]
        commit(batch, Q(status=LineStatus.SUBMITTED), refusals, BatchBackend.VLLM)
        batch_finalize(batch_id=batch.pk)
        return 0
    with tempfile.TemporaryDirectory(prefix=f"{batch.id}-") as folder:
        source, output = Path(folder) / "input.jsonl", Path(folder) / "output.jsonl"
        source.write_text("".join(
            json.dumps({"custom_id": str(n), "method": "POST", "url": batch.endpoint,
                        "body": {**line.body, "model": deployment.served_model_name}}) + "\n"
            for n, line in sorted(lines.items())
        ))  # fmt: skip
        command = vllm.run_batch_command(
            deployment=deployment, executable=deployments_conf.vllm_executable(), source=source, target=output
        )
        started = timezone.now()
        try:
            finished = subprocess.run(  # noqa: S603 (our own argument vector, no shell)
                command,
                capture_output=True,
                text=True,
                timeout=settings.BATCH_VLLM_TIMEOUT_SECONDS,
                check=False,
                env=vllm.server_environment(os.environ),
            )
            problem = "" if finished.returncode == 0 else (finished.stderr or finished.stdout)[-2000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = str(exc)
        ended = timezone.now()
        records = [json.loads(raw) for raw in output.read_text().splitlines() if raw.strip()] if output.exists() else []
    hours = Decimal((ended - started).total_seconds()) / 3600
    DeploymentRun.objects.create(
        deployment=deployment, started_at=started, ended_at=ended, gpu_count=deployment.gpu_count,
        hourly_cost_usd=deployment.hourly_cost_usd, gpu_hours=(hours * deployment.gpu_count).quantize(MICRO),
        cost=(hours * deployment.hourly_cost_usd).quantize(MICRO), outcome=DeploymentStatus.STOPPED,
    )  # fmt: skip
    results = []
    for record in records:
        line = lines.pop(int(record.get("custom_id") or 0), None)
        if line is None:
            continue
        result = result_from_record(line, target, record)
        usage = result.body.get("usage") if result.status == 200 else None
        if isinstance(usage, dict):
            result.prompt_tokens = clean_count(usage.get("prompt_tokens"))
            result.completion_tokens = clean_count(usage.get("completion_tokens"))
            result.cost = result.counterfactual = (
                token_cost(
                    prompt_tokens=result.prompt_tokens,
                    cached_tokens=0,
                    completion_tokens=result.completion_tokens,
                    input_rate=Decimal(0),
                    cached_input_rate=Decimal(0),
                    output_rate=price,
                )
                / MTOK
            )
        results.append(result)
    failure = {"message": f"vllm run-batch gave no answer for this line. {problem}".strip(), "type": "api_error",
               "param": None, "code": "vllm_run_batch_failed"}  # fmt: skip
    results += [
        LineResult(line.pk, line.line, line.custom_id, target, 502, {"error": failure}, 0) for line in lines.values()
    ]
    commit(batch, Q(status=LineStatus.SUBMITTED), results, BatchBackend.VLLM)
    settle_whole(batch.pk)
    batch_finalize(batch_id=batch.pk)
    return sum(r.status == 200 for r in results)
