"""GET /metrics: every process's metrics on this host, plus the control plane's, in Prometheus' text format.

With ``PROMETHEUS_MULTIPROC_DIR`` set, each process (gateway workers, Celery
workers) writes its values to files there and any worker's ``/metrics`` sums
them, so a scrape of one worker counts the requests all of them answered. The
control plane's figures are read when scraped (``costcontrol/operations.py``):
stream lengths, consumer lag and dead letters, Celery queue depths, roll-up lag
and the policy version. With ``METRICS_PORT`` set, metrics are served only on
that port (every worker listens on it with SO_REUSEPORT; any of them answers
for all), so the public port does not expose them.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from costcontrol import operations

logger = logging.getLogger(__name__)


class ControlPlaneCollector(Collector):
    """The shared parts' state, read at scrape time; a part that cannot be read is reported as such."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        errors = GaugeMetricFamily(
            "costcontrol_metrics_read_errors", "1 when this scrape could not read a part's figures.", labels=["part"]
        )
        parts = (("streams", self._streams), ("celery", self._queues), ("rollups", self._rollups))
        try:
            for part, read in parts:
                try:
                    families = list(read())
                except Exception:
                    logger.warning("metrics: could not read the %s", part, exc_info=True)
                    errors.add_metric([part], 1)
                    continue
                errors.add_metric([part], 0)
                yield from families
        finally:
            close_old_connections()
        yield errors

    def _rollups(self) -> Iterator[GaugeMetricFamily]:
        lag = operations.rollup_lag_seconds()
        if lag is not None:
            yield GaugeMetricFamily(
                "costcontrol_rollup_lag_seconds",
                "Seconds since the roll-ups last caught up with the ledger.",
                value=lag,
            )

    def _streams(self) -> Iterator[GaugeMetricFamily]:
        client = operations.redis_client()
        try:
            states = operations.stream_states(client)
            version = operations.policy_version(client)
        finally:
            client.close()
        families = {
            "length": GaugeMetricFamily("costcontrol_stream_length", "Entries in a stream.", labels=["stream"]),
            "lag": GaugeMetricFamily(
                "costcontrol_stream_consumer_lag", "Entries its consumers have not read yet.", labels=["stream"]
            ),
            "pending": GaugeMetricFamily(
                "costcontrol_stream_pending", "Entries read but not yet stored and acknowledged.", labels=["stream"]
            ),
            "dead": GaugeMetricFamily(
                "costcontrol_stream_dead_letters",
                "Entries that could not be stored (kept to inspect).",
                labels=["stream"],
            ),  # fmt: skip
        }
        for state in states:
            families["length"].add_metric([state.name], state.length)
            if state.lag is not None:
                families["lag"].add_metric([state.name], state.lag)
            families["pending"].add_metric([state.name], state.pending)
            families["dead"].add_metric([state.name], state.dead_letters)
        yield from families.values()
        yield GaugeMetricFamily(
            "costcontrol_policy_version", "The policy version the control plane last announced.", value=version
        )

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        depths = operations.queue_depths()
        family = GaugeMetricFamily(
            "costcontrol_celery_queue_length", "Celery messages waiting in a queue.", labels=["queue"]
        )
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        yield family


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """This host's registry: every process's values (multiprocess mode) or this one's, plus the control plane's."""
    global _registry
    if _registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            _registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(_registry)
        else:
            _registry = REGISTRY
        _registry.register(ControlPlaneCollector())
    return _registry


def render() -> bytes:
    return generate_latest(registry())


async def render_here() -> bytes:
    """The page, once this process's gateway tallies are handed over (on the event loop that keeps them)."""
    from apps.gateway.metrics import flush_all

    flush_all()
    return await sync_to_async(render, thread_sensitive=True)()


def public_allowed(scope: dict[str, Any]) -> bool:
    """May this request read /metrics on the public port? (A 404 otherwise: the page names every tenant.)"""
    if settings.METRICS_PORT:
        return False
    if settings.LOOPBACK_ONLY:
        return True
    if not settings.METRICS_TOKEN:
        return False
    presented = dict(scope["headers"]).get(b"authorization", b"")
    return hmac.compare_digest(presented, b"Bearer " + settings.METRICS_TOKEN.encode())


async def metrics_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: the metrics page (reading files, Redis and Postgres: off the event loop)."""
    if not public_allowed(scope):
        await _send(send, 404, b"Not found.\n", "text/plain; charset=utf-8")
        return
    if scope["method"] not in ("GET", "HEAD"):
        await _send(send, 405, b"Method not allowed.\n", "text/plain; charset=utf-8")
        return
    body = await render_here()
    await _send(send, 200, body, CONTENT_TYPE_LATEST)


async def _send(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})


class MetricsServer:
    """``GET /metrics`` on ``METRICS_HOST:METRICS_PORT``, shared by the host's workers (SO_REUSEPORT)."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port, reuse_port=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await render_here()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def with_metrics_server(send: Any) -> Any:
    """Wrap the lifespan ``send`` so that the metrics port opens once the gateway started and closes with it."""
    if not settings.METRICS_PORT:
        return send
    server = MetricsServer(settings.METRICS_HOST, settings.METRICS_PORT)

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            await server.start()
        elif message["type"] == "lifespan.shutdown.complete":
            await server.stop()
        await send(message)

    return lifespan_send
