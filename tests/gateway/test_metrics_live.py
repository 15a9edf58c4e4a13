"""Prometheus metrics from a gateway of two worker processes, read as Prometheus reads them."""

from __future__ import annotations

import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import live
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.live

HELLO = [{"role": "user", "content": "hello"}]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page, by (name, sorted labels), parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def two_worker_gateway(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """A gateway of two uvicorn workers sharing a metrics directory, metrics on a port of their own."""
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    metrics_port = live.free_port()
    process, url = live.start_gateway(
        workers=2,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        METRICS_PORT=str(metrics_port),
        GATEWAY_RETRIES="0",
    )
    try:
        yield url, f"http://127.0.0.1:{metrics_port}/metrics", metrics_dir
    finally:
        process.stop()


@pytest.fixture
def two_workers(tenant: Tenant, two_worker_gateway: tuple[str, str, Path]) -> tuple[str, str, Path]:
    url = two_worker_gateway[0]
    wait_key_live(url, tenant.key.plaintext)
    # Both workers know the key: new connections land on either of them at random, so 32 answered in a
    # row means both know it (8 in a row once all landed on the one that did: 1 chance in 256).
    live.wait_until(lambda: all(_knows(url, tenant.key.plaintext) for _ in range(32)), timeout=30)
    return two_worker_gateway


def _knows(url: str, key: str) -> bool:
    try:
        sdk(url, key).models.list()
    except openai.AuthenticationError:
        return False
    return True


def _ask(url: str, key: str, stream: bool) -> None:
    client = sdk(url, key)  # a client (and connection) of its own: the two workers share the requests
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
        assert chunks
    else:
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices


def test_counters_move_after_sdk_traffic_summed_over_two_workers(
    tenant: Tenant, two_workers: tuple[str, str, Path]
) -> None:
    url, metrics_url, metrics_dir = two_workers
    slug = tenant.project.slug
    before = scrape(metrics_url)
    answered, streamed = 0, 0
    # Until both workers have answered some (each writes its own counter file), in rounds of 16.
    with ThreadPoolExecutor(8) as pool:
        while len(list(metrics_dir.glob("counter_*.db"))) < 2 or answered < 16:
            assert answered < 320, "the second worker never answered a request"
            list(pool.map(lambda i: _ask(url, tenant.key.plaintext, i % 4 == 0), range(16)))
            answered, streamed = answered + 16, streamed + 4
    with pytest.raises(openai.AuthenticationError):
        sdk(url, "cc_live_notakey").chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    # Each worker hands its tallies to the shared files within a second (apps/gateway/metrics.py).
    ok = dict(endpoint="chat.completions", status="200", project=slug, model="gpt-4o-mini")
    live.wait_until(
        lambda: (
            total(scrape(metrics_url), "costcontrol_gateway_requests_total", **ok)
            - total(before, "costcontrol_gateway_requests_total", **ok)
            == answered
        ),
        timeout=5,
    )
    # Any worker's page counts every worker's requests: scrape a few times, landing on either.
    for _ in range(4):
        after = scrape(metrics_url)
        ok = dict(endpoint="chat.completions", status="200", project=slug, model="gpt-4o-mini")
        assert (
            total(after, "costcontrol_gateway_requests_total", **ok)
            - total(before, "costcontrol_gateway_requests_total", **ok)
            == answered
        )
        assert total(after, "costcontrol_gateway_added_latency_seconds_count", endpoint="chat.completions") >= answered
        assert total(after, "costcontrol_upstream_latency_seconds_count", model="gpt-4o-mini") >= answered
        assert total(after, "costcontrol_time_to_first_token_seconds_count", model="gpt-4o-mini") >= streamed
        assert total(after, "costcontrol_tokens_total", project=slug, direction="completion") > 0
        assert total(after, "costcontrol_spend_usd_total", project=slug, model="gpt-4o-mini") > 0
        assert (
            total(after, "costcontrol_refusals_total", reason="key")
            - total(before, "costcontrol_refusals_total", reason="key")
            == 1
        )
        # The control plane's figures come with it.
        assert ("costcontrol_stream_length", (("stream", "ledger"),)) in after
        assert ("costcontrol_celery_queue_length", (("queue", "default"),)) in after
        assert after[("costcontrol_policy_snapshot_built_timestamp_seconds", ())] > 0
        assert after[("costcontrol_metrics_read_errors", (("part", "streams"),))] == 0
    pids = {path.stem.split("_")[1] for path in metrics_dir.glob("counter_*.db")}
    assert len(pids) == 2

    # With METRICS_PORT set the public port does not serve them.
    assert status(url.removesuffix("/v1") + "/metrics") == 404


def test_labels_stay_bounded_whatever_a_tenant_sends(tenant: Tenant, two_workers: tuple[str, str, Path]) -> None:
    """Model names, end users, features and keys a tenant makes up never become label values."""
    url, metrics_url, _ = two_workers
    other = tenant_make(upstream_url=tenant.provider.base_url)
    live.wait_until(lambda: all(_knows(url, other.key.plaintext) for _ in range(32)), timeout=30)
    assert sdk(url, other.key.plaintext).chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    invented = [secrets.token_hex(6) for _ in range(20)]
    client = sdk(url, tenant.key.plaintext)
    for word in invented:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=f"model-{word}", messages=HELLO)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            user=f"user-{word}",
            extra_headers={"X-Feature": f"feature-{word}", "X-End-User": f"end-{word}"},
        )
        with pytest.raises(openai.AuthenticationError):
            sdk(url, f"cc_live_{word}").models.list()
    page = urllib.request.urlopen(metrics_url, timeout=10).read().decode()  # noqa: S310 (loopback)
    for word in invented:
        assert word not in page
    samples = scrape(metrics_url)
    projects = {dict(labels).get("project") for name, labels in samples if name == "costcontrol_gateway_requests_total"}
    # The projects of this module's tenants (factories name them orgN-project), and none for a bad key.
    assert {tenant.project.slug, other.project.slug, ""} <= projects
    assert all(re.fullmatch(r"(org\d+-project)?", str(project)) for project in projects)
    # Another tenant's garbage is not counted as this one's requests.
    assert total(samples, "costcontrol_gateway_requests_total", project=other.project.slug) == 1
    models = {dict(labels).get("model") for name, labels in samples if name == "costcontrol_gateway_requests_total"}
    assert models <= {"", "gpt-4o-mini"}


def test_public_metrics_page_needs_the_metrics_token_and_only_reads(tenant: Tenant) -> None:
    """Without METRICS_PORT the page is on the public port, behind METRICS_TOKEN: it names every tenant."""
    token = secrets.token_urlsafe(16)
    process, url = live.start_gateway(METRICS_TOKEN=token)
    page = url.removesuffix("/v1") + "/metrics"
    try:
        wait_key_live(url, tenant.key.plaintext)
        assert status(page) == 404
        assert status(page, headers={"Authorization": f"Bearer {token}x"}) == 404
        # A tenant's key opens nothing here.
        assert status(page, headers={"Authorization": f"Bearer {tenant.key.plaintext}"}) == 404
        good = {"Authorization": f"Bearer {token}"}
        assert status(page + "?name[]=%00%ff", headers=good) == 200
        assert status(page, data=b"\x00" * 100, method="POST", headers=good) == 405
        assert status(page, method="DELETE", headers=good) == 405
    finally:
        process.stop()


def status(url: str, *, data: bytes | None = None, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 (loopback)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
