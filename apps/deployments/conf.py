"""Knobs of the GPU side, read when used (never at import): Django settings first, then the environment."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

from django.conf import settings

from costcontrol.env import env_int, env_str


def _value(name: str, default: str) -> str:
    value = getattr(settings, name, None)
    return str(value) if value not in (None, "") else env_str(name, default)


def vllm_executable() -> list[str]:
    """``VLLM_EXECUTABLE``: the vLLM CLI, split like a shell would (``"vllm"`` by default)."""
    return shlex.split(_value("VLLM_EXECUTABLE", "vllm"))


def vllm_bind_host() -> str:
    """``VLLM_BIND_HOST``: the address the server listens on (loopback unless the gateway runs elsewhere)."""
    return _value("VLLM_BIND_HOST", "127.0.0.1")


def vllm_public_host() -> str:
    """``VLLM_PUBLIC_HOST``: how gateways reach this GPU host; the bind host, or this host's name on a wildcard."""
    bind = vllm_bind_host()
    return _value("VLLM_PUBLIC_HOST", socket.gethostname() if bind in ("0.0.0.0", "::") else bind)  # noqa: S104


def vllm_startup_timeout() -> float:
    """``VLLM_STARTUP_TIMEOUT_SECONDS``: launch to healthy, weights download and load included."""
    return float(_value("VLLM_STARTUP_TIMEOUT_SECONDS", "1200"))


def vllm_health_interval() -> float:
    return float(_value("VLLM_HEALTH_INTERVAL_SECONDS", "2"))


def vllm_health_failures() -> int:
    """``VLLM_HEALTH_FAILURES``: failed supervision checks in a row before a running deployment is failed."""
    value = getattr(settings, "VLLM_HEALTH_FAILURES", None)
    return int(value) if value is not None else env_int("VLLM_HEALTH_FAILURES", 3)


def vllm_log_dir() -> Path:
    """``VLLM_LOG_DIR``: one log file per deployment, for the failure message and for people."""
    return Path(_value("VLLM_LOG_DIR", str(Path(settings.BASE_DIR) / "var" / "deployments")))
