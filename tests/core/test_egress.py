"""The egress policy's address classifier, allow-list and URL checks (no network: loopback names only)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.core.egress import EgressPolicy, EgressRefused, classify, odd_numeric_host, url_origin

DENY_ALL = EgressPolicy()

INWARD = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("fd00::5", "private"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),  # noqa: S104
    ("::", "unspecified"),
    ("100.64.0.1", "shared address space (carrier-grade NAT)"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "private"),  # documentation
    ("::ffff:127.0.0.1", "loopback (an IPv4 address inside IPv6)"),
    ("::ffff:169.254.169.254", "link-local (an IPv4 address inside IPv6)"),
    ("64:ff9b::a00:1", "private (an IPv4 address inside IPv6)"),  # NAT64 of 10.0.0.1
    ("2002:7f00:1::", "loopback (an IPv4 address inside IPv6)"),  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize(("address", "why"), INWARD)
def test_inward_addresses_are_refused_with_their_reason(address: str, why: str) -> None:
    assert classify(ipaddress.ip_address(address)) == why
    with pytest.raises(EgressRefused, match="not allowed by the egress policy"):
        DENY_ALL.check_url(f"http://{address if ':' not in address else f'[{address}]'}/v1")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) == ""
    DENY_ALL.check_url(f"https://{address if ':' not in address else f'[{address}]'}/v1")


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "017700000001"])
def test_odd_spellings_of_addresses_are_refused(host: str) -> None:
    assert odd_numeric_host(host)
    with pytest.raises(EgressRefused, match="dotted-decimal"):
        DENY_ALL.check_url(f"http://{host}/v1")
    # Even an allow-list that admits loopback does not take them: write the address plainly.
    with pytest.raises(EgressRefused, match="dotted-decimal"):
        EgressPolicy(["127.0.0.0/8"]).check_url(f"http://{host}/v1")


def test_names_are_resolved_and_every_address_checked() -> None:
    with pytest.raises(EgressRefused, match="localhost resolves to .*loopback"):
        DENY_ALL.check_url("http://localhost:9100/v1")
    with pytest.raises(EgressRefused, match="cannot resolve"):
        DENY_ALL.check_url("http://no-such-host.invalid/v1")


def test_allow_list_by_name_port_address_and_network() -> None:
    policy = EgressPolicy(["localhost:9100", "10.0.0.0/8", "[::1]:8000", "127.0.0.1:8001", "vllm.internal"])
    policy.check_url("http://localhost:9100/v1")
    policy.check_url("http://10.20.30.40/v1")
    policy.check_url("http://[::1]:8000/v1")
    policy.check_url("http://127.0.0.1:8001/v1")
    policy.check_url("http://vllm.internal:8000/v1")  # a listed name is trusted without resolving it here
    for refused in (
        "http://localhost:9101/v1",
        "http://[::1]:8001/v1",
        "http://127.0.0.1:8002/v1",
        "http://192.168.0.1/v1",
        "http://169.254.169.254/latest/meta-data/",
    ):
        with pytest.raises(EgressRefused):
            policy.check_url(refused)


def test_a_listed_name_does_not_admit_its_address_under_another_name() -> None:
    policy = EgressPolicy(["localhost:9100"])
    policy.check_url("http://localhost:9100/v1")
    with pytest.raises(EgressRefused):
        policy.check_url("http://127.0.0.1:9100/v1")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http:///v1", "file:///etc/passwd", "http://x:port/", "gopher://a"]
)
def test_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(EgressRefused):
        DENY_ALL.check_url(url)


@pytest.mark.parametrize(
    "entry", ["a b", "http://x", "1.2.3.4:x", "[::1]x", "localhost:0", "localhost:70000", "0177.0.0.1"]
)
def test_bad_allow_list_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        EgressPolicy([entry])


def test_secret_origin_includes_scheme_host_and_port() -> None:
    assert url_origin("https://api.openai.com/v1") == ("https", "api.openai.com", 443)
    assert url_origin("http://API.openai.com./v1") == ("http", "api.openai.com", 80)
    assert url_origin("http://h:8000/v1") != url_origin("http://h:8001/v1")


ipv4 = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(min_value=0, max_value=2**128 - 1).map(ipaddress.IPv6Address)


@given(ipv4)
def test_any_ipv4_is_refused_exactly_when_it_is_not_public_unicast(ip: ipaddress.IPv4Address) -> None:
    inward = not ip.is_global or ip.is_multicast or ip in ipaddress.IPv4Network("100.64.0.0/10")
    assert bool(classify(ip)) == inward
    # Written inside IPv6 (mapped), it gets the same answer.
    assert bool(classify(ipaddress.IPv6Address(f"::ffff:{ip}"))) == inward


@given(ipv6)
def test_any_ipv6_that_is_not_public_unicast_is_refused(ip: ipaddress.IPv6Address) -> None:
    if not ip.is_global or ip.is_multicast or ip.is_link_local or ip.is_loopback:
        assert classify(ip)


@given(ipv4)
def test_allow_listed_network_admits_exactly_its_addresses(ip: ipaddress.IPv4Address) -> None:
    policy = EgressPolicy(["10.0.0.0/8"])
    allowed = not policy.refusal(str(ip), ip, 443)
    assert allowed == (ip in ipaddress.IPv4Network("10.0.0.0/8") or not classify(ip))
