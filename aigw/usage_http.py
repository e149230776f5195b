"""How `aigw usage` calls the gateway: its key goes to the URL it was given and nowhere else.

urllib follows 30x answers and copies every header, ``api-key`` included, to wherever ``Location`` points,
whatever its host or scheme: a proxy that redirects (http to https on another name, a login page, a captured
host) would be handed the key. Redirects are refused instead, naming the ``Location``, so the admin decides.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
from email.message import Message
from http.client import HTTPResponse
from typing import IO
from urllib.parse import urlsplit

_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_MAX_LOCATION = 300  # characters of a Location shown in the error


class RedirectRefused(Exception):
    def __init__(self, code: int, location: str | None) -> None:
        shown = _printable(location) if location else "(no Location)"
        super().__init__(
            f"the gateway answered {code}, a redirect to {shown}: not followed, the key is sent only to --url "
            "(pass that address as --url if you trust it)"
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> None:
        return None  # urllib then raises HTTPError with the 30x, caught in ``get`` below


_OPENER = urllib.request.build_opener(_NoRedirects)


def get(request: urllib.request.Request, timeout_s: float) -> HTTPResponse:
    """Send ``request`` without following redirects: ``RedirectRefused`` for a 30x; otherwise as ``urlopen``."""
    try:
        response: HTTPResponse = _OPENER.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code in _REDIRECTS:
            location = exc.headers.get("location") if exc.headers else None
            exc.close()
            raise RedirectRefused(exc.code, location) from None
        raise
    return response


def plain_http_warning(url: str) -> str | None:
    """A warning when ``url`` is plain http to a host other than this machine (the key crosses the network in
    clear); None otherwise."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return None
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"aigw usage: warning: {_printable(host)} is reached over plain http: the key and the usage data cross "
        "the network unencrypted (use https://)"
    )


def _printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters escaped, cut to a bounded length."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:_MAX_LOCATION])
    return shown + ("..." if len(text) > _MAX_LOCATION else "")
