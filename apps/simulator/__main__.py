"""`python -m apps.simulator --port N`: run the simulated upstream without Django."""

from __future__ import annotations

import argparse

from apps.simulator.asgi import run
from apps.simulator.endpoints import SimConfig


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the simulated OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--stream-chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = SimConfig(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    run(args.host, args.port, config, workers=args.workers)


if __name__ == "__main__":
    main()
