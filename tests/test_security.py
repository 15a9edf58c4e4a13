"""Safe by default: login throttling, expiring and throttled API tokens, loopback-only development
settings, production settings that refuse weak secrets, `check --deploy`, CSP and spreadsheet-safe CSV."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.dashboard.services import api_token_rotate
from apps.ledger.services import rollups_refresh
from apps.reports.selectors import ExportQuery
from apps.reports.services import export_job_create, export_job_path, export_job_run
from costcontrol import embedded
from costcontrol.loopback import is_loopback, loopback_only
from costcontrol.settings.base import DEV_SECRET_KEY
from costcontrol.spreadsheet import safe_cell
from tests import live
from tests.factories import PASSWORD, People, entry_make, login, user_make

# Login throttling (django-axes) --------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("login_url", ["/login/", "/admin/login/"])
@override_settings(AXES_FAILURE_LIMIT=3)
def test_logins_lock_out_after_failures_per_user_and_address(login_url: str) -> None:
    victim, bystander = user_make(), user_make()
    victim.is_staff = bystander.is_staff = True  # so that /admin/ would let them in
    victim.save()
    bystander.save()
    client = Client(REMOTE_ADDR="198.51.100.7")
    for _ in range(2):
        wrong = client.post(login_url, {"username": victim.username, "password": "guess"})
        assert wrong.status_code == 200  # the form again, with its error
    # The third failure locks the pair out: even the right password is refused now.
    assert client.post(login_url, {"username": victim.username, "password": "guess"}).status_code == 429
    locked = client.post(login_url, {"username": victim.username, "password": PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Only that user from that address: the same address still logs in as someone else ...
    other = client.post(login_url, {"username": bystander.username, "password": PASSWORD})
    assert other.status_code == 302
    # ... and the victim from another address.
    elsewhere = Client(REMOTE_ADDR="198.51.100.8").post(login_url, {"username": victim.username, "password": PASSWORD})
    assert elsewhere.status_code == 302


@pytest.mark.django_db
def test_garbage_logins_are_form_errors_not_500s() -> None:
    client = Client()
    for data in ({"username": "\x00", "password": "x"}, {"username": "a" * 10_000, "password": ""}, {}):
        assert client.post("/login/", data).status_code in (200, 429)


# API tokens: expiry and throttling -----------------------------------------------------------------


@pytest.mark.django_db
def test_api_tokens_expire(people: People) -> None:
    token = api_token_rotate(user=people.owner)
    client = Client(headers={"Authorization": f"Token {token.key}"})
    assert client.get("/api/projects/").status_code == 200
    with override_settings(API_TOKEN_LIFETIME_DAYS=7):
        Token.objects.filter(pk=token.pk).update(created=timezone.now() - dt.timedelta(days=7, seconds=1))
        expired = client.get("/api/projects/")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
        # The account page says so, and a new token works again.
        page = login(Client(), people.owner).get("/account/token/").content.decode()
        assert "expired" in page
        fresh = api_token_rotate(user=people.owner)
        assert Client(headers={"Authorization": f"Token {fresh.key}"}).get("/api/projects/").status_code == 200


@pytest.mark.django_db
def test_api_is_throttled_per_user(people: People, settings: Any) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"user": "3/minute"},
    }
    owner = Client(headers={"Authorization": f"Token {api_token_rotate(user=people.owner).key}"})
    statuses = [owner.get("/api/projects/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = owner.get("/api/projects/")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    # Another user has their own allowance.
    finance = Client(headers={"Authorization": f"Token {api_token_rotate(user=people.finance).key}"})
    assert finance.get("/api/projects/").status_code == 200


@pytest.mark.django_db
def test_wrong_api_tokens_are_throttled_per_address(people: People, settings: Any) -> None:
    """Guessing tokens: past the limit an address gets 429 for any token, so a right guess is not told apart."""
    settings.API_TOKEN_FAILURES_PER_MINUTE = 3
    good = api_token_rotate(user=people.owner).key
    guesser = {"REMOTE_ADDR": "203.0.113.7"}
    if time.time() % 60 > 50:  # counts are per minute: start early in one, so the four guesses share it
        time.sleep(61 - time.time() % 60)
    wrong = [Client(headers={"Authorization": f"Token {good[:-1]}x{n}"}, **guesser) for n in range(4)]
    assert [client.get("/api/projects/").status_code for client in wrong] == [401, 401, 401, 429]
    blocked = wrong[3].get("/api/projects/")
    assert blocked.status_code == 429 and blocked.json()["error"]["type"] == "throttled"
    assert int(blocked["Retry-After"]) > 0
    # The right token from the same address is refused too: a guess that hits learns nothing.
    assert Client(headers={"Authorization": f"Token {good}"}, **guesser).get("/api/projects/").status_code == 429
    # Another address, and a session without any token, are not held back by this one's guesses.
    assert (
        Client(headers={"Authorization": f"Token {good}"}, REMOTE_ADDR="198.51.100.2").get("/api/projects/").status_code
        == 200
    )
    assert login(Client(**guesser), people.owner).get("/api/projects/").status_code == 200


# Development settings serve loopback only ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False), ("", False)],  # noqa: S104  (the address under test; nothing binds it)
)  # fmt: skip
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@override_settings(LOOPBACK_ONLY=True)
@pytest.mark.parametrize(
    ("command", "args"),
    [("runserver", ["0.0.0.0:8765", "--noreload"]), ("runstack", ["--host", "0.0.0.0"])],  # noqa: S104  (the address under test; nothing binds it)
)
def test_dev_commands_refuse_non_loopback_addresses(command: str, args: list[str]) -> None:
    with pytest.raises(CommandError, match="loopback only"):
        call_command(command, *args)


def test_dev_asgi_app_answers_only_on_loopback() -> None:
    served: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        served.append(scope["server"][0])

    guarded = loopback_only(app)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def request(server: tuple[str, int | None]) -> None:
        await guarded({"type": "http", "server": server, "path": "/"}, None, send)

    asyncio.run(request(("192.0.2.10", 8000)))
    assert sent[0]["status"] == 403 and served == []
    asyncio.run(request(("127.0.0.1", 8000)))
    asyncio.run(request(("/run/costcontrol.sock", None)))
    assert served == ["127.0.0.1", "/run/costcontrol.sock"]


@pytest.mark.django_db
def test_dev_settings_wrap_the_asgi_app_and_production_does_not() -> None:
    code = "import costcontrol.asgi as a; print(a.application.__name__)"
    env = live.server_env(DJANGO_SETTINGS_MODULE="costcontrol.settings.dev")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=live.ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "guarded", out.stderr


@pytest.mark.django_db
def test_dev_celery_worker_refuses_a_broker_off_loopback() -> None:
    # 0.0.0.0 is not loopback by our rule, yet anything that did try it would stay on this machine.
    env = live.server_env(DJANGO_SETTINGS_MODULE="costcontrol.settings.dev", CELERY_BROKER_URL="redis://0.0.0.0:1/0")
    argv = [sys.executable, "-m", "celery", "-A", "costcontrol", "worker", "--pool", "solo", "--loglevel", "WARNING"]
    out = subprocess.run(argv, env=env, cwd=live.ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Celery's broker" in out.stderr and "loopback only" in out.stderr


# Production settings --------------------------------------------------------------------------------


def _production_env(**extra: str) -> dict[str, str]:
    env = live.server_env(
        DJANGO_SETTINGS_MODULE="costcontrol.settings.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        COSTCONTROL_ENCRYPTION_KEY="Zm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtbG9uZy1rZXk=",
        COSTCONTROL_ENCRYPTION_KEYS="Zm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtbG9uZy1rZXk=",
        DJANGO_ALLOWED_HOSTS="costs.example.com",
    )
    env.update(extra)
    return env


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("secret", "why"),
    [("", "DJANGO_SECRET_KEY"), (DEV_SECRET_KEY, "not the development key"), ("short", "at least 50"),
     ("a" * 60, "at least 50")],
)  # fmt: skip
def test_production_refuses_missing_published_or_weak_secret_keys(secret: str, why: str) -> None:
    env = _production_env(DJANGO_SECRET_KEY=secret)
    out = subprocess.run([sys.executable, "manage.py", "check"], env=env, cwd=live.ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and why in out.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("keys", ["", "   "])
def test_production_refuses_to_start_without_encryption_keys(keys: str) -> None:
    env = _production_env(COSTCONTROL_ENCRYPTION_KEYS=keys)
    env.pop("COSTCONTROL_ENCRYPTION_KEY", None)
    out = subprocess.run([sys.executable, "manage.py", "check"], env=env, cwd=live.ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "COSTCONTROL_ENCRYPTION_KEYS is required" in out.stderr


@pytest.fixture
def aof_redis() -> Iterator[str]:
    """A Redis with append-only persistence, as production's must be (ledger.W001 checks it)."""
    port = live.free_port()
    with tempfile.TemporaryDirectory() as data:
        argv = [embedded.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", data,
                "--appendonly", "yes", "--save", ""]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not embedded.redis_answers("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.django_db
def test_check_deploy_with_production_settings_is_clean(aof_redis: str) -> None:
    env = _production_env(REDIS_URL=aof_redis)
    argv = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    out = subprocess.run(argv, env=env, cwd=live.ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout, out.stdout + out.stderr


# Headers --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_carry_a_content_security_policy(people: People) -> None:
    response = login(Client(), people.owner).get("/overview/")
    policy = response["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"):
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


# Spreadsheet-safe CSV -------------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_cells_are_neutralised(value: str) -> None:
    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["-0.25", "+3", "1e-6", "-.5", "plain", "", "a=b", 42, Decimal("-1.5"), None])
def test_numbers_and_plain_text_are_left_alone(value: Any) -> None:
    assert safe_cell(value) == value


@pytest.mark.parametrize(("value", "written"), [(Decimal("0E-8"), "0.00000000"), (Decimal("1.5E+3"), "1500")])
def test_decimals_are_written_without_exponents(value: Decimal, written: str) -> None:
    assert safe_cell(value) == written


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


@pytest.mark.django_db
def test_every_csv_export_neutralises_tenant_strings(people: People) -> None:
    tenant = people.tenant
    when = timezone.now().replace(minute=0, second=0, microsecond=0)
    for value in FORMULAS[:4]:
        entry_make(tenant, created_at=when, end_user=value, feature=value, requested_model=value, served_model=value)
    rollups_refresh()
    client = login(Client(), people.owner)
    org = tenant.org.slug
    since, until = (when - dt.timedelta(days=1)).date().isoformat(), (when + dt.timedelta(days=1)).date().isoformat()
    window = f"org={org}&since={since}&until={until}"
    exports = {
        "ledger page": f"/ledger/export.csv?date_from={since}&date_to={until}",
        "report ledger": f"/reports/export/ledger.csv?{window}",
        "roll-ups": f"/reports/export/rollups.csv?{window}&group_by=project,feature,end_user",
        "FOCUS": f"/reports/export/focus.csv?{window}",
    }
    texts = {name: b"".join(client.get(url).streaming_content).decode() for name, url in exports.items()}  # type: ignore[attr-defined]
    job = export_job_create(
        user=people.owner, organization=tenant.org, kind="ledger",
        query=ExportQuery(since=when - dt.timedelta(days=1), until=when + dt.timedelta(days=1)),
    )  # fmt: skip
    export_job_run(job=job)
    job.refresh_from_db()
    path = export_job_path(job)
    assert path is not None
    texts["background job"] = Path(path).read_text()
    for name, text in texts.items():
        cells = _cells(text)
        assert any(cell.startswith("'=HYPERLINK") for cell in cells), name  # the tenant's strings are there ...
        dangerous = [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or (c[:1] == "-" and not _number(c))]
        assert not dangerous, (name, dangerous)  # ... and none can run


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
