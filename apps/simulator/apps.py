from __future__ import annotations

from django.apps import AppConfig


class SimulatorConfig(AppConfig):
    """The simulated OpenAI-compatible upstream (``simulate_upstream``); it has no models."""

    name = "apps.simulator"
    label = "simulator"
