"""Background exports: a job row, a worker that writes the file with progress, a page that polls it."""

from __future__ import annotations

import datetime as dt
import io
import os
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from apps.ledger.models import LedgerEntry
from apps.reports import services
from apps.reports.models import ExportJob, ExportStatus
from apps.reports.selectors import ExportQuery
from apps.reports.tasks import export_job_run_task, export_jobs_expire_task
from tests.factories import People, entry_make, login
from tests.reports.helpers import SINCE, UNTIL, at, ledger_mix, other_team_project, read_csv, total

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _export_dir(settings: object, tmp_path: Path) -> Path:
    settings.REPORTS_EXPORT_DIR = tmp_path  # type: ignore[attr-defined]
    return tmp_path


def _progress_updates(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE") and '"rows_written" =' in q["sql"]
    ]


def test_job_is_created_enqueued_and_run_by_the_task(
    client: Client, people: People, django_capture_on_commit_callbacks: object, tmp_path: Path
) -> None:
    ledger_mix(people)
    login(client, people.finance)

    with django_capture_on_commit_callbacks() as callbacks:  # type: ignore[operator]
        response = client.post(
            reverse("reports:job-new"), {"kind": "focus", "org": people.tenant.org.slug, "since": SINCE, "until": UNTIL}
        )
    job = ExportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("reports:job", kwargs={"pk": job.pk})
    assert len(callbacks) == 1  # the worker is told only after the row is committed
    assert job.status == ExportStatus.PENDING and job.requested_by == people.finance
    page = client.get(response["Location"])
    assert page.status_code == 200 and b"Waiting for a worker" in page.content
    assert client.get(reverse("reports:job-status", kwargs={"pk": job.pk})).json()["percent"] == 0

    assert export_job_run_task(job.pk) == ExportStatus.DONE

    state = client.get(reverse("reports:job-status", kwargs={"pk": job.pk})).json()
    assert state["status"] == "done" and state["percent"] == 100 and state["rows_written"] > 0
    download = client.get(state["download_url"])
    assert download.status_code == 200
    rows = read_csv(download)
    direct = read_csv(
        client.get(f"{reverse('reports:export-focus')}?org={people.tenant.org.slug}&since={SINCE}&until={UNTIL}")
    )
    assert rows == direct and len(rows) == state["rows_written"]
    assert total(rows, "BilledCost") == LedgerEntry.objects.aggregate(cost=Sum("cost"))["cost"]
    assert [p.name for p in tmp_path.iterdir()] == [ExportJob.objects.get().file_name]  # no partial file left
    # Running it again (a redelivered task) does nothing.
    assert export_job_run_task(job.pk) == ExportStatus.DONE


def test_job_reports_progress_every_n_rows(people: People) -> None:
    for i in range(35):
        entry_make(people.tenant, created_at=at(1 + i % 20), cost=Decimal("0.01"))
    job = services.export_job_create(
        user=people.finance,
        organization=people.tenant.org,
        kind="ledger",
        query=ExportQuery.from_params({"since": f"{SINCE}T00:00:00+00:00", "until": f"{UNTIL}T00:00:00+00:00"}),
        enqueue=False,
    )
    with CaptureQueriesContext(connection) as queries:
        services.export_job_run(job=job, progress_every=10)
    updates = _progress_updates(queries)
    # Three progress saves (10, 20, 30 rows) and the final one.
    assert len(updates) == 4
    job.refresh_from_db()
    assert job.status == ExportStatus.DONE and job.rows_written == 35 == job.rows_total and job.percent == 100
    content = services.export_job_path(job).read_text().splitlines()
    assert len(content) == 36 and content[0].startswith("request_id,created_at,source")


def test_job_failure_is_recorded_and_leaves_no_file(
    people: People, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry_make(people.tenant, created_at=at(3))
    job = services.export_job_create(
        user=people.finance, organization=people.tenant.org, kind="ledger",
        query=ExportQuery.from_params({"since": "2025-09-01T00:00:00+00:00", "until": "2025-10-01T00:00:00+00:00"}),
        enqueue=False,
    )  # fmt: skip

    def broken(**_kwargs: object) -> object:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(services.exports, "export_rows", broken)
    job = services.export_job_run(job=job)
    assert job.status == ExportStatus.FAILED and "disk on fire" in job.error
    assert list(tmp_path.iterdir()) == []


def test_jobs_are_private_to_whoever_asked(client: Client, people: People) -> None:
    job = services.export_job_create(
        user=people.finance, organization=people.tenant.org, kind="ledger",
        query=ExportQuery.from_params({"since": "2025-09-01T00:00:00+00:00", "until": "2025-10-01T00:00:00+00:00"}),
        enqueue=False,
    )  # fmt: skip
    services.export_job_run(job=job)
    for user in (people.owner, people.outsider):
        client.logout()
        login(client, user)
        for name in ("reports:job", "reports:job-status", "reports:job-download"):
            assert client.get(reverse(name, kwargs={"pk": job.pk})).status_code == 404, (user, name)


def test_job_scope_is_the_requesters_projects(people: People) -> None:
    hidden = other_team_project(people)
    entry_make(people.tenant, created_at=at(4), cost=Decimal(1))
    entry_make(people.tenant, created_at=at(4), project=hidden, cost=Decimal(10))
    job = services.export_job_create(
        user=people.member, organization=people.tenant.org, kind="ledger",
        query=ExportQuery.from_params({"since": "2025-09-01T00:00:00+00:00", "until": "2025-10-01T00:00:00+00:00"}),
        enqueue=False,
    )  # fmt: skip
    services.export_job_run(job=job)
    lines = services.export_job_path(job).read_text().splitlines()
    assert len(lines) == 2 and hidden.slug not in lines[1]


# Expiry -------------------------------------------------------------------------------------------


def _finished_job(people: People) -> ExportJob:
    job = services.export_job_create(
        user=people.finance, organization=people.tenant.org, kind="ledger",
        query=ExportQuery.from_params({"since": "2025-09-01T00:00:00+00:00", "until": "2025-10-01T00:00:00+00:00"}),
        enqueue=False,
    )  # fmt: skip
    return services.export_job_run(job=job)


def _age(path: Path, days: float) -> None:
    then = (timezone.now() - dt.timedelta(days=days)).timestamp()
    os.utime(path, (then, then))


def test_expired_jobs_and_stray_files_are_deleted_recent_ones_kept(
    client: Client, people: People, tmp_path: Path
) -> None:
    ledger_mix(people)
    old, recent = _finished_job(people), _finished_job(people)
    old_file, recent_file = services.export_job_path(old), services.export_job_path(recent)
    eight_days_ago = timezone.now() - dt.timedelta(days=8)
    ExportJob.objects.filter(pk=old.pk).update(created_at=eight_days_ago, finished_at=eight_days_ago)
    _age(old_file, 8)
    stuck = services.export_job_create(
        user=people.finance, organization=people.tenant.org, kind="focus",
        query=ExportQuery.from_params({"since": "2025-09-01T00:00:00+00:00", "until": "2025-10-01T00:00:00+00:00"}),
        enqueue=False,
    )  # fmt: skip
    ExportJob.objects.filter(pk=stuck.pk).update(created_at=eight_days_ago)  # its worker died long ago
    killed = tmp_path / "99-ledger-x-20250901-20251001.csv.part"  # a worker killed mid-write
    killed.write_text("request_id\n")
    _age(killed, 8)
    writing = tmp_path / "100-ledger-x-20250901-20251001.csv.part"  # a job being written now
    writing.write_text("request_id\n")

    assert export_jobs_expire_task() == 2

    assert set(ExportJob.objects.values_list("pk", flat=True)) == {recent.pk}
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([recent_file.name, writing.name])
    login(client, people.finance)
    assert client.get(reverse("reports:job-download", kwargs={"pk": old.pk})).status_code == 404
    page = client.get(reverse("reports:job", kwargs={"pk": recent.pk}))
    assert b"deleted 7 days after they finish" in page.content
    assert client.get(reverse("reports:job-download", kwargs={"pk": recent.pk})).status_code == 200
    assert services.export_jobs_expire() == 0  # nothing left to expire; running again changes nothing
    assert recent_file.is_file()


def test_export_expiry_is_a_periodic_task() -> None:
    call_command("setup_periodic_tasks", stdout=io.StringIO())
    task = PeriodicTask.objects.get(task="reports.export_jobs_expire")
    assert task.enabled and task.interval is not None and task.interval.every == 3600
