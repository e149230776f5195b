"""The client address `ip` limit rules count by: the peer, unless a trusted proxy vouches for another."""

from __future__ import annotations

from aigw.client_address import client_address, host_of, networks
from aigw.functions_host import functions_client_ip
from gateway_core.config import ServerSettings

PROXIES = networks(["10.0.0.0/8", "2001:db8::1"])


def test_peer_is_the_client_when_no_proxy_is_trusted() -> None:
    assert client_address("127.0.0.1", "198.51.100.7", ()) == "127.0.0.1"


def test_untrusted_peer_cannot_name_another_address() -> None:
    assert client_address("203.0.113.9", "198.51.100.7", PROXIES) == "203.0.113.9"


def test_trusted_proxy_right_most_untrusted_address_wins() -> None:
    # The client wrote "1.1.1.1, 2.2.2.2"; the proxy chain 10.0.0.2 -> 10.0.0.1 appended 203.0.113.5.
    forwarded = "1.1.1.1, 2.2.2.2, 203.0.113.5, 10.0.0.2"
    assert client_address("10.0.0.1", forwarded, PROXIES) == "203.0.113.5"


def test_trusted_proxy_with_ports_and_ipv6() -> None:
    assert client_address("2001:db8::1", "[2001:db8::99]:4431, 10.1.2.3:80", PROXIES) == "2001:db8::99"
    assert host_of("198.51.100.7:51234") == "198.51.100.7"
    assert host_of("not-an-address") == ""


def test_garbage_from_the_client_is_never_the_answer() -> None:
    assert client_address("10.0.0.1", "evil, <script>", PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "", PROXIES) == "10.0.0.1"


def test_functions_reads_the_front_end_client_ip_header() -> None:
    # On App Service the worker's peer is the front end; it sets client-ip (address:port) and overwrites any
    # value a client sent. X-Forwarded-For is believed only past proxies listed in trusted_proxies.
    headers = {"client-ip": "203.0.113.5:50123", "x-forwarded-for": "198.51.100.1, 203.0.113.5:50123"}
    assert functions_client_ip(headers, "169.254.129.3", ServerSettings()) == "203.0.113.5"
    front_door = ServerSettings(trusted_proxies=("203.0.113.0/24",))
    assert functions_client_ip(headers, "169.254.129.3", front_door) == "198.51.100.1"
    assert functions_client_ip({}, "169.254.129.3", ServerSettings()) == "169.254.129.3"


def test_ipv4_mapped_peers_and_hops_are_read_as_ipv4() -> None:
    # Under `--host ::` every IPv4 peer is ::ffff:a.b.c.d: the IPv4 proxy was not recognised (all its clients
    # shared one `ip` counter), and the same client had two names depending on the socket it reached.
    assert client_address("::ffff:10.0.0.5", "203.0.113.7", PROXIES) == "203.0.113.7"
    assert client_address("::ffff:10.0.0.5", "203.0.113.7, ::ffff:10.0.0.6", PROXIES) == "203.0.113.7"
    assert client_address("::ffff:203.0.113.9", "198.51.100.7", PROXIES) == "203.0.113.9"
    assert client_address("::FFFF:127.0.0.1", "", ()) == "127.0.0.1"
    assert client_address("::1", "", ()) == "::1"
    assert host_of("[::ffff:198.51.100.7]:443") == "198.51.100.7"
