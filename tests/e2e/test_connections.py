"""What a hostile or careless client can do to `aigw serve`'s connections, tried with raw sockets."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.servers import CLIENT_KEY, GATEWAY_ENV, Running, gateway_config, run_aigw, sim_requests, write_yaml

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
SHORT = {"header_timeout_s": 1, "body_timeout_s": 1, "keep_alive_s": 1}
WAIT_S = 15  # generous upper bound for anything that should take about a second


@pytest.fixture(scope="module")
def gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = gateway_config(sim_url, server=SHORT)
    path = write_yaml(tmp_path_factory.mktemp("conn") / "gateway.yaml", config)
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as running:
        yield running


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def _head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: aigw", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a content-length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def _closed_by_server(sock: socket.socket) -> bool:
    """Blocks until the server closes (True) or WAIT_S passes (False)."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_unauthenticated_request_is_refused_before_its_body_is_read(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        # 10 MB announced (under the 16 MiB limit), not a byte of it sent: the answer needs only the head.
        sock.sendall(_head(CHAT, {"content-type": "application/json", "content-length": "10000000"}))
        status, headers, body = _read_response(sock)
        assert status == 401
        assert headers["connection"] == "close"
        assert orjson.loads(body)["error"]["type"] == "authentication_error"
        assert _closed_by_server(sock)


def test_413_closes_the_connection_so_a_client_cannot_keep_streaming_into_it(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        sock.sendall(_head(CHAT, {"api-key": CLIENT_KEY, "content-length": str(500 * 1024 * 1024)}))
        status, headers, _ = _read_response(sock)
        assert status == 413
        assert headers["connection"] == "close"
        sent = 0
        with pytest.raises(OSError):  # reset or broken pipe: the gateway is not draining the upload
            while sent < 256 * 1024 * 1024:
                sock.sendall(b"x" * (1024 * 1024))
                sent += 1024 * 1024
        assert sent < 64 * 1024 * 1024


def test_an_announced_oversized_body_gets_413_and_never_100_continue(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        headers = {"api-key": CLIENT_KEY, "expect": "100-continue", "content-length": str(500 * 1024 * 1024)}
        sock.sendall(_head(CHAT, headers))
        status, headers, body = _read_response(sock)
        assert status == 413  # not "100 Continue" first: the client is not invited to upload what is refused
        assert headers["connection"] == "close" and headers["x-aigw-attempts"] == "0"
        assert orjson.loads(body)["error"]["code"] == "payload_too_large"
        assert _closed_by_server(sock)


def test_a_get_with_a_body_is_answered_from_its_head_and_closed(gateway: Running) -> None:
    # /healthz needs no key: an announced body must not make the gateway wait for (or buffer) it.
    with _connect(gateway.url) as sock:
        sock.sendall(_head("/healthz", {"content-length": "16000000"}, method="GET") + b"x" * 1000)
        status, headers, body = _read_response(sock)
        assert status == 200 and orjson.loads(body) == {"status": "ok"}
        assert headers["connection"] == "close"
        assert _closed_by_server(sock)
    with _connect(gateway.url) as sock:  # a GET without a body keeps its connection
        sock.sendall(_head("/healthz", {}, method="GET"))
        status, headers, _ = _read_response(sock)
        assert status == 200 and headers.get("connection") != "close"


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        assert _closed_by_server(sock)


def test_incomplete_request_head_is_closed_after_the_header_timeout(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nhost: aigw\r\napi-key: ")
        assert _closed_by_server(sock)


def test_body_shorter_than_its_content_length_gets_408(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        sock.sendall(_head(CHAT, {"api-key": CLIENT_KEY, "content-length": "100"}) + b'{"messages": [')
        status, headers, body = _read_response(sock)
        assert status == 408
        assert headers["connection"] == "close" and headers["x-aigw-attempts"] == "0"
        error = orjson.loads(body)["error"]
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
        assert _closed_by_server(sock)


def test_idle_keep_alive_connection_is_closed(gateway: Running) -> None:
    with _connect(gateway.url) as sock:
        sock.sendall(_head("/healthz", {}, method="GET"))
        status, headers, _ = _read_response(sock)
        assert status == 200 and "connection" not in headers  # kept alive...
        assert _closed_by_server(sock)  # ...until keep_alive_s of idleness


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_200_idle_connections_do_not_keep_200_descriptors_open(gateway: Running) -> None:
    pid = gateway.process.pid
    before = _fds(pid)
    sockets = [_connect(gateway.url) for _ in range(200)]
    try:
        _wait_for(lambda: _fds(pid) >= before + 200, "the gateway to accept 200 connections")
        for sock in sockets:
            assert _closed_by_server(sock)
        _wait_for(lambda: _fds(pid) <= before + 5, "the gateway to release the descriptors")
    finally:
        for sock in sockets:
            sock.close()


def test_client_disconnect_cancels_a_non_stream_upstream_call(gateway: Running, sim_url: str) -> None:
    marker = uuid.uuid4().hex
    body = orjson.dumps({"messages": [{"role": "user", "content": "take your time"}]})
    head = {
        "api-key": CLIENT_KEY,
        "content-type": "application/json",
        "content-length": str(len(body)),
        "x-request-id": marker,
        "x-aigw-sim-latency-ms": "60000",  # the backend "generates" for a minute
    }

    def record() -> dict[str, object] | None:
        return next((r for r in sim_requests(sim_url) if r["headers"].get("x-request-id") == marker), None)

    with _connect(gateway.url) as sock:
        sock.sendall(_head(CHAT, head) + body)
        _wait_for(lambda: record() is not None, "the request to reach the backend")
    _wait_for(lambda: (record() or {}).get("outcome") == "client_disconnected", "the upstream call to be cancelled")


def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_ip_counter(sim_url: str, tmp_path: Path) -> None:
    config = gateway_config(
        sim_url, limits={"rules": [{"name": "per-ip", "key": "ip", "tokens_per_minute": 100}]}, stores={}
    )
    config["stores"] = {"health": "memory://", "counters": f"sqlite:///{tmp_path}/counters.db"}
    path = write_yaml(tmp_path / "gateway.yaml", config)
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 80})
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as running:
        statuses = _forwarded_statuses(lambda: _connect(running.url), body)
        # Both requests come from 127.0.0.1: one bucket of 100 tokens, the second (~90 more) is refused.
        assert statuses == [200, 429]


def _forwarded_statuses(connect: Callable[[], socket.socket], body: bytes) -> list[int]:
    """The statuses of two chats, each on its own connection, claiming two different clients in X-Forwarded-For."""
    statuses = []
    for forwarded in ("198.51.100.1", "198.51.100.2"):
        with connect() as sock:
            headers = {
                "api-key": CLIENT_KEY,
                "content-type": "application/json",
                "content-length": str(len(body)),
                "x-forwarded-for": forwarded,
                "x-aigw-sim-completion-tokens": "80",
            }
            sock.sendall(_head(CHAT, headers) + body)
            statuses.append(_read_response(sock)[0])
    return statuses


def test_a_trusted_ipv4_proxy_is_recognised_on_a_dual_stack_socket(sim_url: str, tmp_path: Path) -> None:
    """Under `--host ::` an IPv4 peer is ::ffff:127.0.0.1: the proxy in trusted_proxies was not recognised, and
    every client behind it shared the proxy's `ip` counter."""
    config = gateway_config(
        sim_url,
        limits={"rules": [{"name": "per-ip", "key": "ip", "tokens_per_minute": 100}]},
        server={"trusted_proxies": ["127.0.0.0/8"]},
    )
    config["stores"] = {"health": "memory://", "counters": f"sqlite:///{tmp_path}/counters.db"}
    path = write_yaml(tmp_path / "gateway.yaml", config)
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 80})
    with run_aigw(["serve", "--config", str(path), "--host", "::"], env=GATEWAY_ENV) as running:
        port = int(running.url.rsplit(":", 1)[1])
        # IPv4, to the v6 socket
        statuses = _forwarded_statuses(lambda: socket.create_connection(("127.0.0.1", port), timeout=WAIT_S), body)
        assert statuses == [200, 200]  # two clients behind the proxy: a bucket of 100 tokens each


@pytest.fixture(scope="module")
def patient_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A long header timeout, so a prompt close can only come from the head-size caps."""
    config = gateway_config(sim_url, server={"header_timeout_s": 120})
    path = write_yaml(tmp_path_factory.mktemp("conn-patient") / "gateway.yaml", config)
    with run_aigw(["serve", "--config", str(path)], env=GATEWAY_ENV) as running:
        yield running


def _assert_refused(sock: socket.socket, status: int, code: str) -> None:
    """The gateway's error contract, even for a head refused before any of the gateway saw it."""
    got, headers, body = _read_response(sock)
    assert got == status
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert headers["x-aigw-attempts"] == "0"
    assert len(headers["x-request-id"]) == 32
    # Made by new_id like every other request id: the first 12 hex digits are the millisecond (not uuid4's random).
    assert abs(int(headers["x-request-id"][:12], 16) - time.time() * 1000) < 600_000
    error = orjson.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert _closed_by_server(sock)


def test_an_unfinished_request_head_over_the_cap_gets_431_at_once(patient_gateway: Running) -> None:
    with _connect(patient_gateway.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (80 * 1024))  # no end of head
        _assert_refused(sock, 431, "request_header_fields_too_large")


def test_a_whole_request_head_over_the_cap_gets_431(patient_gateway: Running) -> None:
    with _connect(patient_gateway.url) as sock:
        sock.sendall(_head("/healthz", {f"x-h{i}": "a" * 1000 for i in range(70)}, method="GET"))
        _assert_refused(sock, 431, "request_header_fields_too_large")


def test_a_request_target_over_the_cap_gets_414(patient_gateway: Running) -> None:
    with _connect(patient_gateway.url) as sock:
        sock.sendall(b"GET /healthz?q=" + b"a" * (20 * 1024))  # no end of the request line
        _assert_refused(sock, 414, "uri_too_long")


def test_13000_repeated_header_fields_get_431_at_once(patient_gateway: Running) -> None:
    """The reviewer's attack, without a key: 13,000 `a:` lines fit in the 64 KiB head cap and cost the worker
    40-60 ms each (the adapter joined repeated values one at a time); now the head is refused at field 101."""
    with _connect(patient_gateway.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"a:\r\n" * 13000 + b"\r\n")
        _assert_refused(sock, 431, "request_header_fields_too_large")


def test_a_head_of_99_header_fields_is_served(patient_gateway: Running) -> None:
    with _connect(patient_gateway.url) as sock:
        sock.sendall(_head("/healthz", {f"x-h{i}": "a" for i in range(98)}, method="GET"))  # and host
        status, _, _ = _read_response(sock)
        assert status == 200


@pytest.mark.parametrize(
    "framing",
    [
        "content-length: 5\r\ntransfer-encoding: chunked",  # which one frames the body: a smuggling classic
        "content-length: 5\r\ncontent-length: 6",
        f"content-length: {2**64}",
    ],
    ids=["cl-and-te", "two-content-lengths", "content-length-2-to-the-64"],
)
def test_a_head_the_parser_refuses_gets_an_openai_shaped_400(patient_gateway: Running, framing: str) -> None:
    """uvicorn answered these with a text/plain "Invalid HTTP request received." and none of the gateway's
    headers."""
    with _connect(patient_gateway.url) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\nhello".encode())
        _assert_refused(sock, 400, "invalid_http_request")


@pytest.mark.parametrize(
    "request_line",
    ["GET http://a:99999/ HTTP/1.1", "GET http://[::1/ HTTP/1.1", "GET http://a:b/ HTTP/1.1", "CONNECT x:443 HTTP/1.1"],
    ids=["port-out-of-range", "unclosed-ipv6", "port-not-a-number", "connect"],
)
def test_a_target_the_url_parser_refuses_gets_an_openai_shaped_400(patient_gateway: Running, request_line: str) -> None:
    """The HTTP parser takes these targets but uvicorn's parse_url, run once the head is complete, does not: the
    connection was closed without a byte (the refusal was taken for a malformed body's)."""
    with _connect(patient_gateway.url) as sock:
        sock.sendall(f"{request_line}\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        _assert_refused(sock, 400, "invalid_http_request")


def test_a_head_under_the_caps_is_served(patient_gateway: Running) -> None:
    with _connect(patient_gateway.url) as sock:
        sock.sendall(_head("/healthz?q=" + "a" * 4000, {f"x-h{i}": "a" * 1000 for i in range(30)}, method="GET"))
        status, _, _ = _read_response(sock)
        assert status == 200


def _endless_while_others_are_served(gateway: Running, opening: bytes) -> None:
    """Send ``opening`` then 64 KiB pieces without end on one connection, while another connection asks for
    /healthz: that one is answered, and the endless sender is cut off (its sends fail)."""
    outcome: list[str] = []

    def attack() -> None:
        with _connect(gateway.url) as sock:
            sock.sendall(opening)
            deadline = time.monotonic() + WAIT_S
            try:
                while time.monotonic() < deadline:
                    sock.sendall(b"a" * (1 << 16))
            except OSError:
                outcome.append("cut off")
                return
            outcome.append("still sending")

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        with _connect(gateway.url) as sock:
            sock.sendall(_head("/healthz", {}, method="GET"))
            status, _, _ = _read_response(sock)
            assert status == 200
    finally:
        attacker.join()
    assert outcome == ["cut off"]


def test_an_endless_request_head_is_cut_off_and_others_are_served(patient_gateway: Running) -> None:
    """The reviewer's attack: 64 KiB pieces of one header value, without end. Each piece used to cost more to join
    than the last, on the event loop, until the header timeout."""
    _endless_while_others_are_served(patient_gateway, b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")


# A path that takes a body, so the gateway reads it (a GET with a body is answered from its head and closed).
CHUNKED_CHAT = _head(CHAT, {"api-key": CLIENT_KEY, "content-type": "application/json", "transfer-encoding": "chunked"})


def test_an_endless_trailer_is_cut_off_and_others_are_served(patient_gateway: Running) -> None:
    """The reviewer's attack: a chunked body's trailer value without end, in 64 KiB pieces. The trailers came
    after the head, so neither the head cap nor its deadline applied, and each piece cost more to join than the
    last."""
    _endless_while_others_are_served(patient_gateway, CHUNKED_CHAT + b"0\r\nx-t: ")


def test_a_chunked_body_with_small_trailers_is_served_and_the_connection_reused(patient_gateway: Running) -> None:
    body = b'{"messages": [{"role": "user", "content": "hello"}]}'
    with _connect(patient_gateway.url) as sock:
        sock.sendall(CHUNKED_CHAT + _chunked(body, 16)[: -len(b"0\r\n\r\n")] + b"0\r\nx-t: 1\r\nx-u: 2\r\n\r\n")
        assert _read_response(sock)[0] == 200
        sock.sendall(_head("/healthz", {}, method="GET"))
        assert _read_response(sock)[0] == 200


def _chunked(body: bytes, size: int) -> bytes:
    pieces = (body[i : i + size] for i in range(0, len(body), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def test_a_body_of_one_byte_chunks_is_cut_off(patient_gateway: Running) -> None:
    """The reviewer's attack (with a key, or on any path): 1-byte chunks cost parser callbacks each, on the event
    loop, and a client sending them for seconds slowed every request on the worker."""
    with _connect(patient_gateway.url) as sock:
        with contextlib.suppress(OSError):  # cut off while still sending
            sock.sendall(CHUNKED_CHAT + _chunked(b"a" * 40000, 1))
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed without an answer (it used to read the whole body, then answer)


def test_a_malformed_chunk_gets_an_openai_shaped_400(patient_gateway: Running) -> None:
    with _connect(patient_gateway.url) as sock:
        sock.sendall(CHUNKED_CHAT + b'5\r\n{"a":\r\nzz\r\n')  # "zz" is no chunk size
        _assert_refused(sock, 400, "invalid_http_request")


def test_a_chunked_body_in_small_chunks_arrives_whole(patient_gateway: Running, sim_url: str) -> None:
    marker = uuid.uuid4().hex
    content = "".join(f"word{i} " for i in range(5000))
    body = orjson.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 5})
    # 500 chunks of one byte (within the free allowance), then 64-byte chunks: over 1,000 chunks in all.
    wire = _chunked(body[:500], 1)[: -len(b"0\r\n\r\n")] + _chunked(body[500:], 64)
    head = {"api-key": CLIENT_KEY, "content-type": "application/json", "transfer-encoding": "chunked"}
    with _connect(patient_gateway.url) as sock:
        sock.sendall(_head(CHAT, {**head, "x-request-id": marker}) + wire)
        status, _, _ = _read_response(sock)
        assert status == 200
    record = next(r for r in sim_requests(sim_url) if r["headers"].get("x-request-id") == marker)
    assert not record["body_truncated"]
    forwarded = orjson.loads(base64.b64decode(record["body_base64"]))
    assert forwarded["messages"][0]["content"] == content
