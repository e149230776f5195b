"""`aigw usage`: where its key may go."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from aigw import usage_cli
from aigw.usage_http import plain_http_warning


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def records_args(url: str) -> argparse.Namespace:
    return argparse.Namespace(
        key="admin-secret-key",
        url=url,
        usage_command="records",
        format="json",
        from_day=None,
        to_day=None,
        tenant=None,
        user=None,
        request_id=None,
        limit=None,
    )


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return None


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_the_cli_never_sends_its_key_to_where_a_redirect_points(code: int, capsys: pytest.CaptureFixture[str]) -> None:
    """rev3: urllib followed redirects and copied every header, ``api-key`` included, to the new URL."""
    seen: list[str | None] = []

    class Elsewhere(Quiet):
        def do_GET(self) -> None:
            seen.append(self.headers.get("api-key"))
            body = b'{"object":"list","data":[]}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Elsewhere) as other:
        target = f"http://localhost:{other.split(':')[1]}/collect"

        class Redirector(Quiet):
            def do_GET(self) -> None:
                self.send_response(code)
                self.send_header("location", target)
                self.send_header("content-length", "0")
                self.end_headers()

        with serving(Redirector) as gateway:
            status = usage_cli.run(records_args(f"http://{gateway}"))
    err = capsys.readouterr().err
    assert seen == [], "the CLI followed the redirect"
    assert status == 1
    assert f"{code}, a redirect to {target}: not followed" in err
    assert "admin-secret-key" not in err


def test_a_redirect_location_is_printed_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    class Redirector(Quiet):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("location", "javascript:\x1b]0;owned\x07" + "A" * 1000)
            self.send_header("content-length", "0")
            self.end_headers()

    with serving(Redirector) as gateway:
        assert usage_cli.run(records_args(f"http://{gateway}")) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "not followed" in err
    assert len(err) < 600


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://127.0.0.1:7071", False),
        ("http://127.9.9.9:7071", False),
        ("http://[::1]:7071", False),
        ("http://localhost:7071", False),
        ("http://LOCALHOST", False),
        ("https://gateway.example.com", False),
        ("http://gateway.example.com", True),
        ("HTTP://gateway.example.com:80/x", True),
        ("http://10.0.0.4:7071", True),
        ("http://[2001:db8::1]:7071", True),
        ("http://localhost.example.com", True),
    ],
)
def test_plain_http_to_another_host_is_warned(url: str, warned: bool) -> None:
    warning = plain_http_warning(url)
    assert (warning is not None) == warned
    if warning:
        assert "plain http" in warning and "unencrypted" in warning


def test_no_warning_on_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    class Gateway(Quiet):
        def do_GET(self) -> None:
            body = b'{"object":"list","data":[]}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Gateway) as gateway:
        assert usage_cli.run(records_args(f"http://{gateway}")) == 0
    assert capsys.readouterr().err == ""
