"""Who may see and change deployments and the break-even figures, through the pages and the API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.deployments.models import Deployment, DeploymentRun, DeploymentStatus
from apps.tenancy.models import Role
from tests.deployments.helpers import deployment_make
from tests.factories import People, login, member_make

pytestmark = pytest.mark.django_db

FORM = {
    "name": "qwen-72b", "served_model_name": "qwen2.5-72b", "model_path": "Qwen/Qwen2.5-72B-Instruct-AWQ",
    "gpu_type": "H100 80GB", "gpu_count": "2", "tensor_parallel_size": "2", "max_model_len": "32768",
    "quantization": "awq", "port": "8000", "hourly_cost_usd": "4.80", "throughput_tokens_per_s": "1200",
}  # fmt: skip


def _url(name: str, people: People, **kwargs: Any) -> str:
    return reverse(f"deployments:{name}", kwargs={"slug": people.tenant.project.slug, **kwargs})


def _who(people: People, role: str) -> User:
    if role == "team_lead":
        return member_make(people.tenant, Role.TEAM_LEAD, team=people.tenant.team)
    return getattr(people, role)


READS = [("owner", 200), ("team_lead", 200), ("member", 200), ("finance", 200), ("outsider", 404)]
# Deployments are organisation-wide objects: a team lead reads them but only the owner changes them.
WRITES = [("owner", 302), ("team_lead", 403), ("member", 403), ("finance", 403), ("outsider", 404)]


@pytest.mark.parametrize(("role", "status"), READS)
def test_reading_pages_and_api(client: Client, people: People, role: str, status: int) -> None:
    deployment = deployment_make(people.tenant.org)
    login(client, _who(people, role))
    for url in (_url("list", people), _url("detail", people, pk=deployment.pk), _url("break-even", people)):
        assert client.get(url).status_code == status, url
    api = client.get(_url("api-break-even", people), {"deployment": deployment.pk})
    assert api.status_code == status
    if status == 200:
        assert api.json()["assumptions"]["deployment"] == deployment.name


def test_another_organisations_deployment_is_not_found_from_this_project(client: Client, people: People) -> None:
    theirs = deployment_make(people.other.org)
    login(client, people.owner)
    assert client.get(_url("detail", people, pk=theirs.pk)).status_code == 404
    assert client.post(_url("start", people, pk=theirs.pk)).status_code == 404
    # Nor can it be picked for the break-even comparison.
    api = client.get(_url("api-break-even", people), {"deployment": theirs.pk})
    assert api.status_code == 400 and "deployment" in api.json()["error"]["fields"]


@pytest.mark.parametrize(("role", "status"), WRITES)
def test_registering_a_deployment(client: Client, people: People, role: str, status: int) -> None:
    login(client, _who(people, role))
    response = client.post(_url("list", people), FORM)
    assert response.status_code == status
    assert Deployment.objects.filter(organization=people.tenant.org).count() == (1 if status == 302 else 0)
    if status == 302:
        created = Deployment.objects.get()
        assert (created.status, created.hourly_cost_usd, created.quantization) == ("stopped", Decimal("4.80"), "awq")


def test_registering_an_impossible_deployment_shows_why(client: Client, people: People) -> None:
    login(client, people.owner)
    response = client.post(_url("list", people), {**FORM, "gpu_count": "3"})
    assert response.status_code == 400
    assert b"multiple of the tensor parallel size" in response.content and not Deployment.objects.exists()


@pytest.mark.parametrize(("role", "status"), WRITES)
def test_start_and_stop_buttons(
    client: Client, people: People, role: str, status: int, django_capture_on_commit_callbacks: Any
) -> None:
    deployment = deployment_make(people.tenant.org)
    login(client, _who(people, role))
    with django_capture_on_commit_callbacks() as callbacks:
        assert client.post(_url("start", people, pk=deployment.pk)).status_code == status
    deployment.refresh_from_db()
    if status != 302:
        assert deployment.status == DeploymentStatus.STOPPED and callbacks == []
        assert client.post(_url("stop", people, pk=deployment.pk)).status_code == status
        return
    # The gpu worker is told once the row says "starting" for everyone.
    assert deployment.status == DeploymentStatus.STARTING and len(callbacks) == 1
    again = client.post(_url("start", people, pk=deployment.pk), follow=True)
    assert b"Cannot start" in again.content  # already starting
    with django_capture_on_commit_callbacks() as callbacks:
        assert client.post(_url("stop", people, pk=deployment.pk)).status_code == 302
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.STOPPING and len(callbacks) == 1


def test_list_shows_accumulated_gpu_hours_and_cost(client: Client, people: People) -> None:
    deployment = deployment_make(people.tenant.org, name="qwen-72b")
    now = timezone.now()
    for hours, cost in (("2", "9.60"), ("1", "4.80")):
        DeploymentRun.objects.create(
            deployment=deployment, started_at=now, ended_at=now, gpu_count=2, hourly_cost_usd=Decimal("4.8"),
            gpu_hours=Decimal(hours), cost=Decimal(cost), outcome=DeploymentStatus.STOPPED,
        )  # fmt: skip
    login(client, people.finance)
    html = client.get(_url("list", people)).content.decode()
    assert "3.00" in html and "$14.40" in html
    detail = client.get(_url("detail", people, pk=deployment.pk)).content.decode()
    assert "vllm serve --model=Qwen/Qwen2.5-72B-Instruct-AWQ --served-model-name=qwen2.5-72b-instruct" in detail
    assert "$1.1111" in detail  # price per 1M output tokens: $4.80 / (1200 × 3600) × 1M


def test_pages_read_a_bounded_number_of_queries(
    client: Client, people: People, django_assert_max_num_queries: Any
) -> None:
    login(client, people.owner)

    def load() -> None:
        for url in (_url("list", people), _url("break-even", people)):
            assert client.get(url, {"deployment": first.pk}).status_code == 200

    first = deployment_make(people.tenant.org)
    # Both pages together: session, user, memberships, project, permission, rows, nav (8 or 9 each).
    with django_assert_max_num_queries(18):
        load()
    now = timezone.now()
    for _ in range(8):
        deployment = deployment_make(people.tenant.org)
        DeploymentRun.objects.create(deployment=deployment, started_at=now, gpu_count=2, hourly_cost_usd=Decimal(1))
    with django_assert_max_num_queries(18):
        load()
