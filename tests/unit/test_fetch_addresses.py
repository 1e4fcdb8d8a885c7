"""The address rules of URL fetching (services/embedder/addresses.py): which addresses a fetch may connect to.

Pure functions, no network. The integration test (test_url_ingest.py) proves the fetcher applies them to every
connection it opens; this table proves each class of address is judged right.
"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address, ip_network

import pytest

from services.common.settings import ConfigurationError, Settings, load_settings
from services.embedder.addresses import literal_address, not_public, numeric_ipv4, refusal

NOT_PUBLIC = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("192.0.0.8", "IETF protocol assignment"),
    ("192.0.2.10", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.99", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.88.99.1", "6to4 relay"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard-only"),
    ("2001::1", "Teredo"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("4000::1", "reserved"),
    ("::2:3", "embedding 0.2.0.3, an unspecified"),  # IPv4-compatible, in 0.0.0.0/8
    # IPv6 that reaches an internal IPv4 address: judged by the embedded address
    ("::ffff:127.0.0.1", "embedding 127.0.0.1, a loopback"),
    ("::ffff:10.1.2.3", "embedding 10.1.2.3, a private"),
    ("::ffff:169.254.169.254", "embedding 169.254.169.254, a link-local"),
    ("::127.0.0.1", "embedding 127.0.0.1, a loopback"),
    ("64:ff9b::7f00:1", "embedding 127.0.0.1, a loopback"),
    ("64:ff9b::a9fe:a9fe", "embedding 169.254.169.254, a link-local"),
    ("2002:7f00:1::1", "embedding 127.0.0.1, a loopback"),
    ("2002:c0a8:101::1", "embedding 192.168.1.1, a private"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "172.32.0.1",  # just past 172.16.0.0/12
    "100.128.0.1",  # just past 100.64.0.0/10
    "169.255.0.1",
    "223.255.255.254",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "kind"), NOT_PUBLIC)
def test_each_kind_of_internal_address_is_refused_and_named(address: str, kind: str) -> None:
    reason = refusal(ip_address(address))
    assert reason is not None and kind in reason, reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_may_be_fetched(address: str) -> None:
    assert not_public(ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "meaning"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("3232235777", "192.168.1.1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_numeric_hosts_in_every_form_the_resolver_accepts_mean_their_address(host: str, meaning: str) -> None:
    assert numeric_ipv4(host) == IPv4Address(meaning)
    assert literal_address(host) == IPv4Address(meaning)


@pytest.mark.parametrize(
    "host", ["example.com", "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "08", "0x", "4294967296", "127.0.0.1a", "", "1..1"]
)
def test_names_and_impossible_numbers_are_not_numeric_hosts(host: str) -> None:
    assert numeric_ipv4(host) is None


def test_ipv6_literals_are_read_with_or_without_brackets() -> None:
    assert literal_address("[::1]") == ip_address("::1")
    assert literal_address("::ffff:127.0.0.1") == ip_address("::ffff:7f00:1")
    assert literal_address("localhost") is None


def test_an_allowed_network_admits_exactly_its_addresses() -> None:
    allowed = (ip_network("127.0.0.2/32"), ip_network("fd00:1::/64"))
    assert refusal(ip_address("127.0.0.2"), allowed) is None
    assert refusal(ip_address("fd00:1::5"), allowed) is None
    assert "loopback" in str(refusal(ip_address("127.0.0.1"), allowed))
    assert "unique local" in str(refusal(ip_address("fd00:2::5"), allowed))
    # The same host through an IPv4-mapped address is not inside an IPv4 network: refused as what it reaches.
    assert "loopback" in str(refusal(ip_address("::ffff:127.0.0.2"), allowed))


def test_the_allow_list_setting_reads_comma_separated_cidrs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_FETCH_ALLOW_NETWORKS", " 127.0.0.2/32, 10.1.2.3/24 ,2001:db8::/32,")
    assert Settings().fetch_allow_networks == (
        ip_network("127.0.0.2/32"),
        ip_network("10.1.2.0/24"),
        ip_network("2001:db8::/32"),
    )
    monkeypatch.delenv("MMRAG_FETCH_ALLOW_NETWORKS")
    assert Settings().fetch_allow_networks == ()


def test_a_bad_allow_list_stops_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_FETCH_ALLOW_NETWORKS", "127.0.0.2/32,intranet")
    load_settings.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match=r"MMRAG_FETCH_ALLOW_NETWORKS: .*'intranet' is not a network"):
            load_settings()
    finally:
        load_settings.cache_clear()
