"""`manage.py simulate_upstream --port N`: the bundled OpenAI-compatible test upstream."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.simulator.asgi import run
from apps.simulator.endpoints import SimConfig


class Command(BaseCommand):
    help = "Run the simulated OpenAI-compatible upstream (deterministic answers, usage, streaming, errors)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument("--latency-ms", type=float, default=0.0, help="Added before the first byte")
        parser.add_argument("--jitter-ms", type=float, default=0.0, help="Uniform random extra latency, up to this")
        parser.add_argument("--stream-chunk-delay-ms", type=float, default=0.0)
        parser.add_argument("--error-rate", type=float, default=0.0, help="Fraction of requests answered with 500")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--workers", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> None:
        config = SimConfig(
            latency_ms=options["latency_ms"],
            jitter_ms=options["jitter_ms"],
            stream_chunk_delay_ms=options["stream_chunk_delay_ms"],
            error_rate=options["error_rate"],
            seed=options["seed"],
        )
        self.stdout.write(f"Simulated upstream on http://{options['host']}:{options['port']}/v1")
        run(options["host"], options["port"], config, workers=options["workers"])
