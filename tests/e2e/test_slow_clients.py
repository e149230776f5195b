"""Clients that hold `aigw serve`'s connections by being slow on purpose, tried with raw sockets: a body dripped
just fast enough to beat the inactivity timeout, a stream nobody reads, and more connections than is fair."""

from __future__ import annotations

import contextlib
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.usage.record import UsageRecord
from tests.e2e.test_connections import CHAT, CHUNKED_CHAT, SHORT, WAIT_S, _closed_by_server, _head, _read_response
from tests.servers import (
    CLIENT_KEY,
    GATEWAY_ENV,
    Running,
    eventually,
    gateway_config,
    run_aigw,
    sim_requests,
    stored_usage,
    write_yaml,
)


@pytest.fixture(scope="module")
def gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Body timeout 1 s, and the default minimum body rate (500 bytes/s)."""
    config = gateway_config(sim_url, server=SHORT)
    path = write_yaml(tmp_path_factory.mktemp("slow") / "gateway.yaml", config)
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as running:
        yield running


def _connect(url: str, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    if rcvbuf is not None:  # before connect, so the window offered to the gateway is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))  # Linux routes all of 127/8 to loopback: another peer address on the same host
    sock.connect((host, int(port)))
    return sock


def _drip(sock: socket.socket, piece: bytes, every_s: float) -> tuple[int, dict[str, str], bytes]:
    """Send ``piece`` every ``every_s`` until an answer comes (returned); fails if none came within WAIT_S."""
    give_up = time.monotonic() + WAIT_S
    while time.monotonic() < give_up:
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            return _read_response(sock)
        with contextlib.suppress(OSError):  # closed after its answer: read it on the next turn
            sock.sendall(piece)
    raise AssertionError(f"still no answer after {WAIT_S} s of dripping")


def _assert_408(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 408
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error["code"] == "request_timeout" and "too slowly" in error["message"]


def test_a_body_dripped_faster_than_the_inactivity_timeout_gets_408_by_the_rate_deadline(gateway: Running) -> None:
    """The reviewer's attack: 16 MB announced, one byte at a time, each well within body_timeout_s (1 s here).
    It used to hold the connection for as long as the drip went on; thousands of them exhausted descriptors."""
    with _connect(gateway.url) as sock:
        sock.sendall(_head(CHAT, {"api-key": CLIENT_KEY, "content-length": "16000000"}) + b"{")
        _assert_408(_drip(sock, b" ", 0.3))
        assert _closed_by_server(sock)


def test_a_chunked_body_dripped_in_small_chunks_gets_408(gateway: Running) -> None:
    """64-byte chunks every 0.3 s: about 210 bytes/s, under the 500 bytes/s minimum (and within the chunk-count
    rule, which allows 64-byte chunks)."""
    with _connect(gateway.url) as sock:
        sock.sendall(CHUNKED_CHAT + b"1\r\n{\r\n")
        _assert_408(_drip(sock, b"40\r\n" + b" " * 64 + b"\r\n", 0.3))
        assert _closed_by_server(sock)


def test_a_slow_but_fair_upload_is_served(gateway: Running) -> None:
    """A body taking over twice body_timeout_s to arrive, at about four times the minimum rate, is served: the
    deadline moves on with each byte (a fixed deadline of body_timeout_s would have cut it)."""
    content = "a" * 4900
    body = orjson.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 5})
    head = _head(CHAT, {"api-key": CLIENT_KEY, "content-type": "application/json", "content-length": str(len(body))})
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    with _connect(gateway.url) as sock:
        sock.sendall(head + pieces[0])
        started = time.monotonic()
        for piece in pieces[1:]:
            time.sleep(0.5)  # the client's pace (the input under test), not a wait for the server
            sock.sendall(piece)
        assert time.monotonic() - started > 2 * SHORT["body_timeout_s"]
        status, _, _ = _read_response(sock)
        assert status == 200


HEALTHZ = _head("/healthz", {}, method="GET")


def _served(url: str, source: str) -> socket.socket | None:
    """A new connection from ``source`` that was answered /healthz (kept open), or None if it was refused."""
    sock = _connect(url, source)
    try:
        sock.sendall(HEALTHZ)
        status, _, _ = _read_response(sock)
    except (ConnectionError, OSError):
        sock.close()
        return None
    assert status == 200
    return sock


@pytest.fixture(scope="module")
def capped_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Three connections per peer; 127.0.0.3 is a trusted proxy. Connections stay open unless refused."""
    server = {
        "header_timeout_s": 120,
        "keep_alive_s": 120,
        "max_connections_per_peer": 3,
        "trusted_proxies": ["127.0.0.3"],
    }
    path = write_yaml(tmp_path_factory.mktemp("caps") / "gateway.yaml", gateway_config(sim_url, server=server))
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as running:
        yield running


def test_connections_over_the_per_peer_cap_are_refused_while_other_peers_are_served(capped_gateway: Running) -> None:
    url = capped_gateway.url
    held = [_served(url, "127.0.0.1") for _ in range(3)]
    try:
        assert all(held)
        assert _served(url, "127.0.0.1") is None  # the fourth from that address
        other = _served(url, "127.0.0.2")
        assert other is not None
        other.close()
        proxy = [_served(url, "127.0.0.3") for _ in range(5)]  # a trusted proxy carries many clients
        assert all(proxy)
        for sock in proxy:
            sock.close()  # type: ignore[union-attr]
        first = held.pop()
        assert first is not None
        first.close()
        held.append(eventually(lambda: _served(url, "127.0.0.1")))  # a closed one makes room again
    finally:
        for sock in held:
            if sock is not None:
                sock.close()


def test_connections_over_the_worker_cap_are_refused(sim_url: str, tmp_path: Path) -> None:
    server = {"header_timeout_s": 120, "keep_alive_s": 120, "max_connections": 4}
    path = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url, server=server))
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as running:
        held = [_served(running.url, f"127.0.0.{i}") for i in range(1, 5)]
        try:
            assert all(held)
            assert _served(running.url, "127.0.0.9") is None
        finally:
            for sock in held:
                if sock is not None:
                    sock.close()


def test_a_stream_client_that_stops_reading_is_disconnected_and_its_upstream_released(tmp_path: Path) -> None:
    """The reviewer's attack: a stream of ~25 MB on a socket with a 4 KiB receive buffer, never read. The relay
    blocked in send() for good, holding the client's socket and an upstream connection."""
    # A backend of its own, generating at 20,000 tokens/s: the stream lasts over a minute, so an upstream call
    # that ends sooner was ended by the gateway (the simulator records it as client_disconnected).
    with run_aigw(["simulate", "--tokens-per-s", "20000"]) as sim:
        _never_read_stream(sim.url, tmp_path)


def _never_read_stream(sim_url: str, tmp_path: Path) -> None:
    config = gateway_config(sim_url, server={"write_timeout_s": 1}, usage={"enabled": True, "flush_interval_s": 0.2})
    path = write_yaml(tmp_path / "gateway.yaml", config)
    marker = uuid.uuid4().hex
    body = orjson.dumps({"messages": [{"role": "user", "content": "tell me everything"}], "stream": True})
    head = {
        "api-key": CLIENT_KEY,
        "content-type": "application/json",
        "content-length": str(len(body)),
        "x-aigw-sim-completion-tokens": "200000",
        "x-request-id": marker,
    }

    def upstream() -> dict[str, Any] | None:
        return next((r for r in sim_requests(sim_url) if r["headers"].get("x-request-id") == marker), None)

    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV, cwd=tmp_path) as running:
        with _connect(running.url, rcvbuf=4096) as sock:
            sock.sendall(_head(CHAT, head) + body)
            # Never read: the gateway must give up on this client and close the upstream call.
            record = eventually(lambda: (upstream() or {}).get("outcome") == "client_disconnected" and upstream())
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):  # what was in flight, then the end: the gateway closed it
                    received += len(chunk)
            assert received < 5_000_000  # of ~25 MB
        assert record["outcome"] == "client_disconnected"
        db = f"sqlite:///{tmp_path}/.aigw/usage.db"

        def recorded(request_id: str) -> list[UsageRecord]:
            return [r for r in stored_usage(db)[0] if r.request_id == request_id]

        (usage,) = eventually(lambda: recorded(marker))
        assert usage.error_code == "client_disconnected" and usage.stream and usage.status == 200
        # Once: a later request's record is stored after it, and there is still one for the stream.
        later = uuid.uuid4().hex
        with _connect(running.url) as sock:
            sock.sendall(_head(CHAT, {**head, "x-request-id": later, "x-aigw-sim-completion-tokens": "5"}) + body)
            _read_response(sock)  # (the head of the stream; the record follows when it ends or is closed)
        eventually(lambda: recorded(later))
        assert len(recorded(marker)) == 1
