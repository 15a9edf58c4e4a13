from __future__ import annotations

# First, before any hot module is imported: the compiled ones, where a fresh build exists (costcontrol.compiled).
from costcontrol import compiled

compiled.install()

from costcontrol.celery import app as celery_app  # noqa: E402

__all__ = ["celery_app"]
