"""Embedded defaults: real servers when no URL is given, the given URL otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.live import ROOT, free_port

SHOW_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings; "
    "from django.db import connection; "
    "cur = connection.cursor(); cur.execute('CREATE EXTENSION IF NOT EXISTS vector'); "
    "cur.execute(\"SELECT extversion FROM pg_extension WHERE extname = 'vector'\"); "
    "print(json.dumps({'db_host': settings.DATABASES['default']['HOST'], "
    "'db_name': settings.DATABASES['default']['NAME'], 'redis': settings.REDIS_URL, "
    "'server_version': connection.pg_version, 'vector': cur.fetchone()[0]}))"
)


def _settings_in_subprocess(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stop_database(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from costcontrol import embedded; embedded.stop_database()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unset_urls_start_embedded_postgres_with_pgvector_and_redis(tmp_path: Path) -> None:
    redis_port = free_port()  # nothing listens here, so a redis-server must be started
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="costcontrol.settings.dev",
        COSTCONTROL_VAR_DIR=str(tmp_path),
        COSTCONTROL_REDIS_PORT=str(redis_port),
    )
    try:
        shown = _settings_in_subprocess(env)
        assert shown["db_host"] == str(tmp_path / "pgdata")  # a socket inside our var dir
        assert shown["db_name"] == "costcontrol"
        assert shown["server_version"] >= 180000
        assert shown["vector"]
        assert shown["redis"] == f"redis://127.0.0.1:{redis_port}/0"
        assert redis.Redis(port=redis_port).ping()

        # A second start finds both servers running and reuses them.
        assert _settings_in_subprocess(env) == shown

        stopped = _stop_database(env)
        assert stopped.returncode == 0, stopped.stderr
        assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
    finally:
        _stop_database(env)
        pid_file = tmp_path / "redis" / "redis.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 15)


def test_given_urls_are_used_as_they_are() -> None:
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="costcontrol.settings.dev",
        DATABASE_URL=settings.DATABASE_URL,
        REDIS_URL="redis://127.0.0.1:6399/3",
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.DATABASE_URL); print(s.REDIS_URL)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [settings.DATABASE_URL, "redis://127.0.0.1:6399/3"]
