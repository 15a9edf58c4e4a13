"""Database rules of deployments and runs, the service's validation, and the ``vllm serve`` command line."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.deployments.models import Deployment, DeploymentRun, DeploymentStatus
from apps.deployments.services import price_per_mtok
from apps.deployments.vllm import serve_command
from tests.deployments.helpers import deployment_make
from tests.factories import People

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "change",
    [
        {"gpu_count": 0},
        {"tensor_parallel_size": 4},  # more than its 2 GPUs
        {"hourly_cost_usd": Decimal("-1")},
        {"throughput_tokens_per_s": Decimal("0")},
        {"port": 70000},
        {"max_model_len": 0},
        {"status": "exploded"},
        {"quantization": "int3"},
        {"status": DeploymentStatus.RUNNING, "base_url": ""},
    ],
)
def test_the_database_refuses_impossible_deployments(people: People, change: dict[str, object]) -> None:
    deployment = deployment_make(people.tenant.org)
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(**change)


def test_names_are_unique_per_organisation(people: People) -> None:
    deployment_make(people.tenant.org, name="qwen")
    deployment_make(people.other.org, name="qwen")  # another organisation may use it
    with pytest.raises(ValidationError, match="already exists"):
        deployment_make(people.tenant.org, name="qwen")


def test_the_service_validates_before_saving(people: People) -> None:
    with pytest.raises(ValidationError) as caught:
        deployment_make(people.tenant.org, gpu_count=3, tensor_parallel_size=2)
    assert "multiple of the tensor parallel size" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        deployment_make(people.tenant.org, quantization="int3")
    assert "quantization" in caught.value.message_dict
    assert not Deployment.objects.exists()


def test_one_open_run_per_deployment_and_costs_only_on_closed_runs(people: People) -> None:
    deployment = deployment_make(people.tenant.org)
    now = timezone.now()
    DeploymentRun.objects.create(deployment=deployment, started_at=now, gpu_count=2, hourly_cost_usd=Decimal("4.8"))
    with pytest.raises(IntegrityError), transaction.atomic():
        DeploymentRun.objects.create(deployment=deployment, started_at=now, gpu_count=2, hourly_cost_usd=Decimal(1))
    with pytest.raises(IntegrityError), transaction.atomic():
        DeploymentRun.objects.filter(deployment=deployment).update(cost=Decimal(1))  # still open
    with pytest.raises(IntegrityError), transaction.atomic():
        DeploymentRun.objects.filter(deployment=deployment).update(
            ended_at=now - timezone.timedelta(hours=1), cost=Decimal(1), gpu_hours=Decimal(1)
        )


def test_serve_command_uses_vllms_flags(people: People) -> None:
    deployment = deployment_make(
        people.tenant.org, model_path="/models/llama-3.1-70b", served_model_name="llama-70b", gpu_count=8,
        tensor_parallel_size=4, max_model_len=16384, quantization="fp8", port=8123,
    )  # fmt: skip
    assert serve_command(deployment=deployment, executable=["vllm"], host="0.0.0.0") == [  # noqa: S104
        "vllm", "serve", "--model=/models/llama-3.1-70b", "--served-model-name=llama-70b",
        "--tensor-parallel-size=4", "--pipeline-parallel-size=2", "--max-model-len=16384",
        "--quantization=fp8", "--host=0.0.0.0", "--port=8123",
    ]  # fmt: skip


def test_serve_command_leaves_out_what_is_not_needed(people: People) -> None:
    deployment = deployment_make(
        people.tenant.org, model_path="Qwen/Qwen2.5-7B-Instruct", served_model_name="qwen-7b", gpu_count=1,
        tensor_parallel_size=1, max_model_len=8192, quantization="none", port=8000,
    )  # fmt: skip
    command = serve_command(deployment=deployment, executable=["python", "-m", "vllm.entrypoints.cli.main"],
                            host="127.0.0.1")  # fmt: skip
    assert command == [
        "python", "-m", "vllm.entrypoints.cli.main", "serve", "--model=Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name=qwen-7b", "--tensor-parallel-size=1", "--max-model-len=8192",
        "--host=127.0.0.1", "--port=8000",
    ]  # fmt: skip


def test_price_per_million_output_tokens() -> None:
    # $2.50/h at 500 tokens/s: 1.8M tokens an hour, so $1.388889 per million.
    assert price_per_mtok(hourly_cost_usd=Decimal("2.50"), throughput_tokens_per_s=Decimal(500)) == Decimal("1.388889")
    assert price_per_mtok(hourly_cost_usd=Decimal("2.50"), throughput_tokens_per_s=None) == 0
