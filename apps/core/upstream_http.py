"""A lean HTTP/1.1 client for the gateway's calls to providers on the request path.

aiohttp's client cost the gateway about 300k instructions a request (callgrind, `make bench`'s
request): request and response objects, header multidicts, URL objects, timers, tracing hooks. This
client does what a proxied request needs and nothing else: keep-alive connections pooled per origin,
one in flight each; the request written in one call; the answer parsed by ``httptools`` (llhttp, the
parser uvicorn serves with). A whole answer comes back bounded, with its Retry-After (``request``); a
streamed one comes back as its status, then chunk by chunk, reading paused while the app is slower
(``stream``). Shadow and trial calls, off the request path, keep the aiohttp session.

It keeps aiohttp's contract with ``apps/gateway/stages/upstream.py``, so the retry and fallback logic
reads both alike: a connect timeout is ``aiohttp.ConnectionTimeoutError``, silence past the read timeout
``aiohttp.SocketTimeoutError`` (the request was sent: possibly billed), a whole answer not read within
its ``total_timeout`` ``TimeoutError`` (as ``asyncio.timeout`` raised it: possibly billed too), anything
else that breaks the exchange an ``aiohttp.ClientError``, and a whole answer past the size limit
``BodyTooLarge``. The total timeout rides on the read timeout's timer: an ``asyncio.timeout`` around each
call cost about 22k instructions a request.

Every URL is tenant-set, so the rules of ``egress_http`` hold here too: a new connection goes only to
addresses the egress policy resolved and checked (``EgressPolicy.resolve``; no second lookup between
check and connect), redirects are answers, never followed, and a header or URL that could split the
request (CR, LF, NUL) is refused before anything is sent. An upstream's answer is hostile input: its
header block is capped, a parse error drops the connection, bytes outside an answer drop it too (so
they can never become the answer to the next request, maybe another tenant's), and a connection is
reused only when its answer was read to the end and the upstream said keep-alive.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp
import httptools

from apps.core.egress import EgressPolicy, EgressRefused

# The most header bytes an answer may carry: providers send a few KB; more is a hostile upstream.
MAX_HEADER_BYTES = 64 * 1024
# Idle connections kept per origin, and for how long (aiohttp's session used 60 s too).
MAX_IDLE_PER_ORIGIN = 256
KEEPALIVE_SECONDS = 60.0
# A stream's unread body past this many bytes pauses reading from the provider (the app is slower).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# How long a host's checked addresses serve new connections before it is resolved (and checked) again,
# as aiohttp's DNS cache did: a burst of new connections to a named provider pays one lookup, not one each.
ADDRESSES_TTL_SECONDS = 60.0
# Characters a request target may carry as they are; anything else is percent-encoded.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"
_FORBIDDEN = ("\r", "\n", "\x00")
# What a header name (a colon too) or value must not hold: it could end the line and add one of its own.
# One search each on every header of every request, where a loop over the characters cost more.
_UNSENDABLE_VALUE = re.compile("[" + re.escape("".join(_FORBIDDEN)) + "]")
_UNSENDABLE_NAME = re.compile("[" + re.escape("".join(_FORBIDDEN)) + ":]")


class BodyTooLarge(Exception):
    """The answer is larger than the caller's limit (``stages.upstream`` turns it into its 502)."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int
    host_header: bytes
    pool: str  # "scheme://host:port": the idle pool's key (a string hashes once; the dataclass's hash ran per use)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time.

    An exchange's answer comes back whole (``exchange``), or, for a stream, as its status once the
    headers are in and then chunk by chunk (``next_chunk``), with reading paused while the app is slower
    than the provider.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.reusable = False
        self._active = False  # a request was sent and its answer is not complete
        self._head: asyncio.Future[Reply] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None
        self._deadline: float | None = None  # loop time by which a whole answer must be read
        self._reset(0, stream=False)

    def _reset(self, limit: int, *, stream: bool) -> None:
        self._limit = limit
        self._stream = stream  # asked as a stream: a 200's body is handed over chunk by chunk
        self._streaming = False  # ... and it is being handed over
        self._body: list[bytes] = []
        self._size = 0
        self._header_bytes = 0
        self._retry_after: str | None = None
        self._status = 0
        self._headers_done = False
        self._length_known = False
        self._too_large = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._more: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None

    # --- the exchange ------------------------------------------------------------------------

    async def exchange(
        self, request: bytes, limit: int, read_timeout: float | None, *, stream: bool = False,
        deadline: float | None = None,
    ) -> Reply:  # fmt: skip
        """Send ``request``; the whole answer, or (``stream``, status 200) its status with the body to come.
        ``deadline``: the loop time by which the whole answer must be read (``TimeoutError`` past it)."""
        assert self.transport is not None and not self._active
        self._reset(limit, stream=stream)
        self.reusable = False
        self._active = True
        self._head = head = self._loop.create_future()
        self._last_read = self._loop.time()
        self._read_timeout = read_timeout
        self._deadline = deadline
        due = self._due(self._last_read)
        if due is not None:
            self._watchdog = self._loop.call_at(due, self._check_silence)
        self.transport.write(request)
        try:
            return await head
        finally:
            self._head = None
            if not self._streaming:
                self._stop_watchdog()

    async def next_chunk(self) -> bytes:
        """The next piece of a streamed body; b"" once it ended; the error that broke it, raised."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= LOW_WATER and self.transport is not None:
                    self._paused = False
                    self._last_read = self._loop.time()
                    self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._ended:
                self._stop_watchdog()
                return b""
            self._more = self._loop.create_future()
            try:
                await self._more
            finally:
                self._more = None

    @property
    def streaming(self) -> bool:
        return self._streaming

    def finished(self) -> bool:
        """Whether the exchange's answer was read to its end (the connection may carry another)."""
        return not self._active and self._error is None and (not self._streaming or self._ended)

    def _wake(self) -> None:
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_silence(self) -> None:
        """The read timeout, as aiohttp's ``sock_read``: no byte from the upstream for that long while
        we wait for one (not while reading is paused because the app is slower); and the whole answer's
        deadline, if it has one."""
        self._watchdog = None
        now = self._loop.time()
        due = self._due(now)
        if not self._active or due is None:
            return
        early = now + 0.001  # uvloop's timers may fire up to a millisecond early
        if self._deadline is not None and self._deadline <= early:
            self._fail(TimeoutError("the whole answer was not read within its total timeout"))
        elif due <= early:  # the deadline is still ahead: the silence ran out
            self._fail(aiohttp.SocketTimeoutError(f"no answer for {self._read_timeout} s"))
        else:
            self._watchdog = self._loop.call_at(due, self._check_silence)

    def _due(self, now: float) -> float | None:
        """When the watchdog must look next: the deadline or the end of the allowed silence, the earlier
        (silence counts only while we wait for a byte: from ``now`` while reading is paused)."""
        due = self._deadline
        if self._read_timeout:
            silent_until = (now if self._paused else self._last_read) + self._read_timeout
            if due is None or silent_until < due:
                due = silent_until
        return due

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        self._active = False
        self._stop_watchdog()
        if self.transport is not None:
            self.transport.abort()
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._streaming and not self._ended:
            self._error = error
            self._wake()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Bytes nobody asked for (after a complete answer, or on an idle connection): never reuse it.
            self._fail(aiohttp.ClientPayloadError("the provider sent data outside an answer"))
            return
        self._last_read = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised: the flag says which it was.
            if self._too_large:
                self._fail(BodyTooLarge(self._limit))
            else:
                self._fail(aiohttp.ClientPayloadError(f"the provider's answer is not valid HTTP: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed keep-alive connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if not self._active:
            return
        self._active = False
        self._stop_watchdog()
        # An answer without a length ends where the connection does (HTTP/1.0 style).
        ends_here = self._headers_done and not self._length_known
        if self._streaming:
            if ends_here:
                self._ended = True
            else:
                self._error = aiohttp.ServerDisconnectedError(f"the provider's stream was cut: {exc or 'EOF'}")
            self._wake()
        elif self._head is not None and not self._head.done():
            if ends_here:
                self._head.set_result(Reply(self._status, b"".join(self._body), self._retry_after))
            else:
                message = f"the provider closed the connection: {exc or 'EOF'}"
                self._head.set_exception(aiohttp.ServerDisconnectedError(message))

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._active:  # a second answer in the bytes of the first: a broken or hostile upstream
            raise httptools.HttpParserError("an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError(f"more than {MAX_HEADER_BYTES} bytes of headers")
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif lowered == b"content-length":
            self._length_known = True
            if value.strip().isdigit() and int(value) > self._limit and not self._stream:
                self._too_large = True
                raise BodyTooLarge(self._limit)
        elif lowered == b"transfer-encoding":
            self._length_known = True

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._headers_done = True
        if self._stream and self._status == 200:
            self._streaming = True
            if self._head is not None and not self._head.done():
                self._head.set_result(Reply(200, b"", self._retry_after))

    def on_body(self, chunk: bytes) -> None:
        if self._streaming:
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake()
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._too_large = True
            raise BodyTooLarge(self._limit)
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset(self._limit, stream=self._stream)
            return
        self.reusable = self.parser.should_keep_alive()
        self._active = False
        if self._streaming:
            self._ended = True
            self._wake()
        elif self._head is not None and not self._head.done():
            self._stop_watchdog()
            self._head.set_result(Reply(self._status, b"".join(self._body), self._retry_after))


class UpstreamStream:
    """A streamed answer (status 200) being read: ``chunks()`` yields its body as it arrives; ``release()``
    (always, in a ``finally``) returns the connection to the pool if the stream was read to its end and
    closes it otherwise."""

    __slots__ = ("_client", "_connection", "_origin", "retry_after", "status")

    def __init__(self, client: UpstreamHttp, origin: _Origin, connection: _Connection, reply: Reply) -> None:
        self._client, self._origin, self._connection = client, origin, connection
        self.status, self.retry_after = reply.status, reply.retry_after

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._connection.next_chunk():
            yield chunk

    def release(self) -> None:
        self._client._give_back(self._origin, self._connection)


class UpstreamHttp:
    """Pooled keep-alive connections per origin: ``request``/``post`` return a whole answer, ``stream`` a
    streamed one as it comes."""

    def __init__(self, policy: EgressPolicy, *, connect_timeout: float) -> None:
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._idle: dict[str, deque[_Connection]] = {}  # by origin (``_Origin.pool``)
        self._origins: dict[str, tuple[_Origin, bytes]] = {}  # URL -> (origin, request target)
        # (host, port) -> (loop time until which they serve, the addresses the egress policy checked)
        self._addresses: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.addresses_ttl = ADDRESSES_TTL_SECONDS
        self._resolving: dict[tuple[str, int], asyncio.Future[list[str]]] = {}
        # Made now, at start-up: loading the CA bundle blocks for some milliseconds, never on a request.
        self._tls = ssl.create_default_context()

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes = b"", *, limit: int,
        read_timeout: float | None, connect_timeout: float | None = None, total_timeout: float | None = None,
    ) -> Reply:  # fmt: skip
        """Send one request; its whole answer, at most ``limit`` bytes of body (``BodyTooLarge`` past it),
        within ``total_timeout`` seconds from now, connecting included (``TimeoutError`` past it)."""
        deadline = None if total_timeout is None else asyncio.get_running_loop().time() + total_timeout
        origin, connection, request = await self._start(method, url, headers, body, connect_timeout, deadline)
        try:
            reply = await connection.exchange(request, limit, read_timeout, deadline=deadline)
        except BaseException:
            # Cancelled (the total timeout) or failed mid-exchange: the connection's state is unknown.
            self._discard(connection)
            raise
        self._give_back(origin, connection)
        return reply

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, *, limit: int, read_timeout: float | None,
        connect_timeout: float | None = None, total_timeout: float | None = None,
    ) -> Reply:  # fmt: skip
        return await self.request(
            "POST", url, headers, body, limit=limit, read_timeout=read_timeout, connect_timeout=connect_timeout,
            total_timeout=total_timeout,
        )  # fmt: skip

    async def stream(
        self, url: str, headers: dict[str, str], body: bytes, *, limit: int, read_timeout: float | None,
        connect_timeout: float | None = None,
    ) -> UpstreamStream | Reply:  # fmt: skip
        """POST and, if the provider answers 200, the stream to read (``UpstreamStream``); any other answer
        whole, as ``request`` returns it (an error is read to its end, at most ``limit`` bytes)."""
        origin, connection, request = await self._start("POST", url, headers, body, connect_timeout)
        try:
            reply = await connection.exchange(request, limit, read_timeout, stream=True)
        except BaseException:
            self._discard(connection)
            raise
        if connection.streaming:  # a 200: its body (maybe already whole in the buffer) is read from the stream
            return UpstreamStream(self, origin, connection, reply)
        self._give_back(origin, connection)
        return reply

    async def _start(
        self, method: str, url: str, headers: dict[str, str], body: bytes, connect_timeout: float | None,
        deadline: float | None = None,
    ) -> tuple[_Origin, _Connection, bytes]:  # fmt: skip
        """The origin, a connection to it (pooled, else new, by ``deadline`` if there is one) and the
        request's bytes; refused before anything is sent if a header or the URL could split the request."""
        origin, target = self._parse(url)
        head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", origin.host_header, b"\r\n"]
        for name, value in headers.items():
            if _UNSENDABLE_NAME.search(name) or _UNSENDABLE_VALUE.search(value):
                raise aiohttp.ClientConnectionError(f"the header {name!r} cannot be sent (a line break or NUL)")
            head += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        if body or method == "POST":
            head.append(b"Content-Length: %d\r\n" % len(body))
        head += [b"\r\n", body]
        connection = self._take(origin)
        if connection is None:
            try:
                # Address lookup and connecting end by the deadline too (no deadline: None, no limit). A
                # new connection, off the usual path: the timer costs nothing on a pooled one.
                async with asyncio.timeout_at(deadline):
                    connection = await self._connect(origin, connect_timeout or self._connect_timeout)
            except TimeoutError as exc:
                if isinstance(exc, aiohttp.ClientError):  # _connect's own connect timeout
                    raise
                raise aiohttp.ConnectionTimeoutError(
                    f"connecting to {origin.host} took past the total timeout"
                ) from None
        return origin, connection, b"".join(head)

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        """Pool a connection whose answer was read to its end and may carry another; close any other."""
        transport = connection.transport
        if connection.reusable and connection.finished() and transport is not None and not transport.is_closing():
            idle = self._idle.get(origin.pool)
            if idle is None:
                idle = self._idle[origin.pool] = deque()
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                connection.idle_since = time.monotonic()
                idle.append(connection)
                return
        self._discard(connection)

    @staticmethod
    def _discard(connection: _Connection) -> None:
        connection.reusable = False
        if connection.transport is not None:
            connection.transport.abort()

    def _parse(self, url: str) -> tuple[_Origin, bytes]:
        known = self._origins.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise aiohttp.ClientConnectionError(f"{url!r} is not an http(s) URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise aiohttp.ClientConnectionError(f"{url!r} has an invalid port") from None
        host = parts.hostname
        if any(c in url for c in _FORBIDDEN) or " " in host:
            raise aiohttp.ClientConnectionError("the provider's URL contains a line break, NUL or space")
        try:
            ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError:
            raise aiohttp.ClientConnectionError(f"{host!r} is not a valid host name") from None
        shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        default = port == (443 if parts.scheme == "https" else 80)
        host_header = (shown if default else f"{shown}:{port}").encode("ascii")
        path = quote(parts.path or "/", safe=_PATH_SAFE) + (
            f"?{quote(parts.query, safe=_PATH_SAFE)}" if parts.query else ""
        )
        origin = _Origin(parts.scheme, ascii_host, port, host_header, f"{parts.scheme}://{shown}:{port}")
        if len(self._origins) >= 10_000:  # URLs are per provider and endpoint; a bound all the same
            self._origins.clear()
        self._origins[url] = result = (origin, path.encode("ascii"))
        return result

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin.pool)
        if not idle:
            return None
        oldest_kept = time.monotonic() - KEEPALIVE_SECONDS  # monotonic, not the loop's time: no getpid call
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            transport = connection.transport
            if transport is not None and not transport.is_closing() and connection.idle_since > oldest_kept:
                return connection
            if transport is not None:
                transport.close()
        return None

    async def _connect(self, origin: _Origin, within: float) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._checked_addresses(origin, loop)
        tls = self._tls if origin.scheme == "https" else None
        error: BaseException | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(within):
                    _transport, connection = await loop.create_connection(
                        lambda: _Connection(loop), address, origin.port, ssl=tls,
                        server_hostname=origin.host if tls is not None else None,
                    )  # fmt: skip
                return connection
            except TimeoutError:
                error = aiohttp.ConnectionTimeoutError(
                    f"connecting to {origin.host}:{origin.port} took over {within} s"
                )
            except (OSError, ssl.SSLError) as exc:
                error = aiohttp.ClientConnectionError(f"cannot connect to {origin.host}:{origin.port}: {exc}")
        raise error or aiohttp.ClientConnectionError(f"no address to connect to for {origin.host}")

    async def _checked_addresses(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> list[str]:
        """The addresses the egress policy resolved and admitted for ``origin`` (kept ``addresses_ttl``
        seconds; a refusal is not kept, so it is asked again next time)."""
        key = (origin.host, origin.port)
        kept = self._addresses.get(key)
        if kept is not None and kept[0] > loop.time():
            return kept[1]
        # Connections opened together share one lookup (blocking getaddrinfo, off the loop).
        lookup = self._resolving.get(key)
        if lookup is None:
            lookup = self._resolving[key] = loop.run_in_executor(None, self._policy.resolve, origin.host, origin.port)
            lookup.add_done_callback(lambda _done: self._resolving.pop(key, None))
        try:
            addresses = await asyncio.shield(lookup)  # one waiter cancelled must not cancel the others' lookup
        except EgressRefused as exc:
            raise aiohttp.ClientConnectionError(str(exc)) from None
        if len(self._addresses) >= 10_000:  # hosts are per provider; a bound all the same
            self._addresses.clear()
        self._addresses[key] = (loop.time() + self.addresses_ttl, addresses)
        return addresses

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()
