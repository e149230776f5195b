"""The arithmetic behind the slow-client controls of `aigw serve` (the e2e proofs are in
tests/e2e/test_slow_clients.py): the body deadline and the connection caps."""

from __future__ import annotations

import resource

from aigw.bodies import BodyDeadline
from aigw.client_address import networks
from aigw.connections import ConnectionCaps, default_max_connections


def test_the_body_deadline_starts_at_the_timeout_and_moves_on_a_second_per_min_rate_bytes() -> None:
    deadline = BodyDeadline(timeout_s=30, min_rate=500, now_s=100.0)
    assert deadline.wait_s(100.0) == 30  # the inactivity timeout bounds each wait
    assert deadline.wait_s(125.0) == 5  # the deadline, 30 s after the head
    deadline.received(5000)  # 10 s more
    assert deadline.wait_s(125.0) == 15
    assert deadline.wait_s(140.0) <= 0
    assert "too slowly" in deadline.message(140.0)
    assert "stalled" in deadline.message(110.0)  # the inactivity timeout ended it, well before the deadline


def test_caps_count_per_peer_and_in_all_and_spare_trusted_proxies() -> None:
    caps = ConnectionCaps(per_peer=2, total=5, trusted=networks(["10.0.0.0/8"]))
    assert caps.admit("192.0.2.1") and caps.admit("192.0.2.1")
    assert not caps.admit("192.0.2.1")
    assert caps.admit("10.1.2.3") and caps.admit("10.1.2.3") and caps.admit("10.1.2.3")  # a proxy: no per-peer cap
    assert not caps.admit("192.0.2.2")  # five open in all
    caps.release("192.0.2.1")
    assert caps.admit("192.0.2.2")
    assert not caps.admit("192.0.2.1")  # one freed, but the total is full again


def test_the_default_total_cap_leaves_room_for_upstream_connections() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    total = default_max_connections()
    assert 2 * total + 100 <= soft or soft == resource.RLIM_INFINITY
