"""The gateway's lean upstream client (``apps/core/upstream_http.py``) against hostile wire bytes.

The simulated upstream speaks valid HTTP (uvicorn frames its answers), so what a broken or hostile
provider can put on the wire is played here by a real loopback server that writes raw bytes: bad
status lines, endless headers, bodies past the limit, answers nobody asked for, silence, a close in
the middle. The live tests (``test_sdk.py``, ``test_failure_paths.py``, ``test_egress_live.py``) run
the same client through the gateway against the simulator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.core.egress import EgressPolicy
from apps.core.upstream_http import MAX_HEADER_BYTES, BodyTooLarge, UpstreamHttp, UpstreamStream

LOOPBACK = EgressPolicy(allow=["127.0.0.1"])
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
Answerer = Callable[[bytes, int], bytes | None]  # (request head and body, n-th request on the connection)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body,
    )  # fmt: skip


@dataclass
class RawUpstream:
    url: str
    received: list[bytes] = field(default_factory=list)  # every request, head and body, in order
    connections: int = 0


@asynccontextmanager
async def raw_upstream(answer: Answerer, *, close_after: bool = False) -> AsyncIterator[RawUpstream]:
    """A loopback server that reads each request whole and writes ``answer``'s raw bytes (None: stay
    silent; ``close_after``: then close the connection)."""
    upstream = RawUpstream(url="")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                request = head + await reader.readexactly(int(lengths[0].split(b":")[1]) if lengths else 0)
                upstream.received.append(request)
                reply = answer(request, served)
                served += 1
                if reply is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(reply)
                await writer.drain()
                if close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        yield upstream
    finally:
        server.close()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def pooled(client: UpstreamHttp) -> int:
    return sum(len(idle) for idle in client._idle.values())


def test_a_kept_alive_connection_carries_the_next_request_and_answers_arrive_whole() -> None:
    def answer(request: bytes, n: int) -> bytes:
        if n == 0:
            return ok(b'{"n":0}', b"Retry-After: 7\r\n")
        chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"n"\r\n3\r\n:1}\r\n0\r\n\r\n'
        return chunked

    async def scenario() -> tuple[Any, Any, RawUpstream]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(answer) as upstream:
            first = await client.post(upstream.url, HEADERS, b'{"a":1}', limit=1000, read_timeout=5)
            second = await client.post(upstream.url, HEADERS, b'{"a":2}', limit=1000, read_timeout=5)
        client.close()
        return first, second, upstream

    first, second, upstream = run(scenario)
    assert (first.status, first.body, first.retry_after) == (200, b'{"n":0}', "7")
    assert (second.status, second.body, second.retry_after) == (200, b'{"n":1}', None)
    assert upstream.connections == 1, "the second request reused the first connection"
    head = upstream.received[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1") and b"authorization: bearer sk-test" in head
    assert upstream.received[0].endswith(b'{"a":1}') and b"content-length: 7" in head


def test_an_answer_that_ends_with_the_connection_is_whole_and_the_connection_is_not_reused() -> None:
    async def scenario() -> tuple[Any, Any, RawUpstream]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"till":"eof"}'
        async with raw_upstream(lambda _r, _n: raw, close_after=True) as upstream:
            first = await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
            second = await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
        client.close()
        return first, second, upstream

    first, second, upstream = run(scenario)
    assert first.body == second.body == b'{"till":"eof"}'
    assert upstream.connections == 2


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", aiohttp.ClientPayloadError),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n",
            aiohttp.ClientPayloadError,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", BodyTooLarge),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" * 3,
            BodyTooLarge,
        ),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut":', aiohttp.ServerDisconnectedError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789", aiohttp.ClientPayloadError),
    ],
    ids=["not-http", "endless-headers", "declared-too-large", "chunked-too-large", "closed-mid-body", "two-lengths"],
)
def test_a_broken_answer_is_a_clear_error_and_its_connection_is_dropped(raw: bytes, error: type[Exception]) -> None:
    async def scenario() -> tuple[BaseException | None, int]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(lambda _r, _n: raw, close_after=True) as upstream:
            try:
                await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
            except Exception as exc:
                return exc, pooled(client)
        return None, pooled(client)

    outcome, kept = run(scenario)
    assert isinstance(outcome, error), outcome
    assert kept == 0, "a broken connection is never pooled"


def test_an_interim_answer_is_skipped_for_the_real_one() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"real":true}')

    async def scenario() -> Any:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(lambda _r, _n: raw) as upstream:
            return await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)

    reply = run(scenario)
    assert (reply.status, reply.body) == (200, b'{"real":true}')


def test_silence_past_the_read_timeout_fails_the_request_in_time() -> None:
    async def scenario() -> tuple[BaseException | None, float]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(lambda _r, _n: None) as upstream:
            started = time.monotonic()
            try:
                await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=0.3)
            except Exception as exc:
                return exc, time.monotonic() - started
        return None, 0.0

    error, took = run(scenario)
    # A timeout after the request was sent: stages.upstream records the attempt as possibly billed.
    assert isinstance(error, aiohttp.SocketTimeoutError) and isinstance(error, TimeoutError)
    assert not isinstance(error, aiohttp.ConnectionTimeoutError)
    assert 0.25 < took < 5


@asynccontextmanager
async def dribbling_upstream(every: float) -> AsyncIterator[str]:
    """A loopback provider that answers a 200 one byte every ``every`` seconds: never silent for long."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            await reader.readexactly(int(length[0].split(b":")[1]))
            for byte in ok(b'{"id": "slow"}' + b" " * 200):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(every)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    finally:
        server.close()


def test_an_answer_that_dribbles_in_fails_at_its_total_timeout_and_its_connection_is_dropped() -> None:
    async def scenario() -> tuple[BaseException | None, float, int]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with dribbling_upstream(0.02) as url:
            started = time.monotonic()
            try:
                # Never 0.3 s without a byte, so only the total timeout can end it.
                await client.post(url, HEADERS, b"{}", limit=10_000, read_timeout=0.3, total_timeout=0.6)
            except Exception as exc:
                return exc, time.monotonic() - started, pooled(client)
        return None, 0.0, pooled(client)

    error, took, idle = run(scenario)
    # As asyncio.timeout raised it: a plain TimeoutError, after the request was sent (possibly billed).
    assert type(error) is TimeoutError
    assert 0.55 < took < 3 and idle == 0


def test_the_total_timeout_ends_silence_before_a_longer_read_timeout_and_is_not_carried_to_the_next_request() -> None:
    async def scenario() -> tuple[BaseException | None, float, bytes]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        # The first request gets no answer; the connection it was on is dropped, the second gets a new one.
        async with raw_upstream(lambda _r, n: None if n == 0 else ok(b"{}")) as upstream:
            started = time.monotonic()
            try:
                await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=30, total_timeout=0.3)
            except Exception as exc:
                error, took = exc, time.monotonic() - started
            async with raw_upstream(lambda _r, _n: ok(b"{}")) as second:
                reply = await client.post(second.url, HEADERS, b"{}", limit=1000, read_timeout=30, total_timeout=0.3)
                await asyncio.sleep(0.5)  # past the first request's deadline: the pooled connection still works
                again = await client.post(second.url, HEADERS, b"{}", limit=1000, read_timeout=30)
                assert second.connections == 1 and again.status == 200
            return error, took, reply.body

    error, took, body = run(scenario)
    assert type(error) is TimeoutError and 0.25 < took < 5 and body == b"{}"


def test_an_answer_smuggled_behind_another_never_reaches_the_next_request() -> None:
    """Two answers in the bytes of one (a hostile or broken provider, or a desynchronised proxy): the
    second must not become the answer to the next request on that connection, which may be another
    tenant's. The connection is dropped and the next request gets its own answer on a new one."""

    def answer(request: bytes, n: int) -> bytes:
        if b"victim" in request:
            return ok(b'{"for":"victim"}')
        return ok(b'{"for":"first"}') + ok(b'{"for":"victim","smuggled":true}')

    async def scenario() -> tuple[Any, Any, RawUpstream]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(answer) as upstream:
            first = await client.post(upstream.url, HEADERS, b'{"who":"first"}', limit=1000, read_timeout=5)
            await asyncio.sleep(0.05)
            second = await client.post(upstream.url, {**HEADERS, "Authorization": "Bearer sk-other"},
                                       b'{"who":"victim"}', limit=1000, read_timeout=5)  # fmt: skip
        client.close()
        return first, second, upstream

    first, second, upstream = run(scenario)
    assert first.body == b'{"for":"first"}'
    assert second.body == b'{"for":"victim"}', "the smuggled answer was handed to the next request"
    assert upstream.connections == 2


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("http://127.0.0.1:9/v1/chat", {"Authorization": "Bearer sk\r\nX-Injected: 1"}),
        ("http://127.0.0.1:9/v1/chat", {"X-Evil\r\nHost": "x"}),
        ("http://127.0.0.1:9/v1/chat", {"X-Nul": "a\x00b"}),
        ("http://127.0.0.1:9/v1/chat", {"X-Bare\n": "x"}),
        ("http://127.0.0.1:9/v1/chat", {"Host: evil.example\r\nX": "x"}),
        ("http://127.0.0.1:9/v1/chat", {"X-Colon:": "x"}),
        ("http://127.0.0.1:9/v1/chat\r\nX-Injected: 1", {}),
        ("ftp://127.0.0.1:9/v1/chat", {}),
        ("http://127.0.0.1:99999/v1/chat", {}),
    ],
)
def test_a_request_that_could_be_split_or_misdirected_is_refused_before_anything_is_sent(
    url: str, headers: dict[str, str]
) -> None:
    async def scenario() -> BaseException | None:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        try:
            await client.post(url, headers, b"{}", limit=1000, read_timeout=1)
        except aiohttp.ClientError as exc:
            return exc
        return None

    assert isinstance(run(scenario), aiohttp.ClientConnectionError)


def test_the_egress_policy_decides_where_a_new_connection_may_go() -> None:
    async def scenario() -> tuple[BaseException | None, RawUpstream]:
        client = UpstreamHttp(EgressPolicy(), connect_timeout=2)  # loopback not allowed
        async with raw_upstream(lambda _r, _n: ok(b"{}")) as upstream:
            try:
                await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=1)
            except aiohttp.ClientError as exc:
                return exc, upstream
        return None, upstream

    error, upstream = run(scenario)
    assert isinstance(error, aiohttp.ClientConnectionError) and "loopback" in str(error)
    assert upstream.connections == 0, "the refused address was never connected to"


class CountingPolicy(EgressPolicy):
    """The real policy, counting how often it is asked to resolve (what a new connection costs)."""

    def __init__(self, allow: list[str]) -> None:
        super().__init__(allow)
        self.resolved = 0

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved += 1
        return super().resolve(host, port)


def test_checked_addresses_serve_a_burst_of_new_connections_until_they_expire_and_refusals_are_not_kept() -> None:
    async def scenario() -> tuple[int, int, int, int]:
        policy = CountingPolicy(["127.0.0.1"])
        client = UpstreamHttp(policy, connect_timeout=2)
        async with raw_upstream(lambda _r, _n: ok(b"{}")) as upstream:
            # Eight at once: eight new connections, one resolution.
            await asyncio.gather(
                *(client.post(upstream.url, HEADERS, b"{}", limit=100, read_timeout=2) for _ in range(8))
            )
            burst, connections = policy.resolved, upstream.connections
            client.close()  # no pooled connection left: the next request connects again
            client.addresses_ttl = 0.0
            client._addresses = {key: (0.0, kept) for key, (_until, kept) in client._addresses.items()}
            await client.post(upstream.url, HEADERS, b"{}", limit=100, read_timeout=2)
            after_expiry = policy.resolved
        refusing = CountingPolicy([])  # loopback not admitted
        strict = UpstreamHttp(refusing, connect_timeout=2)
        for _ in range(2):
            with pytest.raises(aiohttp.ClientConnectionError):
                await strict.post(upstream.url, HEADERS, b"{}", limit=100, read_timeout=2)
        return burst, connections, after_expiry, refusing.resolved

    burst, connections, after_expiry, refusals = run(scenario)
    assert connections == 8 and burst == 1
    assert after_expiry == 2, "expired addresses are resolved and checked again"
    assert refusals == 2, "a refusal is asked again, never kept"


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda status, headers, body: b"HTTP/1.1 " + status + b"\r\n" + headers + b"\r\n" + body,
            st.sampled_from([b"200 OK", b"404 Not Found", b"999 X", b"20 OK", b"100 Continue", b"", b"200"]),
            st.lists(
                st.sampled_from(
                    [
                        b"Content-Length: 3\r\n",
                        b"Content-Length: -1\r\n",
                        b"Content-Length: 99999\r\n",
                        b"Transfer-Encoding: chunked\r\n",
                        b"Connection: close\r\n",
                        b"Bad Header\r\n",
                        b"Retry-After: \xff\xfe\r\n",
                        b"X: \x00\r\n",
                    ]
                ),  # fmt: skip
                max_size=4,
            ).map(b"".join),
            st.binary(max_size=200),
        ),
    )
)
def test_whatever_bytes_come_back_the_client_answers_or_raises_a_client_error(raw: bytes) -> None:
    async def scenario() -> Any:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(lambda _r, _n: raw, close_after=True) as upstream:
            try:
                return await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=0.5)
            except (aiohttp.ClientError, BodyTooLarge) as exc:
                return exc
            finally:
                client.close()

    outcome = run(scenario)
    if not isinstance(outcome, Exception):
        assert 0 <= outcome.status <= 999 and len(outcome.body) <= 1000


# --- streams ------------------------------------------------------------------------------------------


def chunked(*pieces: bytes, end: bool = True) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return head + body + (b"0\r\n\r\n" if end else b"")


def test_a_stream_read_to_its_end_arrives_whole_and_its_connection_carries_the_next_request() -> None:
    events = [b'data: {"n":%d}\n\n' % n for n in range(50)]

    async def scenario() -> tuple[bytes, Any, RawUpstream]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        async with raw_upstream(lambda _r, n: chunked(*events) if n == 0 else ok(b'{"after":"stream"}')) as upstream:
            opened = await client.stream(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
            assert isinstance(opened, UpstreamStream) and opened.status == 200
            try:
                body = b"".join([chunk async for chunk in opened.chunks()])
            finally:
                opened.release()
            after = await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
        client.close()
        return body, after, upstream

    body, after, upstream = run(scenario)
    assert body == b"".join(events) and after.body == b'{"after":"stream"}'
    assert upstream.connections == 1


def test_a_stream_left_unread_never_returns_its_connection_to_the_pool() -> None:
    async def scenario() -> tuple[int, RawUpstream]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)

        def answer(request: bytes, _n: int) -> bytes:
            return chunked(b"data: 1\n\n", end=False) if request.endswith(b'"stream"}') else ok(b"{}")

        async with raw_upstream(answer) as upstream:
            opened = await client.stream(upstream.url, HEADERS, b'{"as":"stream"}', limit=1000, read_timeout=5)
            assert isinstance(opened, UpstreamStream)
            async for _chunk in opened.chunks():
                break  # the app went away
            opened.release()
            kept = pooled(client)
            await client.post(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
        client.close()
        return kept, upstream

    kept, upstream = run(scenario)
    assert kept == 0 and upstream.connections == 2


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (chunked(b"data: 1\n\n", end=False), aiohttp.SocketTimeoutError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\ndata: 1\n\n", aiohttp.ServerDisconnectedError),
        (chunked(b"data: 1\n\n", end=False) + b"zz\r\nnot a chunk", aiohttp.ClientPayloadError),
    ],
    ids=["silent-mid-stream", "cut-mid-stream", "garbage-framing"],
)
def test_a_stream_that_breaks_raises_from_its_chunks_after_what_arrived(raw: bytes, error: type[Exception]) -> None:
    close = error is aiohttp.ServerDisconnectedError

    async def scenario() -> tuple[list[bytes], BaseException | None]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        got: list[bytes] = []
        async with raw_upstream(lambda _r, _n: raw, close_after=close) as upstream:
            opened = await client.stream(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=0.3)
            assert isinstance(opened, UpstreamStream)
            try:
                async for chunk in opened.chunks():
                    got.append(chunk)
            except Exception as exc:
                return got, exc
            finally:
                opened.release()
        return got, None

    got, raised = run(scenario)
    assert b"".join(got).startswith(b"data: 1") and isinstance(raised, error), raised


def test_an_error_answer_to_a_stream_request_comes_back_whole_and_bounded() -> None:
    async def scenario() -> tuple[Any, BaseException | None]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        error = b'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 17\r\n\r\n{"error":"slow"}\n'
        huge = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n"
        async with raw_upstream(lambda _r, n: error if n == 0 else huge) as upstream:
            first = await client.stream(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
            try:
                await client.stream(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
            except BodyTooLarge as exc:
                return first, exc
        return first, None

    first, too_large = run(scenario)
    assert not isinstance(first, UpstreamStream)
    assert (first.status, first.body, first.retry_after) == (429, b'{"error":"slow"}\n', "2")
    assert isinstance(too_large, BodyTooLarge)


def test_a_slow_reader_pauses_the_provider_and_still_gets_every_byte() -> None:
    piece = b"data: " + b"x" * 16_000 + b"\n\n"
    pieces = [piece] * 64  # about 1 MB, past the high-water mark

    async def scenario() -> tuple[bytes, bool]:
        client = UpstreamHttp(LOOPBACK, connect_timeout=2)
        paused = False
        async with raw_upstream(lambda _r, _n: chunked(*pieces)) as upstream:
            opened = await client.stream(upstream.url, HEADERS, b"{}", limit=1000, read_timeout=5)
            assert isinstance(opened, UpstreamStream)
            got = []
            try:
                async for chunk in opened.chunks():
                    paused = paused or opened._connection._paused
                    got.append(chunk)
                    await asyncio.sleep(0.001)
            finally:
                opened.release()
        client.close()
        return b"".join(got), paused

    body, paused = run(scenario)
    assert body == b"".join(pieces)
    assert paused, "reading was never paused for the slow reader"


# --- TLS ----------------------------------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no public authority signed (its key beside it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "costcontrol test upstream")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_checks_the_providers_certificate(tmp_path: Path) -> None:
    """An https provider whose certificate no trusted authority signed is refused; once its authority is
    trusted, the same provider answers over TLS (certificate and host checked, SNI sent)."""
    cert, key = _self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def scenario() -> tuple[BaseException | None, Any]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
                writer.write(ok(b'{"over":"tls"}'))
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=served)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        try:
            refused: BaseException | None = None
            try:
                await UpstreamHttp(LOOPBACK, connect_timeout=2).post(url, HEADERS, b"{}", limit=1000, read_timeout=2)
            except aiohttp.ClientConnectionError as exc:
                refused = exc
            trusting = UpstreamHttp(LOOPBACK, connect_timeout=2)
            trusting._tls.load_verify_locations(cafile=str(cert))
            return refused, await trusting.post(url, HEADERS, b"{}", limit=1000, read_timeout=2)
        finally:
            server.close()

    refused, answer = run(scenario)
    assert refused is not None and "certificate" in str(refused).lower()
    assert (answer.status, answer.body) == (200, b'{"over":"tls"}')
