"""/v1/files refuses oversized uploads while they arrive, in OpenAI's error shape, with flat memory."""

from __future__ import annotations

import http.client
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import wait_key_live

pytestmark = pytest.mark.live

CAP = 1024 * 1024  # BATCH_MAX_FILE_BYTES of the gateway below
MiB = 1024 * 1024


class LazyFile(io.RawIOBase):
    """``size`` bytes of JSONL-looking text made on the fly: never held in memory at once."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.name = "huge.jsonl"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = b"a" * n
        self.left -= n
        return n


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def capped_gateway(transactional_db: None, upstream: str) -> Iterator[tuple[str, int]]:
    process, url = live.start_gateway(BATCH_MAX_FILE_BYTES=str(CAP))
    yield url, process.proc.pid
    process.stop()


def test_oversized_uploads_get_413_before_the_cap_and_memory_stays_flat(
    capped_gateway: tuple[str, int], tenant: Tenant
) -> None:
    url, pid = capped_gateway
    wait_key_live(url, tenant.key.plaintext)
    client = openai.OpenAI(base_url=url, api_key=tenant.key.plaintext, max_retries=0, timeout=120)

    # Under the cap: stored as usual.
    small = client.files.create(file=("ok.jsonl", b'{"custom_id": "1"}\n'), purpose="batch")
    assert small.bytes == 19

    # Declared too big (Content-Length): refused without reading the body.
    with pytest.raises(openai.APIStatusError) as declared:
        client.files.create(file=("big.jsonl", b"a" * (2 * CAP)), purpose="batch")
    assert declared.value.status_code == 413
    assert declared.value.body["code"] == "file_too_large" and declared.value.body["param"] == "file"  # type: ignore[index]

    # Streamed (chunked, no Content-Length), 300 MB from a generator: refused once past the cap;
    # the server's resident memory does not follow the upload.
    before = peak = _rss(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with pytest.raises(openai.APIStatusError) as streamed:
            client.files.create(file=LazyFile(300 * MiB), purpose="batch")
    finally:
        done.set()
        sampler.join()
    assert streamed.value.status_code == 413 and streamed.value.body["code"] == "file_too_large"  # type: ignore[index]
    assert peak - before < 48 * MiB, f"gateway RSS grew by {(peak - before) / MiB:.1f} MiB during a 300 MB upload"
    print(f"gateway RSS before {before / MiB:.1f} MiB, peak during the 300 MB upload {peak / MiB:.1f} MiB")

    # The gateway still serves the same key afterwards.
    assert client.files.list().data[0].id == small.id


def test_garbage_content_length_is_a_client_error(capped_gateway: tuple[str, int], tenant: Tenant) -> None:
    url, _pid = capped_gateway
    parts = urlsplit(url)
    for value in ("-5", "99999999999999999999"):
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        connection.putrequest("POST", "/v1/files")
        connection.putheader("Authorization", f"Bearer {tenant.key.plaintext}")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", value)
        connection.endheaders()
        response = connection.getresponse()
        assert 400 <= response.status < 500, (value, response.status)
        connection.close()
