"""HTTP clients that obey the egress policy: they connect only to addresses it checked, never redirect.

- the gateway's own client for the request path (``upstream_http``) resolves through the policy before
  each new connection and connects to the checked addresses.
- aiohttp (shadow and trial calls, the batch runner's sync path): ``EgressConnector`` checks the
  addresses aiohttp resolved (or the literal address in the URL) right before it connects to them,
  so there is no second lookup between the check and the connection. Callers pass
  ``allow_redirects=False`` on every request.
- httpx (alert webhooks, the OpenAI SDK for providers' Batch and Files APIs): ``egress_client``
  resolves and checks in the transport's connect step, then connects to the checked address; TLS
  still verifies the certificate and sends SNI for the URL's host name. Redirects are off and
  proxies from the environment are ignored (a proxy would do its own lookup).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
import httpcore2
import httpx2
from aiohttp.abc import ResolveResult

from apps.core.egress import EgressPolicy, EgressRefused


class EgressConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every resolution passes ``policy``; a refusal is a ``ClientConnectorError``."""

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._egress = policy

    async def _resolve_host(self, host: str, port: int, traces: Sequence[Any] | None = None) -> list[ResolveResult]:
        # aiohttp turns an OSError raised here into ClientConnectorDNSError (a ClientError) with our message.
        self._egress.check_literal(host, port)
        results = await super()._resolve_host(host, port, traces=traces)
        self._egress.check_addresses(host, port, [result["host"] for result in results])
        return results


class _EgressBackend(httpcore2.SyncBackend):
    def __init__(self, policy: EgressPolicy) -> None:
        self._egress = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            addresses = self._egress.resolve(host, port)
        except EgressRefused as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore2.ConnectError as exc:
                last = exc
        raise last or httpcore2.ConnectError(f"no address to connect to for {host}")


class _EgressTransport(httpx2.HTTPTransport):
    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(trust_env=False)
        # Same pool as HTTPTransport builds, with the connect step replaced.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(), network_backend=_EgressBackend(policy)
        )


def egress_client(policy: EgressPolicy, *, timeout: float) -> httpx2.Client:
    """A sync httpx client for tenant-set URLs: checked addresses only, no redirects, no env proxies."""
    return httpx2.Client(transport=_EgressTransport(policy), timeout=timeout, follow_redirects=False, trust_env=False)
