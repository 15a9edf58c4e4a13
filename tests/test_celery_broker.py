"""RabbitMQ as Celery's broker, apart from the state Redis: a real worker runs a real roll-up sent over AMQP.

Skipped, loudly, when no RabbitMQ answers on 127.0.0.1:5672 (start one with
``rabbitmq-server -detached``). Each run uses its own queue name on the shared
default vhost, so parallel runs never take each other's tasks, and deletes it
afterwards.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator

import pytest
from django.test import override_settings
from kombu import Connection

from apps.ledger.models import ProjectHourlyRollup
from apps.ledger.tasks import rollups_refresh_task
from costcontrol import operations
from costcontrol.celery import app as celery_app
from tests import live
from tests.factories import entry_make, tenant_make

pytestmark = pytest.mark.django_db(transaction=True)

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmq_answers() -> bool:
    try:
        with Connection(AMQP_URL, connect_timeout=2) as connection:
            connection.connect()
    except Exception:
        return False
    return True


@pytest.fixture
def queue() -> Iterator[str]:
    if not _rabbitmq_answers():
        message = f"*** RabbitMQ NOT REACHABLE at {AMQP_URL}: the AMQP broker tests did NOT run"
        print(message, file=sys.stderr)
        pytest.skip(message)
    name = f"costcontrol-test-{secrets.token_hex(6)}"
    yield name
    with Connection(AMQP_URL, connect_timeout=2) as connection:
        connection.default_channel.queue_delete(queue=name)


def _start_worker(queue: str) -> live.Process:
    return live.Process(
        [
            sys.executable, "-m", "celery", "-A", "costcontrol", "worker", "-Q", queue,
            "--pool", "solo", "--hostname", f"{queue}@%h", "--without-mingle", "--without-gossip",
            "--loglevel", "INFO",
        ],
        live.server_env(CELERY_BROKER_URL=AMQP_URL),
        "celery-amqp-worker",
    )  # fmt: skip


def test_a_worker_on_rabbitmq_runs_a_rollup_sent_over_amqp(queue: str) -> None:
    tenant = tenant_make()
    entry_make(tenant)
    with override_settings(CELERY_BROKER_URL=AMQP_URL, CELERY_TASK_DEFAULT_QUEUE=queue):
        assert not operations.broker_is_redis()
        operations.broker_ping()
        with celery_app.connection_for_write(url=AMQP_URL) as connection:
            rollups_refresh_task.apply_async(queue=queue, connection=connection)
        # No worker yet: the message waits in RabbitMQ, and the reading operators see says so.
        assert live.wait_until(lambda: operations.queue_depths()[queue] == 1, timeout=10)
        worker = _start_worker(queue)
        try:
            rolled = live.wait_until(
                lambda: ProjectHourlyRollup.objects.filter(project_id=tenant.project.pk).first(), timeout=60
            )
            assert rolled.requests == 1
            assert live.wait_until(lambda: operations.queue_depths()[queue] == 0, timeout=10)
            assert "ledger.rollups_refresh" in worker.output()
        finally:
            worker.stop()


def test_status_reports_rabbitmq_and_its_worker(queue: str) -> None:
    worker = _start_worker(queue)
    try:
        live.wait_until(lambda: "ready." in worker.output(), timeout=60, interval=0.2)
        status = live.start_manage(
            "status", "--gateway", f"http://127.0.0.1:{live.free_port()}", name="status", CELERY_BROKER_URL=AMQP_URL
        )
        status.proc.wait(timeout=60)
        rows = {line.split("  ")[0].strip(): line for line in status.output().splitlines() if "  " in line}
    finally:
        worker.stop()
    assert "amqp://127.0.0.1:5672// answers" in rows["celery broker"], status.output()
    assert " ok " in rows["celery broker"]
    assert " ok " in rows["celery queues"] and "default " in rows["celery queues"], status.output()
    assert " ok " in rows["celery workers"], status.output()
    # Redis, the state store, is still checked on its own and answers.
    assert " ok " in rows["redis"], status.output()


def test_status_says_the_broker_is_down_when_rabbitmq_does_not_answer(queue: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{live.free_port()}//"
    status = live.start_manage(
        "status", "--gateway", f"http://127.0.0.1:{live.free_port()}", name="status", CELERY_BROKER_URL=dead
    )
    status.proc.wait(timeout=60)
    output = status.output()
    assert status.proc.returncode != 0
    broker = next(line for line in output.splitlines() if line.startswith("celery broker"))
    assert "DOWN" in broker, output
    assert "guest" not in output  # the broker's credentials are never printed
    redis_row = next(line for line in output.splitlines() if line.startswith("redis "))
    assert " ok " in redis_row, output
