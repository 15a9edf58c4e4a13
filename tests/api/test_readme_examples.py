"""The README's management-API examples, run as written (the curl lines' paths and bodies), so they stay true."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings

from apps.dashboard.services import api_token_rotate
from apps.reports.models import ExportJob
from apps.reports.services import export_job_run
from apps.tenancy.services import organization_create, team_create
from tests.factories import user_make

pytestmark = pytest.mark.django_db

README = Path(__file__).resolve().parents[2] / "README.md"


def _examples() -> list[tuple[str, dict[str, Any] | None]]:
    """Each curl line of the "Common tasks" block: (path, JSON body or None for a GET)."""
    text = README.read_text()
    block = text[text.index("Common tasks") :]
    block = block[block.index("```sh") + 5 : block.index("```", block.index("```sh") + 5)]
    lines = [line for line in block.splitlines() if not line.startswith(("#", "A="))]
    examples = []
    for command in re.split(r"\n(?=curl )", "\n".join(lines).strip()):
        words = shlex.split(command)
        body = json.loads(words[words.index("-d") + 1]) if "-d" in words else None
        path = next(word for word in words if word.startswith("$H/"))[2:]
        examples.append((path, body))
    return examples


@override_settings(COSTCONTROL_EGRESS_ALLOW=["api.openai.com"])  # not resolved when saved: no DNS from a test
def test_the_readme_examples_work_as_written() -> None:
    owner = user_make()
    org = organization_create(name="Demo", slug="demo", owner=owner)
    team_create(organization=org, name="Support", slug="support")
    client = Client(headers={"Authorization": f"Token {api_token_rotate(user=owner).key}"})
    seen: dict[str, Any] = {}
    examples = _examples()
    assert len(examples) == 11
    for path, body in examples:
        path = path.replace("LOOKUP_ID", seen.get("lookup_id", "")).replace("/ID/", f"/{seen.get('export', '')}/")
        if body is not None and "provider" in body:  # the README says 3; the provider made here has its own id
            body["provider"] = seen["provider"]
        if body is None:
            response = client.get(path)
        else:
            response = client.post(path, json.dumps(body), content_type="application/json")
        assert response.status_code < 300, (path, response.status_code, response.content[:500])
        if path.endswith("/keys/"):
            seen["lookup_id"] = response.json()["lookup_id"]
        elif path == "/api/providers/":
            seen["provider"] = response.json()["id"]
        elif path == "/api/exports/":
            seen["export"] = response.json()["id"]
            export_job_run(job=ExportJob.objects.get(pk=seen["export"]))
        elif path.endswith("/download/"):
            assert response["Content-Type"] == "text/csv"
