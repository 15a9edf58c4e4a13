"""Real server processes for tests: the simulated upstream, gateways, consumers.

Everything runs on loopback with the test database and the session's Redis
prefix, so a test drives the product exactly as an app would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import urlopen

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """URL of the database the tests use (pytest-django's test_ database)."""
    db = connection.settings_dict
    host = db["HOST"] or ""
    if host.startswith("/"):
        host = quote(host, safe="")
    auth = db["USER"] or ""
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{db['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "costcontrol.settings.test",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "COSTCONTROL_REDIS_PREFIX": settings.REDIS_PREFIX,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Process:
    """A child process that is stopped (and reaped) when the test is done."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log = ROOT / "var" / "test-logs" / f"{name}-{os.getpid()}-{int(time.time() * 1000)}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def http_status(url: str) -> int | None:
    try:
        with urlopen(url, timeout=1) as response:  # noqa: S310 (loopback test servers only)
            return response.status
    except HTTPError as exc:
        return exc.code
    except (URLError, OSError):
        return None


def wait_http(url: str, process: Process, timeout: float = 30.0, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.name} exited early:\n{process.output()}")
        if http_status(url) in ok:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not answer at {url}:\n{process.output()}")


def start_upstream(**flags: str) -> tuple[Process, str]:
    port = free_port()
    args = [sys.executable, "-m", "apps.simulator", "--host", "127.0.0.1", "--port", str(port)]
    for flag, value in flags.items():
        args += [f"--{flag.replace('_', '-')}", value]
    process = Process(args, dict(os.environ), "upstream")
    wait_http(f"http://127.0.0.1:{port}/health", process)
    return process, f"http://127.0.0.1:{port}/v1"


def start_gateway(*, workers: int = 1, **env: str) -> tuple[Process, str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "costcontrol.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    process = Process(args, server_env(**env), "gateway")
    # 401 without a key means the gateway is up and its snapshot is loaded.
    wait_http(f"http://127.0.0.1:{port}/v1/models", process, ok=(401,))
    return process, f"http://127.0.0.1:{port}/v1"


def start_manage(*command: str, name: str, **env: str) -> Process:
    return Process([sys.executable, "manage.py", *command], server_env(**env), name)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; return that or raise."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
