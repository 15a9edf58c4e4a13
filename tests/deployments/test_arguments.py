"""What a lead types for a deployment reaches ``vllm serve`` only through an allow-listed grammar;
ports are unique per organisation and per GPU host; the server URL passes the egress policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from apps.deployments.models import Deployment, DeploymentStatus
from apps.deployments.services import _here, deployment_request_start, deployment_start
from apps.deployments.vllm import serve_command
from tests.deployments.helpers import deployment_make, fake_vllm
from tests.factories import People, login

pytestmark = pytest.mark.django_db

FORM = {
    "name": "qwen",
    "served_model_name": "qwen2.5-7b",
    "model_path": "Qwen/Qwen2.5-7B-Instruct",
    "gpu_type": "L4",
    "gpu_count": "1",
    "tensor_parallel_size": "1",
    "max_model_len": "8192",
    "quantization": "none",
    "port": "8100",
    "hourly_cost_usd": "0.80",
    "throughput_tokens_per_s": "",
}

HOSTILE_PATHS = [
    "--allowed-local-media-path=/",
    "-h",
    "--trust-remote-code",
    "Qwen/Qwen2.5 --trust-remote-code",
    "../../etc/passwd",
    "/models/../etc",
    "/models/x;rm -rf /",
    "model\nname",
    "$(id)",
    "",
    "/",
    "org//name",
]


def _post(client: Client, people: People, **fields: str) -> Any:
    url = reverse("deployments:list", kwargs={"slug": people.tenant.project.slug})
    return client.post(url, {**FORM, **fields})


@pytest.mark.parametrize("model_path", HOSTILE_PATHS)
def test_model_paths_outside_the_grammar_are_form_errors(client: Client, people: People, model_path: str) -> None:
    login(client, people.owner)
    response = _post(client, people, model_path=model_path)
    assert response.status_code == 400 and "model_path" in response.context["form"].errors
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("name", ["-x", "--served-model-name=evil", "a b", ".hidden"])
def test_served_names_outside_the_grammar_are_form_errors(client: Client, people: People, name: str) -> None:
    login(client, people.owner)
    response = _post(client, people, served_model_name=name)
    assert response.status_code == 400 and "served_model_name" in response.context["form"].errors


def test_valid_names_and_paths_become_flag_values(client: Client, people: People) -> None:
    login(client, people.owner)
    assert _post(client, people, model_path="/models/llama-3.1_8b+awq", served_model_name="llama:8b").status_code == 302
    deployment = Deployment.objects.get()
    command = serve_command(deployment=deployment, executable=["vllm"], host="127.0.0.1")
    assert command[2:4] == ["--model=/models/llama-3.1_8b+awq", "--served-model-name=llama:8b"]
    # A row changed behind the form's back (a direct UPDATE) is still refused when the command is built.
    Deployment.objects.filter(pk=deployment.pk).update(model_path="--allowed-local-media-path=/")
    deployment.refresh_from_db()
    with pytest.raises(ValidationError):
        serve_command(deployment=deployment, executable=["vllm"], host="127.0.0.1")


def test_a_port_is_used_once_per_organisation(client: Client, people: People) -> None:
    login(client, people.owner)
    assert _post(client, people, name="first").status_code == 302
    taken = _post(client, people, name="second")
    assert taken.status_code == 400 and "already uses this port" in taken.content.decode()
    assert _post(client, people, name="second", port="8101").status_code == 302
    # Another organisation may pick the same port (its own hosts): the per-host rule settles it at start.
    deployment_make(people.other.org, port=8100)


def test_another_tenant_cannot_take_a_port_held_on_this_host(people: People, settings: Any, tmp_path: Path) -> None:
    script, record = fake_vllm(tmp_path, "hang")
    settings.VLLM_EXECUTABLE = str(script)
    ours = deployment_make(people.tenant.org, port=8200)
    Deployment.objects.filter(pk=ours.pk).update(
        status=DeploymentStatus.RUNNING, worker_host=_here(), base_url="http://127.0.0.1:8200/v1"
    )
    theirs = deployment_make(people.other.org, port=8200)
    deployment_request_start(deployment=theirs, enqueue=False)
    theirs = deployment_start(deployment_id=theirs.pk)
    assert theirs.status == DeploymentStatus.FAILED
    assert "held by another deployment" in theirs.last_error and ours.name not in theirs.last_error
    assert not record.exists(), "nothing was launched"
    assert Deployment.objects.get(pk=ours.pk).status == DeploymentStatus.RUNNING


def test_the_server_url_passes_the_egress_policy(client: Client, people: People, settings: Any) -> None:
    settings.COSTCONTROL_EGRESS_ALLOW = []  # production's default; VLLM_PUBLIC_HOST is loopback here
    login(client, people.owner)
    response = _post(client, people)
    assert response.status_code == 400 and "loopback" in str(response.context["form"].errors["port"])
    settings.COSTCONTROL_EGRESS_ALLOW = ["127.0.0.1"]  # the operator allows the GPU host
    assert _post(client, people).status_code == 302
