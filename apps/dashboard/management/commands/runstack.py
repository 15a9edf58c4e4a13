"""Run the whole product in the foreground: what `make run` starts.

Children: the simulated upstream, uvicorn serving costcontrol.asgi (gateway +
dashboard), the ledger consumer, a Celery worker and Celery beat. Seeds the
demo, prints how to use it, optionally sends a little demo traffic, and stops
everything on Ctrl-C or when any child dies.

`--no-simulator` is for production and real demos: no simulated upstream, no demo
seed (its organisation, logins, simulated provider and key) and no demo traffic;
the providers are the ones registered on the dashboard.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from costcontrol.loopback import require_loopback

UPSTREAM_PORT = 9100


def _status(url: str) -> int | None:
    try:
        with urlopen(url, timeout=1) as response:  # noqa: S310 (loopback only)
            return response.status
    except HTTPError as exc:
        return exc.code
    except (URLError, OSError):
        return None


def child_commands(options: dict[str, Any]) -> dict[str, list[str]]:
    """The processes runstack starts, by name; the simulated upstream only while the demo is wanted."""
    python = sys.executable
    specs: dict[str, list[str]] = {}
    if options["simulator"]:
        specs["upstream"] = [python, "-m", "apps.simulator", "--host", "127.0.0.1"]
        specs["upstream"] += ["--port", str(options["upstream_port"])]
    host, port = options["host"], options["port"]
    specs.update(
        {
            "web": [
                python,
                "-m",
                "uvicorn",
                "costcontrol.asgi:application",
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                str(options["workers"]),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
            ],
            "ingest": [python, "manage.py", "ingest_ledger"],
            "cache-ingest": [python, "manage.py", "ingest_cache"],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "costcontrol",
                "worker",
                "-Q",
                "default,batch,gpu",
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ],
            "beat": [python, "-m", "celery", "-A", "costcontrol", "beat", "--loglevel", "INFO"],
        }
    )
    return specs


class Command(BaseCommand):
    help = "Start gateway + dashboard + ledger consumer + Celery worker + beat (+ simulated upstream and demo)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
        parser.add_argument("--upstream-port", type=int, default=UPSTREAM_PORT)
        parser.add_argument("--demo-requests", type=int, default=24, help="demo requests to send at start (0: none)")
        parser.add_argument(
            "--no-simulator",
            dest="simulator",
            action="store_false",
            help="start no simulated upstream and seed no demo (production, demos against real providers)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        try:
            require_loopback(host, what="runstack --host")
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        upstream_url = f"http://127.0.0.1:{options['upstream_port']}/v1"
        env = {**os.environ, "SIMULATED_UPSTREAM_URL": upstream_url, "PYTHONUNBUFFERED": "1"}
        env.setdefault("DJANGO_SETTINGS_MODULE", "costcontrol.settings.dev")
        # Children find the same embedded servers this process started.
        env.setdefault("DATABASE_URL", settings.DATABASE_URL)
        env.setdefault("REDIS_URL", settings.REDIS_URL)
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            # Every child writes its metrics here and any worker's /metrics sums them (see README, Metrics);
            # emptied first so that a previous run's processes are not counted again.
            metrics_dir = Path(settings.BASE_DIR) / "var" / "prometheus"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        specs = child_commands(options)
        call_command("setup_periodic_tasks", stdout=open(os.devnull, "w"))  # noqa: SIM115
        children: dict[str, subprocess.Popen[bytes]] = {}
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, argv in specs.items():
                children[name] = subprocess.Popen(argv, env=env, start_new_session=True)
            if options["simulator"]:
                self._wait_ready(f"http://127.0.0.1:{options['upstream_port']}/health", children, (200,))
            self._wait_ready(f"http://{host}:{port}/v1/models", children, (401,))
            if options["simulator"]:
                key = self._seed(upstream_url)
                self._banner(host, port, key)
                if options["demo_requests"]:
                    self._demo_traffic(f"http://{host}:{port}/v1", key, options["demo_requests"])
            else:
                self._banner_without_demo(host, port)
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        raise CommandError(f"{name} exited with status {child.returncode}; stopping everything")
                time.sleep(0.5)
        finally:
            for child in children.values():
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGTERM)
            for child in children.values():
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
            self.stdout.write("stopped")

    def _wait_ready(self, url: str, children: dict[str, subprocess.Popen[bytes]], ok: tuple[int, ...]) -> None:
        deadline = time.monotonic() + 60
        while _status(url) not in ok:
            for name, child in children.items():
                if child.poll() is not None:
                    raise CommandError(f"{name} exited during start-up (status {child.returncode})")
            if time.monotonic() > deadline:
                raise CommandError(f"{url} did not come up within 60 s")
            time.sleep(0.2)

    def _seed(self, upstream_url: str) -> str:
        from io import StringIO

        out = StringIO()
        call_command("seed_demo", upstream=upstream_url, stdout=out, stderr=StringIO())
        return out.getvalue().strip().splitlines()[-1]

    def _banner(self, host: str, port: int, key: str) -> None:
        self.stdout.write(
            "\n"
            "CostControl is running.\n"
            f"  Dashboard:  http://{host}:{port}/   (log in as lead / dev / finance, password demo-password)\n"
            f"  Gateway:    http://{host}:{port}/v1  (OpenAI-compatible)\n"
            f"  Demo key:   {key}\n\n"
            "  from openai import OpenAI\n"
            f'  client = OpenAI(base_url="http://{host}:{port}/v1", api_key="{key}")\n'
            '  client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])\n\n'
            "Ctrl-C stops everything.\n"
        )

    def _banner_without_demo(self, host: str, port: int) -> None:
        self.stdout.write(
            "\n"
            "CostControl is running, without the simulated upstream or the demo.\n"
            f"  Dashboard:  http://{host}:{port}/\n"
            f"  Gateway:    http://{host}:{port}/v1  (OpenAI-compatible)\n"
            "  First login: `manage.py createsuperuser`, then `manage.py create_organization NAME --owner USER`;\n"
            "  register a provider, create a project and issue a key on the dashboard.\n\n"
            "Ctrl-C stops everything.\n"
        )

    def _demo_traffic(self, base_url: str, key: str, count: int) -> None:
        from openai import OpenAI

        client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
        features = ["support-bot", "summarizer", "search"]
        models = ["gpt-4o-mini", "gpt-4o", "default-chat"]
        for i in range(count):
            client.chat.completions.create(
                model=models[i % len(models)],
                messages=[{"role": "user", "content": f"Demo question number {i} about invoices"}],
                user=f"customer-{i % 5}:{features[i % len(features)]}",
            )
        self.stdout.write(f"Sent {count} demo requests; they appear on the ledger page within seconds.\n")
