"""Stream a download built by synchronous code (a CSV export over a database cursor) under ASGI too.

Under ASGI, Django serves a ``StreamingHttpResponse`` over a synchronous iterator by first reading it
whole into a list: an export of millions of rows would sit in the worker's memory before its first
byte left. So under ASGI the body becomes an asynchronous iterator that pulls one batch (about 64 KB)
at a time from the synchronous one, each pull in the request's one sync thread (thread-sensitive),
where the database connection and the export's open cursor and transaction live. Under WSGI (and in
Django's test client) the synchronous iterator is served as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from functools import partial

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse

BATCH_CHARS = 64 * 1024


def streaming_response(request: HttpRequest, lines: Iterator[str], **kwargs: object) -> StreamingHttpResponse:
    """A response whose body is ``lines``, read as the client takes it under both ASGI and WSGI."""
    body = _pulled(_batches(lines)) if isinstance(request, ASGIRequest) else lines
    return StreamingHttpResponse(body, **kwargs)  # type: ignore[arg-type]


def _batches(lines: Iterator[str]) -> Generator[bytes]:
    """``lines`` joined into chunks of about ``BATCH_CHARS``: one thread hop per chunk, not per line."""
    try:
        buffer: list[str] = []
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            if size >= BATCH_CHARS:
                yield "".join(buffer).encode()
                buffer, size = [], 0
        if buffer:
            yield "".join(buffer).encode()
    finally:
        # Closing ``lines`` ends what it holds open (the export's transaction and cursor) in this thread.
        close = getattr(lines, "close", None)
        if close is not None:
            close()


async def _pulled(batches: Generator[bytes]) -> AsyncIterator[bytes]:
    pull = sync_to_async(partial(next, batches, None), thread_sensitive=True)
    try:
        while (chunk := await pull()) is not None:
            yield chunk
    finally:
        # A client that disconnects ends the stream here: close the generator in its own thread.
        await sync_to_async(batches.close, thread_sensitive=True)()
